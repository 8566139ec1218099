"""Issue 7: the purchase rows' ceiling (benchmarks/floor.py) replays exactly what the engine
wrote. Replayed on a copy of the shop taken before the purchases, the captured writes must
leave the copy identical to the shop, table by table; a refused purchase leaves nothing to
replay; the keys-only copy keeps its unique keys and loses every other index."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import inspect, text

from benchmarks.floor import Ceiling, PGFloor, SQLiteFloor, Writes, _grouped, sqlite_copy
from benchmarks.workload import T0, Purchases, buy, setup_shop
from engine import service
from engine.errors import Refusal
from storage.db import Database
from storage.migrate import migrate

from .conftest import drop_pg_schema, new_pg_schema

USERS = 12
PURCHASES = 25


def _contents(db: Database) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, in primary-key order, as the database returns it."""
    with db.engine.connect() as conn:
        tables = sorted(inspect(conn).get_table_names())
        out = {}
        for table in tables:
            rows = conn.execute(text(f'SELECT * FROM "{table}" ORDER BY 1')).all()
            out[table] = [tuple(r) for r in rows]
    return out


def _purchases_with_one_refused(db: Database, handles: list[str]) -> None:
    stream = iter(Purchases(handles, T0 + timedelta(days=1), uuid.uuid4().hex[:8]))
    for _ in range(PURCHASES):
        assert buy(db, next(stream))
    with pytest.raises(Refusal):
        service.buy(db, **{**next(stream), "sku": "no-such-product"})


def _replayed(db: Database, handles: list[str], *floors: SQLiteFloor | PGFloor) -> None:
    """Buy on `db` while capturing its writes (one purchase refused), replay them on each of
    `floors`, then close the floors."""
    writes = Writes(db)
    try:
        _purchases_with_one_refused(db, handles)
        txns = writes.take()
        assert len(txns) == PURCHASES  # one transaction a purchase; the refusal wrote nothing
        assert writes.take() == []
        for floor in floors:
            assert floor.replay(txns) > 0
    finally:
        writes.close()
        for floor in floors:
            floor.close()


def test_sqlite_floor_replays_the_engine_writes_exactly(tmp_path):
    shop = tmp_path / "shop.db"
    db = Database(f"sqlite:///{shop}")
    migrate(db)
    handles = setup_shop(db, USERS)
    _replayed(db, handles, SQLiteFloor(sqlite_copy(shop, tmp_path / "floor.db")),
              SQLiteFloor(sqlite_copy(shop, tmp_path / "keys.db", keys_only=True)))
    expected = _contents(db)
    db.dispose()
    assert expected["journal"] and len(expected["orders"]) >= PURCHASES
    for name in ("floor.db", "keys.db"):
        copy = Database(f"sqlite:///{tmp_path / name}")
        assert _contents(copy) == expected, name
        copy.dispose()
    import sqlite3

    conn = sqlite3.connect(tmp_path / "keys.db")
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'").fetchall()
    conn.close()
    assert indexes and all(sql is None for _name, sql in indexes)  # only keys' own indexes


def test_postgres_floor_replays_the_engine_writes_exactly(pg_admin):
    schemas = [new_pg_schema(pg_admin) for _ in range(3)]
    urls = [url for _schema, url in schemas]
    try:
        for url in urls[1:]:  # the copies: the same setup gives the same ids
            copy = Database(url)
            migrate(copy)
            setup_shop(copy, USERS)
            copy.dispose()
        db = Database(urls[0])
        migrate(db)
        handles = setup_shop(db, USERS)
        keys = PGFloor(urls[2], keys_only=True)
        left = keys.conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND "
            "indexname NOT IN (SELECT conname FROM pg_constraint "
            "WHERE connamespace = current_schema()::regnamespace)").fetchone()
        assert left == (0,)  # only the keys' own indexes are left
        _replayed(db, handles, PGFloor(urls[1]), keys)
        expected = _contents(db)
        db.dispose()
        for url in urls[1:]:
            copy = Database(url)
            got = _contents(copy)
            copy.dispose()
            # the catalogue's cache token is random per setup; everything else is the same
            assert {t: r for t, r in got.items() if t != "head"} == \
                {t: r for t, r in expected.items() if t != "head"}
    finally:
        for schema, _url in schemas:
            drop_pg_schema(pg_admin, schema)


def test_grouping_merges_commits_to_about_k_purchases_keeping_every_statement_in_order():
    txns = [[(f"s{i}-{j}", (), False) for j in range(3)] for i in range(10)]
    assert _grouped(txns, 10, None) is txns
    merged = _grouped(txns, 10, 4)  # one purchase a transaction: 4 to a commit
    assert [len(c) for c in merged] == [12, 12, 6]
    assert [s for c in merged for s in c] == [s for t in txns for s in t]
    batches = _grouped(txns, 40, 8)  # batches of 4 purchases: 2 batches to a commit
    assert [len(c) for c in batches] == [6] * 5


class _Timed:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def replay(self, txns: object) -> float:
        return self.seconds

    def close(self) -> None:
        pass


class _NoWrites:
    def take(self) -> list[object]:
        return []

    def close(self) -> None:
        pass


def test_ceiling_is_the_floor_rate_over_the_same_runs_baseline():
    from benchmarks.common import Stats

    ceiling = Ceiling(_NoWrites(), {"schema": (_Timed(0.5), None),  # type: ignore[arg-type]
                                    "keys only": (_Timed(0.25), None)})
    slice_ = ceiling.follow(lambda seconds: (100, seconds))
    for _ in range(4):  # 2 runs of 2 slices
        assert slice_(1.0) == (100, 1.0)
    ratios = ceiling.ratios(Stats([400.0, 100.0]))
    assert ratios["schema"].runs == [0.5, 2.0]  # 200 purchases in 1 s of replay each run
    assert ratios["keys only"].runs == [1.0, 4.0]
