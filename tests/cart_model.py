"""An independent model of the rules a cart scenario exercises (SPEC §3, §4, §8, §9), written
from the specification alone: plain integers and fractions, no engine code, no database.

It covers what `tests/test_cart_model.py` generates: `config` (`settle_days`, `settle_from`,
`min_order`), `product` (with `stock`), `join`, `deposit`, `buy` (one-line shorthand or
`lines`, `pay_points`, `order`), `settle`, `release`, `refund`, `receive`. Forced exit is off
(`exit_multiple` 0) in those scenarios, so it is not modelled. Every store time is
Asia/Shanghai (UTC+8 all year).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from fractions import Fraction
from typing import Any

TZ = timezone(timedelta(hours=8))
MICRO = 10**6
REF = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DECIMAL = re.compile(r"^([0-9]+)(?:\.([0-9]+))?$")


class Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def units(text: object, places: int, code: str = "invalid_amount") -> int:
    """A plain positive decimal string with at most `places` places, in 10^-places units."""
    m = DECIMAL.fullmatch(text) if isinstance(text, str) else None
    if m is None or len(m.group(2) or "") > places:
        raise Refused(code)
    value = int(m.group(1)) * 10**places + int((m.group(2) or "").ljust(places, "0") or 0)
    if value <= 0:
        raise Refused(code)
    return value


def ceil(f: Fraction) -> int:
    return -((-f.numerator) // f.denominator)


def floor(f: Fraction) -> int:
    return f.numerator // f.denominator


def midnight_after(at: datetime, days: int) -> datetime:
    day: date = at.astimezone(TZ).date() + timedelta(days=days)
    return datetime.combine(day, time(0), tzinfo=TZ)


def fen_text(n: int) -> str:
    return f"{n // 100}.{n % 100:02d}"


def micro_text(n: int) -> str:
    return f"{n // MICRO}.{n % MICRO:06d}"


@dataclass
class Product:
    price: int
    margin: Fraction
    lock: int
    scheme: str
    stock: int | None


@dataclass
class User:
    referrer: str | None
    wallet: int = 0
    points: int = 0
    basis: int = 0


@dataclass
class Entry:
    seq: int
    user: str
    amount: int
    matures: datetime
    released: int = 0

    @property
    def waiting(self) -> bool:
        return self.released < self.amount


@dataclass
class Line:
    sku: str
    qty: int
    cash: int
    margin: Fraction
    scheme: str
    matures: datetime
    took: bool


@dataclass
class Order:
    no: int
    ref: str
    user: str
    lines: list[Line]
    value: int  # the points' value
    paid: datetime
    settle_days: int
    receipt: bool
    rates: dict[str, Fraction]
    min_order: int
    settles: datetime | None
    status: str = "pending"
    received: bool = False


@dataclass
class Model:
    settle_days: int = 0
    settle_from: str = "payment"
    min_order: int = 10000
    rates: dict[str, Fraction] = field(default_factory=lambda: {
        "pool_share": Fraction(1, 5), "accel_rate": Fraction(1, 5),
        "pool_rate": Fraction(3, 10), "mint_rate": Fraction(7, 10)})
    queue_pool: int = 0
    points_pool: int = 0
    supply: int = 0
    zero_price: Fraction | None = None
    products: dict[str, Product] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    # -- the price (SPEC §4): fen per micro-point ------------------------------------------
    def price(self) -> Fraction:
        if self.supply > 0:
            return Fraction(self.points_pool, self.supply)
        return self.zero_price if self.zero_price is not None else Fraction(100, MICRO)

    # -- events ---------------------------------------------------------------------------
    def apply(self, line_no: int, ev: dict[str, Any]) -> None:
        try:
            getattr(self, "_" + ev["op"])(ev)
        except Refused as refusal:
            self.errors.append({"line": line_no, "code": refusal.code})

    def _config(self, ev: dict[str, Any]) -> None:
        store, queue = ev.get("store", {}), ev.get("queue", {})
        if "settle_from" in store and store["settle_from"] not in ("payment", "receipt"):
            raise Refused("invalid_config")
        if "settle_days" in store:
            self.settle_days = int(store["settle_days"])
        self.settle_from = store.get("settle_from", self.settle_from)
        if "min_order" in queue:
            self.min_order = units(queue["min_order"], 2)

    def _product(self, ev: dict[str, Any]) -> None:
        stock = ev.get("stock")
        if stock is not None and (isinstance(stock, bool) or not isinstance(stock, int)
                                  or not 0 <= stock <= 10**9):
            raise Refused("invalid_event")
        old = self.products.get(ev["sku"])
        if "stock" not in ev and old is not None:
            stock = old.stock
        self.products[ev["sku"]] = Product(units(ev["price"], 2), Fraction(ev["margin"]),
                                           ev["lock_days"], ev["scheme"], stock)

    def _join(self, ev: dict[str, Any]) -> None:
        self.users[ev["user"]] = User(ev.get("referrer"))

    def _deposit(self, ev: dict[str, Any]) -> None:
        amount = units(ev["amount"], 2)
        if ev["pool"] == "queue":
            self.queue_pool += amount
        elif self.supply == 0:
            raise Refused("no_points_holders")
        else:
            self.points_pool += amount

    def _asked(self, ev: dict[str, Any]) -> list[tuple[Any, Any]]:
        if "sku" in ev and "lines" in ev:
            raise Refused("invalid_event")
        if "lines" not in ev:
            return [(ev["sku"], ev.get("qty", 1))]
        lines = ev["lines"]
        if not isinstance(lines, list) or not 1 <= len(lines) <= 50 or any(
                not isinstance(x, dict) or "sku" not in x for x in lines):
            raise Refused("invalid_event")
        return [(x["sku"], x.get("qty", 1)) for x in lines]

    def _buy(self, ev: dict[str, Any]) -> None:
        asked = self._asked(ev)
        ref = ev.get("order")
        if ref is not None and not (isinstance(ref, str) and REF.fullmatch(ref)):
            raise Refused("invalid_event")
        if ref is not None and any(o.ref == ref for o in self.orders):
            raise Refused("duplicate_order")
        buyer = self.users.get(ev["user"])
        if buyer is None:
            raise Refused("unknown_user")
        if any(sku not in self.products for sku, _ in asked):
            raise Refused("unknown_product")
        if any(isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 10000
               for _, q in asked):
            raise Refused("invalid_amount")
        q = units(ev["pay_points"], 6) if "pay_points" in ev else 0
        at = datetime.fromisoformat(ev["at"])
        want: dict[str, int] = {}
        for sku, n in asked:
            want[sku] = want.get(sku, 0) + n
        for sku, n in want.items():
            stock = self.products[sku].stock
            if stock is not None and n > stock:
                raise Refused("out_of_stock")
        if q > buyer.points:
            raise Refused("insufficient_points")
        total = sum(self.products[sku].price * n for sku, n in asked)
        value = floor(q * self.price())
        if value > total:
            raise Refused("points_exceed_total")
        for sku, n in want.items():
            if self.products[sku].stock is not None:
                self.products[sku].stock -= n  # type: ignore[operator]
        if q:
            before = self.price()
            buyer.basis -= buyer.basis if q == buyer.points else floor(
                Fraction(buyer.basis * q, buyer.points))
            buyer.points -= q
            self.supply -= q
            self.points_pool -= value
            if self.supply == 0:
                self.zero_price = before
        cash = total - value
        totals = [self.products[sku].price * n for sku, n in asked]
        shares = [cash * t // total for t in totals[:-1]]
        shares.append(cash - sum(shares))
        no = len(self.orders) + 1
        lines = [Line(sku, n, share, self.products[sku].margin, self.products[sku].scheme,
                      midnight_after(at, self.products[sku].lock),
                      self.products[sku].stock is not None)
                 for (sku, n), share in zip(asked, shares, strict=True)]
        receipt = self.settle_from == "receipt"
        self.orders.append(Order(
            no, ref or f"N{no}", ev["user"], lines, value, at, self.settle_days, receipt,
            dict(self.rates), self.min_order,
            None if receipt else midnight_after(at, self.settle_days)))
        self._settle_due(at)

    def _settle(self, ev: dict[str, Any]) -> None:
        self._settle_due(datetime.fromisoformat(ev["at"]))

    def _release(self, ev: dict[str, Any]) -> None:
        at = datetime.fromisoformat(ev["at"])
        self._settle_due(at)
        for e in self.entries:
            if not e.waiting or e.matures > at:
                continue
            lacking = e.amount - e.released
            if lacking > self.queue_pool:
                return
            self.queue_pool -= lacking
            self.users[e.user].wallet += lacking
            e.released = e.amount

    def _order(self, ref: Any) -> Order:
        for o in self.orders:
            if o.ref == ref:
                return o
        raise Refused("unknown_order")

    def _refund(self, ev: dict[str, Any]) -> None:
        order = self._order(ev["order"])
        at = datetime.fromisoformat(ev["at"])
        if order.status != "pending" or (order.settles is not None and at >= order.settles):
            raise Refused("not_refundable")
        order.status = "refunded"
        self.users[order.user].wallet += order.value
        for line in order.lines:
            product = self.products[line.sku]
            if line.took and product.stock is not None:
                product.stock += line.qty

    def _receive(self, ev: dict[str, Any]) -> None:
        order = self._order(ev["order"])
        at = datetime.fromisoformat(ev["at"])
        if order.status != "pending" or order.received or at < order.paid:
            raise Refused("not_receivable")
        order.received = True
        if order.receipt:
            order.settles = midnight_after(at, order.settle_days)
        self._settle_due(at)

    # -- settlement (SPEC §8, §9) -----------------------------------------------------------
    def _settle_due(self, at: datetime) -> None:
        for order in self.orders:
            if order.status == "pending" and order.settles is not None and order.settles <= at:
                self._grant(order)

    def _grant(self, order: Order) -> None:
        buyer = self.users[order.user]
        queue_cash = sum(x.cash for x in order.lines if x.scheme in ("queue", "both"))
        for line in order.lines:
            if line.scheme in ("queue", "both"):
                self.queue_pool += ceil(line.cash * line.margin * order.rates["pool_share"])
                if queue_cash >= order.min_order and line.cash > 0:
                    self.entries.append(Entry(len(self.entries) + 1, order.user, line.cash,
                                              line.matures))
                    if buyer.referrer is not None:
                        self._accelerate(buyer.referrer,
                                         floor(line.cash * order.rates["accel_rate"]))
            if line.scheme in ("points", "both") and line.cash > 0:
                c = ceil(line.cash * order.rates["pool_rate"])
                v = floor(c * order.rates["mint_rate"])
                minted = floor(v / self.price())
                self.points_pool += c
                self.supply += minted
                buyer.points += minted
                buyer.basis += line.cash
        order.status = "settled"

    def _accelerate(self, referrer: str, due: int) -> None:
        budget = min(due, self.queue_pool)
        for e in self.entries:
            if budget <= 0:
                return
            if e.user != referrer or not e.waiting:
                continue
            pay = min(budget, e.amount - e.released)
            e.released += pay
            self.queue_pool -= pay
            self.users[referrer].wallet += pay
            budget -= pay

    # -- SPEC §7's output -------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        price = self.price()
        return {
            "pools": {"queue": fen_text(self.queue_pool), "points": fen_text(self.points_pool)},
            "points": {"supply": micro_text(self.supply),
                       "price": micro_text(floor(price * MICRO * 10_000))},
            "users": {h: {"wallet": fen_text(u.wallet), "points": micro_text(u.points),
                          "basis": fen_text(u.basis), "referrer": u.referrer}
                      for h, u in sorted(self.users.items())},
            "entries": [{"seq": e.seq, "user": e.user, "amount": fen_text(e.amount),
                         "released": fen_text(e.released),
                         "status": "waiting" if e.waiting else "released",
                         "matures_at": e.matures.isoformat()} for e in self.entries],
            "errors": self.errors,
        }

    def stock(self) -> dict[str, int | None]:
        return {sku: p.stock for sku, p in sorted(self.products.items())}
