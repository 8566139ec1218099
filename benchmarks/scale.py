"""Issue 19's new purchase rows: 64 concurrent clients on PostgreSQL, and carts of 3 lines.

- `purchase-pg-64`: 64 client threads of one storefront process buying through its group
  commit (engine/batch.py, up to 64 purchases to a commit), against bare one-row commits/s
  on one connection, interleaved in the same run. Target: ratio ≥ 1.0. Its ceiling is the
  same purchases' writes merged 64 to a commit and replayed with no engine.
- `purchase-pg-cart3`: purchases of carts of 3 lines (`service.buy(lines=[{"sku", "qty"}…])`,
  SPEC §9) per second against one-line purchases per second, one connection each on
  PostgreSQL, interleaved. Target: ratio ≥ 0.6. Its ceiling is the carts' writes alone over
  the one-line purchases' writes alone (each replayed with no engine).

And the one-connection and 8-client rows of benchmarks/purchases.py judged as issue 19 says:
ratio ≥ 0.7 × the same run's ceiling (`against_ceiling`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from storage.db import Database
from storage.migrate import migrate

from . import purchases
from .bare import pg_schema
from .common import Context, Row, Stats, count, interleaved
from .floor import Ceiling, PGFloor, Writes
from .purchases import SHOP_USERS, SLICES, _skipped, grouped_row
from .workload import PRODUCTS, T0, Purchases, buy, setup_shop

MANY = 64
CART = 3


def pg_many(ctx: Context) -> Row:
    floors = {"schema": (False, MANY), "as grouped": (False, None)}
    return grouped_row(ctx, "purchase-pg-64", 1.0, clients=MANY, users=SHOP_USERS * 4,
                       floors=floors, prefix="m", seed=400, most=MANY)


@dataclass
class Carts(Purchases):
    """`Purchases`, each a cart of `CART` lines (every product once, 1 or 2 of each)."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for kwargs in super().__iter__():
            qty = kwargs.pop("qty")
            kwargs.pop("sku")
            kwargs["lines"] = [{"sku": p.sku, "qty": qty} for p in PRODUCTS[:CART]]
            yield kwargs


def pg_cart(ctx: Context) -> Row:
    row = Row("purchase-pg-cart3", f"purchases/s of carts of {CART} lines vs one-line "
              "purchases, one connection, PostgreSQL", "carts/s", ("ratio>=", 0.6),
              baseline_what="one-line purchases/s (service.buy sku/qty), same shop layout, "
              "one connection, interleaved")
    if ctx.pg_problem:
        return _skipped(row, ctx.pg_problem)
    runs, seconds = ctx.runs(), ctx.seconds(2.0)
    with ExitStack() as stack:
        shops: dict[str, tuple[Database, Ceiling, Iterator[dict[str, Any]]]] = {}
        tally = {"carts": 0, "single": 0, "refused": 0}
        for name, stream_of in (("carts", Carts), ("single", Purchases)):
            url = stack.enter_context(pg_schema())
            db = Database(url)
            migrate(db)
            handles = setup_shop(db, SHOP_USERS)
            copy = stack.enter_context(pg_schema())
            cdb = Database(copy)
            migrate(cdb)
            setup_shop(cdb, SHOP_USERS)
            cdb.dispose()
            ceiling = Ceiling(Writes(db), {"schema": (PGFloor(copy), None)})
            stack.callback(db.dispose)
            stack.callback(ceiling.close)
            shops[name] = (db, ceiling, iter(stream_of(handles, T0 + timedelta(days=1),
                                                       uuid.uuid4().hex[:8])))

        def side(name: str) -> Any:
            db, ceiling, stream = shops[name]

            def step() -> None:
                ok = buy(db, next(stream))
                tally[name if ok else "refused"] += 1

            return ceiling.follow(lambda s: count(step, seconds=s, at_least=3))

        row.measured, row.baseline, row.ratios = interleaved(
            runs, SLICES, seconds, side("carts"), side("single"))
        ones = Stats([1.0] * runs)
        cart_floor = shops["carts"][1].ratios(ones)["schema"]
        single_floor = shops["single"][1].ratios(ones)["schema"]
        row.ceiling = Stats([c / s for c, s in zip(cart_floor.runs, single_floor.runs,
                                                      strict=True)])
        row.ceiling_what = ("the carts' writes replayed with no engine over the one-line "
                            "purchases' writes replayed with no engine (benchmarks/floor.py)")
        row.facts.update({"lines_per_cart": CART, "users": SHOP_USERS,
                          "seconds_per_run_each": seconds, "slices": SLICES,
                          "carts_writes_alone_per_s": cart_floor.as_dict(),
                          "single_writes_alone_per_s": single_floor.as_dict(),
                          "statements_per_cart": shops["carts"][1].facts()[
                              "statements_per_commit"],
                          "statements_per_single": shops["single"][1].facts()[
                              "statements_per_commit"], **tally})
    return row


# -- issue 19's targets for the existing purchase rows: 0.7 × the same run's ceiling ----------

CEILING_SHARE = 0.7


def against_ceiling(measure: Callable[[Context], Row]) -> Callable[[Context], Row]:
    """The row as `measure` makes it, its target replaced by ratio ≥ 0.7 × its own ceiling
    (the same run's writes-alone figure): the old 0.5 and 2 against one-row commits were
    above what the writes allow."""
    def row(ctx: Context) -> Row:
        r = measure(ctx)
        if r.ceiling is not None:
            r.target = ("ratio>=", round(CEILING_SHARE * r.ceiling.median, 3))
            r.facts["target_rule"] = (f"ratio >= {CEILING_SHARE} x the same run's ceiling "
                                      f"({r.ceiling.median:.3f})")
            r.facts["share_of_ceiling"] = round(r.ratio / r.ceiling.median, 3) \
                if r.ratio is not None and r.ceiling.median else None
        return r
    return row


ROWS = {"purchase-sqlite": against_ceiling(purchases.sqlite_one),
        "purchase-pg": against_ceiling(purchases.pg_one),
        "purchase-pg-8": against_ceiling(purchases.pg_eight),
        "purchase-pg-64": pg_many, "purchase-pg-cart3": pg_cart}
