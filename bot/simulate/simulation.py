"""The simulation itself: the real engine on a fresh in-memory database, driven day by day
by simulated buyers; one row of figures per day."""

from __future__ import annotations

import math
import random
import sys
from datetime import datetime, time, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from tqdm import tqdm

from bot.simulate.entries import Entries
from bot.simulate.scenario import Scenario, ScenarioError
from engine import report, service, sim_reads
from engine.database import Database, migrate
from engine.errors import Refusal
from engine.money import format_fen, format_micro


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
        self.entries = Entries()
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
        holders = sim_reads.point_holders(self.db)
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
        exits = sim_reads.forced_exits(self.db)
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
            "points_sold": format_fen(sold), "forced_exits": exits,
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
