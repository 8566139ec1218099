"""Does a purchase get slower as the shop grows? Latency at a large size against a small one.

- 1M queue entries against 10k (the acceleration walks the referrer's waiting entries, the
  settlement adds an entry; both must use indexes, never scan the queue);
- 100k points holders against 100 (forced exit must seek the exit-price index, SPEC §4).

Both shops are prepared with bulk inserts (benchmarks/fixtures.py); the purchases are the
usual mix through `engine.service.buy` on the SQLite file, timed one by one. Each run is the
median latency of its purchases; runs alternate between the two sizes.
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import timedelta
from typing import Any

from storage.db import Database

from .common import Context, Row, paired
from .fixtures import Built, Plan, build_history, holder_shop
from .workload import Purchases, buy

ENTRIES_PER_USER = 10


def big_shop(ctx: Context) -> Built:
    """The shop with 1M queue entries (20k in --quick), built once per run and shared with
    the verify and release rows."""
    if "big" not in ctx.cache:
        entries = 20_000 if ctx.quick else 1_000_000
        ctx.cache["big"] = build_history(ctx.scratch("big") / "shop.db",
                                         Plan(users=entries // ENTRIES_PER_USER,
                                              entries=entries, seed=1))
    built: Built = ctx.cache["big"]
    return built


class _Timed:
    """Purchases on one shop, timed one at a time."""

    def __init__(self, built: Built, buyers: list[str], seed: int) -> None:
        self.built = built
        self.db = Database(f"sqlite:///{built.path}")
        self.stream = iter(Purchases(buyers, built.end + timedelta(minutes=1),
                                     uuid.uuid4().hex[:8], holders=frozenset(built.holders),
                                     seed=seed))
        self.refused = 0
        self.samples: list[float] = []
        for _ in range(5):  # warm: connection, statement caches, the first pages read
            buy(self.db, next(self.stream))

    def median_ms(self, n: int) -> float:
        times = []
        for _ in range(n):
            kwargs = next(self.stream)
            start = time.perf_counter()
            ok = buy(self.db, kwargs)
            elapsed = time.perf_counter() - start
            if ok:
                times.append(elapsed)
            else:
                self.refused += 1
        self.samples += times
        return 1000 * statistics.median(times)

    def facts(self) -> dict[str, Any]:
        s = sorted(self.samples)
        return {"purchases": len(s), "refused": self.refused,
                "p90_ms": round(1000 * s[int(0.9 * (len(s) - 1))], 2) if s else None}

    def close(self) -> None:
        self.db.dispose()


def _compare(ctx: Context, row: Row, small: Built, large: Built,
             buyers: tuple[list[str], list[str]]) -> Row:
    a, b = _Timed(small, buyers[0], 1), _Timed(large, buyers[1], 1)
    n = 15 if ctx.quick else 60
    try:
        row.measured, row.baseline, row.ratios = paired(
            ctx.runs(5), lambda: b.median_ms(n), lambda: a.median_ms(n),
            ratio=lambda large_ms, small_ms: large_ms / small_ms)
    finally:
        a.close()
        b.close()
    row.facts.update({"small": {**_size(small), **a.facts()},
                      "large": {**_size(large), **b.facts()}, "purchases_per_run": n})
    return row


def _size(built: Built) -> dict[str, Any]:
    return {"entries": built.entries, "waiting": built.waiting, "holders": len(built.holders),
            "users": built.users, "journal_txns": built.txns,
            "prepared_in_s": round(built.seconds, 1)}


def queue_size(ctx: Context) -> Row:
    row = Row("latency-queue", "purchase latency at 1M queue entries vs at 10k", "ms",
              ("ratio<=", 1.5), baseline_what="the same purchases at 10k entries")
    if ctx.quick:
        row.title = "purchase latency at 20k queue entries vs at 2k (--quick)"
    large = big_shop(ctx)
    n_small = 2_000 if ctx.quick else 10_000
    small = build_history(ctx.scratch("queue-small") / "shop.db",
                          Plan(users=n_small // ENTRIES_PER_USER, entries=n_small, seed=1))
    return _compare(ctx, row, small, large, (small.handles, large.handles))


def holders(ctx: Context) -> Row:
    row = Row("latency-holders", "purchase latency with 100k points holders vs 100 "
              "(forced exit index)", "ms", ("ratio<=", 1.5),
              baseline_what="the same purchases with 100 holders")
    n = 2_000 if ctx.quick else 100_000
    if ctx.quick:
        row.title = "purchase latency with 2k points holders vs 100 (--quick)"
    small = holder_shop(ctx.scratch("holders-small") / "shop.db", 100)
    large = holder_shop(ctx.scratch("holders-large") / "shop.db", n)
    return _compare(ctx, row, small, large, (small.holders, large.holders))


ROWS = {"latency-queue": queue_size, "latency-holders": holders}
