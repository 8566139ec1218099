"""`storefront simulate SCENARIO.yaml`: the real engine, simulated buyers, honest outcomes.

A scenario (examples/*.yaml, documented in docs/reports.md) describes the shop (config,
products) and its buyers (daily orders and their growth, returning vs new buyers, referral
share, points selling). The simulator drives `engine.service` on a fresh in-memory SQLite
database day by day: the day's purchases at random times, then the 00:05 release of the next
morning, then holders selling points. Randomness comes from one seeded generator, so a
scenario gives the same files every run. It writes `daily.csv`, four PNG charts and
`summary.txt` into the output folder.
"""

from __future__ import annotations

import csv
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import yaml
from sqlalchemy import select
from tqdm import tqdm

from engine import report, service
from engine.errors import Refusal
from engine.journal import QUEUE_POOL
from engine.money import format_fen, format_micro
from storage.db import Database
from storage.migrate import migrate
from storage.models import Entry, JournalTxn, Pool, Posting, User

CSV_COLUMNS = (
    "day", "date", "orders", "sales", "new_buyers", "queue_balance", "liability", "coverage",
    "matured_unpaid", "inflow", "paid_by_release", "paid_by_acceleration", "entries",
    "entries_paid", "share_paid", "amount_share_paid", "median_wait_days",
    "median_paid_wait_days", "points_balance", "supply", "price", "points_sold", "forced_exits",
)
CHARTS = ("pool_vs_liability.png", "share_paid.png", "median_wait.png", "points_price.png")


class ScenarioError(ValueError):
    """The scenario file is not usable; the message says which field and why."""


def _rate(value: Any, name: str, *, lo: Fraction = Fraction(0),
          hi: Fraction | None = Fraction(1)) -> Fraction:
    try:
        r = Fraction(str(value))
    except (ValueError, ZeroDivisionError) as exc:
        raise ScenarioError(f"{name}: not a number: {value!r}") from exc
    if r < lo or (hi is not None and r > hi):
        raise ScenarioError(f"{name}: must be between {lo} and {hi}")
    return r


@dataclass
class Scenario:
    name: str
    seed: int
    days: int
    start: date
    config: dict[str, Any]
    products: list[dict[str, Any]]
    orders_per_day: Fraction
    daily_growth: Fraction
    repeat_share: Fraction
    referral_share: Fraction
    sell_share: Fraction
    sell_fraction: Fraction
    deposits: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ScenarioError(f"cannot read {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ScenarioError(f"{path} is not valid YAML: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> Scenario:
        if not isinstance(raw, dict):
            raise ScenarioError("a scenario is a YAML mapping")
        sales = raw.get("sales") or {}
        selling = raw.get("points_selling") or {}
        if not isinstance(sales, dict) or not isinstance(selling, dict):
            raise ScenarioError("sales and points_selling are mappings")
        products = raw.get("products")
        if not isinstance(products, list) or not products:
            raise ScenarioError("products: a non-empty list is required")
        for p in products:
            if not isinstance(p, dict) or "sku" not in p or "price" not in p:
                raise ScenarioError("products: each needs at least sku and price")
            _rate(p.get("weight", 1), f"products.{p['sku']}.weight", hi=None)
        days = raw.get("days", 90)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
            raise ScenarioError("days: a whole number 1-3650")
        try:
            start = date.fromisoformat(str(raw.get("start", "2026-01-01")))
        except ValueError as exc:
            raise ScenarioError("start: a date like 2026-01-01") from exc
        seed = raw.get("seed", 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ScenarioError("seed: a whole number")
        config = raw.get("config") or {}
        deposits = raw.get("deposits") or {}
        if not isinstance(config, dict) or not isinstance(deposits, dict):
            raise ScenarioError("config and deposits are mappings")
        # YAML reads `0.20` as a number; the engine takes exact decimal strings (SPEC §7).
        config = {sec: {k: v if isinstance(v, str) else str(v) for k, v in values.items()}
                  if isinstance(values, dict) else values for sec, values in config.items()}
        return cls(
            name=str(raw.get("name", "scenario")), seed=seed, days=days, start=start,
            config=config, products=products,
            orders_per_day=_rate(sales.get("orders_per_day", 10), "sales.orders_per_day",
                                 hi=Fraction(100_000)),
            daily_growth=_rate(sales.get("daily_growth", 0), "sales.daily_growth",
                               lo=Fraction(-1), hi=Fraction(1)),
            repeat_share=_rate(sales.get("repeat_share", "0.5"), "sales.repeat_share"),
            referral_share=_rate(sales.get("referral_share", "0.5"), "sales.referral_share"),
            sell_share=_rate(selling.get("daily_share", 0), "points_selling.daily_share"),
            sell_fraction=_rate(selling.get("fraction", "0.5"), "points_selling.fraction"),
            deposits={str(k): str(v) for k, v in deposits.items()},
        )


@dataclass
class _Entries:
    """What happened to every entry, learned incrementally from new entry rows and the
    journal's payments out of the queue pool (so each day reads only what is new)."""

    created: list[int] = field(default_factory=list)  # day index of creation, by seq - 1
    amount: list[int] = field(default_factory=list)
    paid: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)  # day index when fully paid, or -1
    last_txn: int = 0
    released: int = 0  # fen paid by static release, so far
    accelerated: int = 0  # fen paid by acceleration, so far

    def update(self, db: Database, day: int) -> tuple[int, int]:
        """Read what is new; returns the fen the queue pool paid since last time by static
        release and by acceleration (paid while settling a referee's order)."""
        def read(s: Any) -> tuple[list[Any], list[Any]]:
            new = s.execute(select(Entry.seq, Entry.amount).where(Entry.seq > len(self.created))
                            .order_by(Entry.seq)).all()
            pays = s.execute(select(JournalTxn.kind, Posting.ref, Posting.amount)
                             .join(JournalTxn, JournalTxn.id == Posting.txn_id)
                             .where(Posting.account == QUEUE_POOL, Posting.amount < 0,
                                    Posting.txn_id > self.last_txn)).all()
            top = s.execute(select(JournalTxn.id).order_by(JournalTxn.id.desc()).limit(1))
            self.last_txn = top.scalar() or 0
            return new, pays

        new, pays = db.read(read)
        for _seq, amount in new:
            self.created.append(day)
            self.amount.append(amount)
            self.paid.append(0)
            self.done.append(-1)
        released = accelerated = 0
        for kind, ref, amount in pays:
            i = int(ref.split(":")[1]) - 1
            self.paid[i] -= amount
            if kind == "release":
                released -= amount
            else:
                accelerated -= amount
            if self.paid[i] == self.amount[i]:
                self.done[i] = day
        self.released += released
        self.accelerated += accelerated
        return released, accelerated

    def figures(self, day: int) -> dict[str, Any]:
        n = len(self.created)
        if n == 0:
            return {"entries": 0, "entries_paid": 0, "share_paid": "", "amount_share_paid": "",
                    "median_wait_days": "", "median_paid_wait_days": ""}
        created, done = np.array(self.created), np.array(self.done)
        finished = done >= 0
        # Waiting entries count with their age so far: a lower bound of their wait.
        waits = np.where(finished, done - created, day - created)
        total, paid = sum(self.amount), sum(self.paid)
        return {"entries": n, "entries_paid": int(finished.sum()),
                "share_paid": f"{finished.sum() / n:.4f}",
                "amount_share_paid": f"{paid / total:.4f}" if total else "",
                "median_wait_days": f"{float(np.median(waits)):.1f}",
                "median_paid_wait_days": (f"{float(np.median(waits[finished])):.1f}"
                                          if finished.any() else "")}


class Simulation:
    def __init__(self, scenario: Scenario) -> None:
        self.sc = scenario
        self.rng = random.Random(scenario.seed)
        self.db = Database("sqlite://")
        migrate(self.db)
        self.tz = ZoneInfo(str((scenario.config.get("store") or {}).get("timezone",
                                                                        "Asia/Shanghai")))
        self.users: list[str] = []
        self.referred = 0
        self.entries = _Entries()
        self.rows: list[dict[str, Any]] = []
        self.first_price: int | None = None

    def at(self, day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
        d = self.sc.start + timedelta(days=day)
        return datetime.combine(d, time(hour, minute, second), tzinfo=self.tz)

    def setup(self) -> None:
        t = self.at(0, 0)
        try:
            if self.sc.config:
                service.configure(self.db, self.sc.config, at=t, actor="simulate")
            for p in self.sc.products:
                service.upsert_product(self.db, sku=p["sku"], price=str(p["price"]),
                                       margin=str(p.get("margin", "0.30")),
                                       lock_days=p.get("lock_days", 15),
                                       scheme=p.get("scheme", "both"), at=t, actor="simulate")
            for pool, amount in self.sc.deposits.items():
                service.deposit(self.db, pool=pool, amount=amount, at=t, actor="simulate")
        except Refusal as refusal:
            raise ScenarioError(f"the engine refused the scenario's setup: {refusal}") from None

    def orders_on(self, day: int) -> int:
        expected = float(self.sc.orders_per_day) * (1 + float(self.sc.daily_growth)) ** day
        whole = math.floor(expected)
        return whole + (1 if self.rng.random() < expected - whole else 0)

    def buyer(self, at: datetime) -> tuple[str, bool]:
        if self.users and self.rng.random() < self.sc.repeat_share:
            return self.rng.choice(self.users), False
        handle = f"u{len(self.users) + 1}"
        referrer = None
        if self.users and self.rng.random() < self.sc.referral_share:
            referrer = self.rng.choice(self.users)
            self.referred += 1
        service.join(self.db, user=handle, referrer=referrer, at=at)
        self.users.append(handle)
        return handle, True

    def day(self, day: int) -> dict[str, Any]:
        skus = [p["sku"] for p in self.sc.products]
        weights = [float(Fraction(str(p.get("weight", 1)))) for p in self.sc.products]
        n = self.orders_on(day)
        times = sorted(self.rng.randrange(9 * 3600, 21 * 3600) for _ in range(n))
        sales, new = 0, 0
        for i, sec in enumerate(times):
            at = self.at(day, sec // 3600, sec // 60 % 60, sec % 60)
            handle, is_new = self.buyer(at)
            new += is_new
            sku = self.rng.choices(skus, weights)[0]
            done = service.buy(self.db, user=handle, sku=sku, at=at, order=f"d{day}n{i}")
            sales += done["cash"]
        release_at = self.at(day + 1, 0, 5)
        service.release(self.db, at=release_at)
        sold = self.sell_points(release_at)
        return self.measure(day, release_at, n, sales, new, sold)

    def sell_points(self, at: datetime) -> int:
        """Each holder sells `fraction` of their points with probability `daily_share`."""
        if self.sc.sell_share == 0:
            return 0
        holders = self.db.read(lambda s: s.execute(
            select(User.handle, User.points).where(User.points > 0).order_by(User.id)).all())
        sold = 0
        for handle, held in holders:
            if self.rng.random() >= self.sc.sell_share:
                continue
            q = int(held * self.sc.sell_fraction)
            if q <= 0:
                continue
            try:
                sold += service.withdraw_points(self.db, user=handle, points=q, at=at)["paid"]
            except Refusal:
                continue  # a forced exit earlier in this loop already took their points
        return sold

    def measure(self, day: int, at: datetime, orders: int, sales: int, new: int,
                sold: int) -> dict[str, Any]:
        released, accelerated = self.entries.update(self.db, day)
        r = report.pool_report(self.db, at, near_exit=0, history_days=1)
        inflow, _out = report.queue_flows(self.db, at - timedelta(days=1), at)
        exits = self.db.read(lambda s: s.execute(
            select(JournalTxn.id).where(JournalTxn.kind == "forced_exit")).all())
        if self.first_price is None:
            self.first_price = r["price_micro"]
        cov = r["coverage"]
        row = {
            "day": day + 1, "date": (self.sc.start + timedelta(days=day)).isoformat(),
            "orders": orders, "sales": format_fen(sales), "new_buyers": new,
            "queue_balance": format_fen(r["queue_balance"]),
            "liability": format_fen(r["liability"]),
            "coverage": "" if cov is None else f"{float(cov):.4f}",
            "matured_unpaid": format_fen(r["matured_unpaid"]),
            "inflow": format_fen(inflow), "paid_by_release": format_fen(released),
            "paid_by_acceleration": format_fen(accelerated),
            **self.entries.figures(day),
            "points_balance": format_fen(r["points_balance"]),
            "supply": format_micro(r["supply"]), "price": format_micro(r["price_micro"]),
            "points_sold": format_fen(sold), "forced_exits": len(exits),
            "_report": r,
        }
        return row

    def run(self, progress: bool = True) -> None:
        self.setup()
        for day in tqdm(range(self.sc.days), desc=self.sc.name, unit="day", file=sys.stderr,
                        disable=not progress, leave=False):
            try:
                self.rows.append(self.day(day))
            except Refusal as refusal:
                raise ScenarioError(f"day {day + 1}: the engine refused an event: "
                                    f"{refusal}") from None


def never_paid(db: Database) -> tuple[int, int, int]:
    """If sales stopped now: walking the waiting entries in `seq` order, the pool pays each
    in full until it cannot (strict FIFO). Returns (entries it could still pay, entries left,
    fen left owed) — what would never be paid without new money."""
    def read(s: Any) -> tuple[int, int, int]:
        balance = s.execute(select(Pool.balance).where(Pool.name == "queue")).scalar_one()
        payable, left, owed = 0, 0, 0
        rows = s.execute(select(Entry.amount - Entry.released).where(Entry.status == "waiting")
                         .order_by(Entry.seq)).scalars()
        for remaining in rows:
            if left == 0 and remaining <= balance:
                balance -= remaining
                payable += 1
            else:
                left += 1
                owed += remaining
        return payable, left, owed

    return db.read(read)


def write_outputs(sim: Simulation, out: Path) -> dict[str, Path]:
    from handlers.charts import line_chart_png

    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "daily.csv", "summary": out / "summary.txt"}
    with paths["csv"].open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        w.writerows(sim.rows)
    xs = [date.fromisoformat(r["date"]) for r in sim.rows]

    def col(name: str, scale: Callable[[str], float | None] = float) -> list[float | None]:
        return [scale(r[name]) if r[name] != "" else None for r in sim.rows]

    title = sim.sc.name
    currency = str((sim.sc.config.get("store") or {}).get("currency", "CNY"))
    charts = {
        "pool_vs_liability.png": line_chart_png(
            f"{title}: queue pool vs liability",
            [("pool balance", xs, col("queue_balance")), ("liability", xs, col("liability"))],
            ylabel=currency, fill_between=True, alone=0),
        "share_paid.png": line_chart_png(
            f"{title}: share of entries fully paid",
            [("entries", xs, col("share_paid")), ("amount", xs, col("amount_share_paid"))],
            percent=True),
        "median_wait.png": line_chart_png(
            f"{title}: median wait (days)",
            [("all entries (waiting ones: age so far)", xs, col("median_wait_days")),
             ("paid entries only", xs, col("median_paid_wait_days"))], ylabel="days"),
        "points_price.png": line_chart_png(
            f"{title}: points price", [("price", xs, col("price"))],
            ylabel=f"{currency} per point"),
    }
    for name, png in charts.items():
        paths[name] = out / name
        paths[name].write_bytes(png)
    paths["summary"].write_text(summary(sim), encoding="utf-8")
    return paths


def summary(sim: Simulation) -> str:
    rows = sim.rows
    last = rows[-1]
    r = last["_report"]
    e = sim.entries
    n, paid_n = len(e.created), sum(1 for d in e.done if d >= 0)
    total_sales = sum(int(x["sales"].replace(".", "")) for x in rows)
    orders = sum(x["orders"] for x in rows)
    payable, left, owed = never_paid(sim.db)
    cov = r["coverage"]
    lines = [
        f"Scenario: {sim.sc.name} (seed {sim.sc.seed}, {len(rows)} days from "
        f"{sim.sc.start.isoformat()}; orders/day {rows[0]['orders']} -> {last['orders']})",
        f"Sales: {orders} orders, {format_fen(total_sales)} in cash; {len(sim.users)} buyers, "
        f"{sim.referred} of them referred",
        f"Queue: {n} entries worth {format_fen(sum(e.amount))}; fully paid {paid_n} "
        f"({_pct(paid_n, n)}), {format_fen(sum(e.paid))} of the amount "
        f"({_pct(sum(e.paid), sum(e.amount))})",
        f"Paid by acceleration to referrers {format_fen(e.accelerated)} "
        f"({_pct(e.accelerated, sum(e.paid))}), by release in queue order "
        f"{format_fen(e.released)} ({_pct(e.released, sum(e.paid))})",
        f"End: queue pool {format_fen(r['queue_balance'])}, still owed "
        f"{format_fen(r['liability'])} to {r['waiting_entries']} waiting entries, coverage "
        f"{'n/a' if cov is None else f'{float(cov) * 100:.1f}%'}; matured but unpaid "
        f"{format_fen(r['matured_unpaid'])}",
        f"Median wait: all entries {last['median_wait_days'] or 'n/a'} days (waiting ones "
        f"counted by age so far, a lower bound); paid entries "
        f"{last['median_paid_wait_days'] or 'n/a'} days",
        f"If sales stopped now: the pool pays {payable} more entries in queue order; "
        f"{left} entries ({format_fen(owed)}) would never be paid.",
        f"Points: price {format_micro(sim.first_price or 0)} -> {last['price']}, supply "
        f"{last['supply']}, forced exits {last['forced_exits']}",
    ]
    return "\n".join(lines) + "\n"


def _pct(part: int, whole: int) -> str:
    return f"{part * 100 / whole:.1f}%" if whole else "n/a"


def simulate(path: str | Path, out: str | Path = ".", *, days: int | None = None,
             progress: bool = True) -> tuple[str, dict[str, Path]]:
    """Run a scenario file and write its outputs; returns (summary text, written paths)."""
    scenario = Scenario.load(path)
    if days is not None:
        if not 1 <= days <= 3650:
            raise ScenarioError("--days: a whole number 1-3650")
        scenario.days = days
    sim = Simulation(scenario)
    try:
        sim.run(progress=progress)
        paths = write_outputs(sim, Path(out))
        return paths["summary"].read_text(encoding="utf-8"), paths
    finally:
        sim.db.dispose()
