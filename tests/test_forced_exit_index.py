"""SPEC §4: forced exit finds its candidates through the exit-price index, never by scanning
every holder. One purchase issues the same statements, and SQLite executes about the same
number of VM steps, with 100 and with 100,000 holders."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from sqlalchemy import event, insert, text, update

from engine import service
from engine.points import exit_key
from storage.db import Database
from storage.models import Pool, User
from tests.conftest import MakeDb
from tests.helpers import at, seed_shop


def shop_with_holders(db: Database, n: int) -> Database:
    seed_shop(db, products=[("rice", "100.00", "0.3", 0, "points")], users=("buyer",),
              at=at(1))
    rng = random.Random(n)
    rows, supply = [], 0
    for i in range(n):
        points = rng.randint(1, 500) * 1_000_000
        basis = points // 100 * rng.randint(60, 400)  # exit price well above today's 1.00
        supply += points
        rows.append({"handle": f"h{i}", "created_at": datetime(2026, 1, 1, tzinfo=UTC),
                     "wallet": 0, "held": 0, "points": points, "basis": basis,
                     "exit_key": exit_key(basis, points), "blocked": False})
    with db.transaction() as s:
        s.execute(insert(User), rows)
        s.execute(update(Pool).where(Pool.name == "points")
                  .values(balance=supply // 10_000, supply=supply))  # price 1.00
    return db


def cost_of_one_purchase(db: Database) -> tuple[list[str], int]:
    statements: list[str] = []
    steps = [0]

    def count(conn, cursor, statement, params, context, executemany):  # noqa: ARG001
        statements.append(statement.split()[0] + " " + statement[:60])

    raw = db.engine.raw_connection()
    raw.driver_connection.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1) or 0,
                                               100)
    raw.close()
    event.listen(db.engine, "before_cursor_execute", count)
    try:
        service.buy(db, user="buyer", sku="rice", at=at(2))
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    return statements, steps[0] * 100


def test_one_purchase_costs_the_same_with_100_and_100000_holders(make_db: MakeDb):
    small = shop_with_holders(make_db("memory"), 100)
    large = shop_with_holders(make_db("memory"), 100_000)
    small_statements, small_steps = cost_of_one_purchase(small)
    large_statements, large_steps = cost_of_one_purchase(large)
    assert small_statements == large_statements
    # a scan of 100,000 rows would cost millions of VM steps; an index seek costs a handful
    assert large_steps <= small_steps * 1.2 + 2000, (small_steps, large_steps)


def test_the_exit_query_seeks_the_exit_price_index(memdb: Database):
    db = shop_with_holders(memdb, 1000)
    with db.engine.connect() as conn:
        plan = " ".join(str(r) for r in conn.execute(text(
            "EXPLAIN QUERY PLAN SELECT exit_key FROM users WHERE exit_key IS NOT NULL "
            "AND exit_key <= x'00' ORDER BY exit_key, id LIMIT 1")))
    assert "ix_users_exit" in plan and "SCAN users" not in plan
