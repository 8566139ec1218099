"""Orders (SPEC §3, §4, §8, §9): record a purchase, pay it, receive it, refund it while pending.

What happens when someone buys, top to bottom: `record_paid_order` (paid as it is recorded)
or `open_unpaid_order` then `confirm_payment` (a channel's payment, engine/checkout.py). Both
check the request in SPEC §7's order (`_checked`), record the order with its lines, take
its stock and spend any points at checkout (`_new_order`); the payment is booked, and —
when the return window is zero — `settlement.settle_due` grants the rebates in the same
transaction (docs/engine.md).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, NamedTuple

from storage.rows import OrderLineRow, OrderRow, UserRow

from . import codes, journal, ledger, points
from .accounts import micro_amount
from .book import Book, ProductInfo
from .errors import Refusal
from .lines import (
    check_stock,
    give_back,
    line_terms,
    lines_of,
    requested,
    split_cash,
    take_stock,
    wanted,
)
from .receipt import find, locked, order_result, replayed
from .settlement import settle_due
from .times import local_midnight_after, parse_at

__all__ = ["order_result", "settle_due"]  # with the actions below, the orders' API

ORDER_REF = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_QTY = 10_000
METHODS = ("cash", "wallet", "offline", "telegram", "wechat")


def check_ref(ref: object) -> str | None:
    if ref is None:
        return None
    if not isinstance(ref, str) or not ORDER_REF.fullmatch(ref):
        raise Refusal("invalid_event", "order id is 1-64 of A-Za-z0-9_-")
    return ref


def parse_qty(qty: object) -> int:
    if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
        raise Refusal("invalid_amount", "quantity is a whole number 1-10000")
    return qty


def parse_points_arg(value: object) -> int:
    return 0 if value is None else micro_amount(value)


class _Request(NamedTuple):
    """A purchase request that passed SPEC §7's checks, priced: what both kinds of order
    are recorded from."""

    buyer: UserRow
    items: list[tuple[ProductInfo, int]]  # the lines: product and quantity
    stock: list[tuple[int, str]]  # units taken from stock: (-units, sku)
    points: int  # micro-points spent at checkout
    value: int  # their value in fen at today's price
    total: int
    cash: int  # what is left to pay: total - value
    at: datetime


def _checked(book: Book, *, user: str, asked: list[tuple[object, object]], at: object,
             pay_points: object, ref: str | None, method: str) -> _Request:
    """Refuse a request in SPEC §7's order — by kind: every line's product is known before
    any line's quantity is checked (SPEC §9) — else price it."""
    if ref is not None and find(book, ref, lock=False) is not None:
        raise Refusal("duplicate_order", ref)
    buyer = book.user(user)
    products = []
    for sku, _qty in asked:
        product = book.product(sku)
        if product is None:
            raise Refusal("unknown_product", str(sku))
        products.append(product)
    items = [(product, parse_qty(qty)) for product, (_sku, qty) in zip(products, asked,
                                                                       strict=True)]
    q = parse_points_arg(pay_points)
    when = parse_at(at)
    stock = check_stock(book, wanted([(p.sku, n) for p, n in items]))
    if q > buyer.points:
        raise Refusal("insufficient_points")
    total = sum(product.price * n for product, n in items)
    value = points.price(book).value_of(q) if q else 0
    if value > total:
        raise Refusal("points_exceed_total")
    for product, _n in items:
        if not product.active:
            raise Refusal("product_inactive", product.sku)
    if book.cfg.paused and method != "offline":
        raise Refusal("sales_paused")
    if method not in METHODS:
        raise Refusal("invalid_event", "unknown payment method")
    cash = total - value
    if method == "wallet" and cash > buyer.wallet:
        raise Refusal("insufficient_balance")
    return _Request(buyer, items, stock, q, value, total, cash, when)


def _product_terms(product: ProductInfo) -> dict[str, Any]:
    terms: dict[str, Any] = {"margin": product.margin, "scheme": product.scheme,
                             "lock_days": product.lock_days, "unit_price": product.price}
    if product.limited:
        terms["took_stock"] = True
    return terms


def _new_order(book: Book, req: _Request, ref: str | None, method: str,
               p: journal.Postings) -> OrderRow:
    """The order row and its lines, awaiting payment, on the terms of today (frozen for its
    settlement, SPEC §8); its units are taken from stock, and any points it uses are spent
    now, at checkout, their value to revenue."""
    book.head.last_order_no += 1
    no = book.head.last_order_no
    ref = ref or f"N{no}"
    cfg = book.cfg
    first, first_qty = req.items[0]
    terms = {**_product_terms(first),
             "pool_share": cfg.raw["queue.pool_share"], "accel_rate": cfg.raw["queue.accel_rate"],
             "pool_rate": cfg.raw["points.pool_rate"], "mint_rate": cfg.raw["points.mint_rate"],
             "min_order": cfg.min_order, "settle_days": cfg.settle_days}
    if cfg.settle_from != "payment":
        terms["settle_from"] = cfg.settle_from
    if len(req.items) > 1:
        terms["lines"] = [{"sku": product.sku, **_product_terms(product)}
                          for product, _n in req.items]
    order = book.rows.add(OrderRow(
        no=no, ref=ref, user_id=req.buyer.id, sku=first.sku, qty=first_qty, total=req.total,
        points_used=req.points, points_value=req.value, cash=req.cash, method=method,
        currency=cfg.currency, status="awaiting_payment", created_at=req.at,
        terms=journal.canonical(terms), minted=0, accelerated=0))
    totals = [product.price * n for product, n in req.items]
    for line_no, ((product, n), total, cash) in enumerate(
            zip(req.items, totals, split_cash(req.cash, totals), strict=True), start=1):
        book.rows.add(OrderLineRow(order_no=no, line_no=line_no, sku=product.sku, qty=n,
                                   unit_price=product.price, total=total, cash=cash,
                                   minted=0, accelerated=0))
    take_stock(book, req.stock)
    if req.points:
        burned = points.burn(book, req.buyer, req.points, p, f"order:{ref}")
        assert burned == req.value
        p.fen(ledger.points_pool(book), journal.REVENUE, req.value, f"order:{ref}")
    return order


def _opened(book: Book, *, user: str, sku: object, qty: object, order_lines: object,
            at: object, pay_points: object, ref: object, method: str, key: str | None,
            due_by: datetime | None
            ) -> tuple[OrderRow, _Request, journal.Postings] | dict[str, Any]:
    """The opening both kinds of order share: the request's form checked, its reads made
    in one round trip, a repeated key answered with the first result (a dict), else the
    request checked and the order recorded (with the postings its transaction starts
    from)."""
    asked = requested(sku, qty, order_lines)
    ref = check_ref(ref)
    book.prefetch_purchase(user, key, due_by)
    if (done := replayed(book, key)) is not None:
        return done
    req = _checked(book, user=user, asked=asked, at=at, pay_points=pay_points, ref=ref,
                   method=method)
    p = journal.Postings()
    return _new_order(book, req, ref, method, p), req, p


def record_paid_order(book: Book, *, user: str, sku: object = None, qty: object = 1,
                      lines: object = None, at: object, pay_points: object = None,
                      ref: object = None, method: str = "cash", key: str | None = None,
                      actor: str | None = None) -> dict[str, Any]:
    """A purchase paid as it is recorded: cash the caller took, the buyer's wallet, or
    offline by staff. One `purchase` transaction; rebates are granted at settlement —
    in this very transaction when the return window is zero (`settle_due`). `sku`/`qty`
    or `lines` (`[{"sku", "qty"}]`, SPEC §9), exactly one of the two."""
    try:
        due_by = parse_at(at)
    except Refusal:
        due_by = None  # refused below, in SPEC §7's order
    opened = _opened(book, user=user, sku=sku, qty=qty, order_lines=lines, at=at,
                     pay_points=pay_points, ref=ref, method=method, key=key, due_by=due_by)
    if isinstance(opened, dict):
        return opened
    order, req, p = opened
    _pay(book, order, req.buyer, req.at, p, from_wallet=method == "wallet",
         key=key or f"order:{order.ref}", actor=actor)
    return order_result(book, order)


def open_unpaid_order(book: Book, *, user: str, sku: object = None, qty: object = 1,
                      lines: object = None, at: object, pay_points: object = None,
                      ref: object = None, method: str, key: str | None = None
                      ) -> dict[str, Any]:
    """An order that waits for a channel's payment (`confirm_payment`): its stock is taken
    and any points it uses are spent now, in a `checkout` transaction (SPEC §8, §9)."""
    opened = _opened(book, user=user, sku=sku, qty=qty, order_lines=lines, at=at,
                     pay_points=pay_points, ref=ref, method=method, key=key, due_by=None)
    if isinstance(opened, dict):
        return opened
    order, req, p = opened
    book.record(key=key or f"checkout:{order.ref}", kind="checkout", at=req.at, postings=p,
                body={"order": order.ref, "user": req.buyer.handle, "points": req.points,
                      "value": req.value})
    points.forced_exits(book, req.at, f"order:{order.ref}")
    return order_result(book, order)


def _pay(book: Book, order: OrderRow, buyer: UserRow, at: datetime, p: journal.Postings, *,
         from_wallet: bool, key: str, actor: str | None, payment: str | None = None,
         paused: bool = False) -> None:
    """Every way an order is paid ends here: its return window and lock start now (SPEC §8),
    the cash moves to revenue (from the buyer's wallet, or from the world) in one `purchase`
    transaction with the postings `p` already holds, then whatever is due settles, each
    settlement followed by the forced exit — or, when none was due, the forced exit once."""
    tz = book.cfg.timezone
    terms = json.loads(order.terms)
    order.status = "pending"
    order.paid_at = at
    order.payment_ref = payment
    # SPEC §9: under `settle_from` receipt the window starts when the buyer has the goods
    # (`receive`); until then the order has no settlement time.
    if terms.get("settle_from") != "receipt":
        days = int(terms.get("settle_days", book.cfg.settle_days))
        order.settles_at = local_midnight_after(at, days, tz)
    order.matures_at = local_midnight_after(at, int(terms["lock_days"]), tz)
    items = lines_of(book, order)
    for line, t in zip(items, line_terms(terms), strict=True):
        line.matures_at = local_midnight_after(at, int(t["lock_days"]), tz)
    source = ledger.wallet(buyer) if from_wallet else journal.PAYMENTS_IN
    p.fen(source, journal.REVENUE, order.cash, f"order:{order.ref}")
    body: dict[str, Any] = {"order": order.ref, "user": buyer.handle, "sku": order.sku,
                            "qty": order.qty, "total": order.total, "cash": order.cash,
                            "points": order.points_used, "method": order.method}
    if len(items) > 1:
        body["lines"] = [{"sku": line.sku, "qty": line.qty, "total": line.total,
                          "cash": line.cash} for line in items]
    if payment is not None:
        body["payment"] = payment
    if paused:
        body["paid_while_paused"] = True
    book.record(key=key, kind="purchase", at=at, postings=p, actor=actor, body=body)
    if codes.deliver(book, order, buyer, at):  # digital goods: received as delivered
        receive(book, ref=order.ref, at=at, actor=actor)
    if not settle_due(book, at):
        points.forced_exits(book, at, f"order:{order.ref}")


def confirm_payment(book: Book, *, ref: str, amount: int, currency: str, payment_ref: str,
                    at: object, key: str, actor: str | None = None) -> dict[str, Any]:
    """A channel says an order was paid. Exactly once per payment key; an amount or currency
    that is not the order's is refused (`payment_mismatch`) and nothing is recorded."""
    if (done := replayed(book, key)) is not None:
        return done
    order = locked(book, ref)
    when = parse_at(at)
    if order.status != "awaiting_payment":
        raise Refusal("not_payable", order.status)
    if amount != order.cash or currency != order.currency:
        raise Refusal("payment_mismatch", f"{amount} {currency} for {order.cash} {order.currency}")
    # Sales paused after this order was opened, and the buyer paid anyway (the channel asked
    # before the pause, or the payer's screen was already open): the money is real, so it is
    # recorded as usual, and the journal says it came in while paused (docs/engine.md).
    paused = book.cfg.paused
    _pay(book, order, book.user_by_id(order.user_id), when, journal.Postings(),
         from_wallet=False, key=key, actor=actor, payment=payment_ref, paused=paused)
    result = order_result(book, order)
    return {**result, "paid_while_paused": True} if paused else result


def cancel_unpaid(book: Book, *, ref: str, at: object, actor: str | None = None) -> dict[str, Any]:
    """An order whose payment never came: the points it spent come back as their value, its
    units to stock."""
    order = locked(book, ref)
    when = parse_at(at)
    if order.status != "awaiting_payment":
        raise Refusal("not_refundable", order.status)
    buyer = book.user_by_id(order.user_id)
    order.status = "cancelled"
    give_back(book, order, json.loads(order.terms))
    p = journal.Postings()
    p.fen(journal.REVENUE, ledger.wallet(buyer), order.points_value, f"order:{ref}")
    book.record(key=f"cancel:{ref}", kind="cancel", at=when, postings=p, actor=actor,
                body={"order": ref, "returned": order.points_value})
    return order_result(book, order)


def cancel_open(book: Book, *, ref: object, user: str, at: object) -> dict[str, Any]:
    """The buyer gives up their own order awaiting payment (it is being replaced):
    `cancel_unpaid`, after checking it is theirs (`unknown_order`) and still open
    (`not_payable`)."""
    buyer = book.user(user)
    order = find(book, ref)
    if order is None or order.user_id != buyer.id:
        raise Refusal("unknown_order", str(ref))
    if order.status != "awaiting_payment":
        raise Refusal("not_payable", order.status)
    return cancel_unpaid(book, ref=order.ref, at=at)


def refund(book: Book, *, ref: object, at: object, actor: str | None = None) -> dict[str, Any]:
    """SPEC §8: only a pending order before its settlement time (SPEC §9: one settling from
    its receipt, not received yet, has none: always). The cash goes back through its channel
    (outside the engine); the value of the points it spent comes back to the buyer's wallet,
    its units to stock; no rebate is ever granted for it."""
    order = locked(book, ref)
    when = parse_at(at)
    if order.status != "pending" or (order.settles_at is not None
                                     and not when < order.settles_at):
        raise Refusal("not_refundable", order.status)
    buyer = book.user_by_id(order.user_id)
    order.status = "refunded"
    give_back(book, order, json.loads(order.terms))
    codes.refunded(book, order)  # codes given stay given (docs/digital.md)
    p = journal.Postings()
    r = f"order:{order.ref}"
    back = ledger.wallet(buyer) if order.method == "wallet" else journal.REFUNDS_OUT
    p.fen(journal.REVENUE, back, order.cash, r)
    p.fen(journal.REVENUE, ledger.wallet(buyer), order.points_value, r)
    key = f"refund:{order.ref}"
    book.record(key=key, kind="refund", at=when, postings=p, actor=actor,
                body={"order": order.ref, "cash": order.cash, "points_value": order.points_value,
                      "method": order.method})
    book.notify(buyer, "order_refunded", key, when, order=order.ref, cash=order.cash,
                points_value=order.points_value, method=order.method)
    return order_result(book, order)


def pay_from_wallet(book: Book, *, ref: object, user: str, at: object, key: str,
                    actor: str | None = None) -> dict[str, Any]:
    """Pay an order awaiting payment (a checkout its buyer opened) from the buyer's wallet:
    the same journal rules as a wallet purchase (`record_paid_order`, `method="wallet"`) — the cash
    moves wallet → revenue in one `purchase` transaction, the order becomes a wallet order
    (so a refund returns its cash to the wallet) and settles as any paid order (SPEC §8).

    Refused: `unknown_order` for an order that is not this user's (someone else's order is
    not theirs to learn about), `not_payable` once it no longer awaits payment,
    `sales_paused` (unlike a channel's charge, the wallet's money has not moved yet: the shop
    can still say no), `insufficient_balance`. Exactly once per `key`: a repeat answers the
    same result."""
    buyer = book.user(user)
    order = find(book, ref)
    if order is None or order.user_id != buyer.id:
        raise Refusal("unknown_order", str(ref))
    if (done := replayed(book, key)) is not None:
        return done
    when = parse_at(at)
    if order.status != "awaiting_payment":
        raise Refusal("not_payable", order.status)
    if book.cfg.paused:
        raise Refusal("sales_paused")
    if order.cash > buyer.wallet:
        raise Refusal("insufficient_balance")
    order.method = "wallet"
    _pay(book, order, buyer, when, journal.Postings(), from_wallet=True, key=key, actor=actor)
    return order_result(book, order)


def receive(book: Book, *, ref: object, at: object, actor: str | None = None) -> dict[str, Any]:
    """SPEC §9: the buyer has a pending order's goods (they said so, or the shop decided it
    after days without a complaint). Refused `not_receivable` if it is not pending, was
    received already, or `at` is before its payment. An order settling from its receipt
    gets its settlement time now (receipt date plus the `settle_days` frozen when it was
    recorded); then, like a purchase, every order due by `at` settles."""
    order = locked(book, ref)
    when = parse_at(at)
    if order.status != "pending" or order.received_at is not None or order.paid_at is None \
            or when < order.paid_at:
        raise Refusal("not_receivable", order.status)
    order.received_at = when
    terms = json.loads(order.terms)
    if terms.get("settle_from") == "receipt":
        days = int(terms.get("settle_days", book.cfg.settle_days))
        order.settles_at = local_midnight_after(when, days, book.cfg.timezone)
    book.record(key=f"receive:{order.ref}", kind="receive", at=when, actor=actor,
                body={"order": order.ref,
                      "settles_at": order.settles_at.isoformat() if order.settles_at else None})
    settle_due(book, when)
    return order_result(book, order)
