"""Issue 7: the bulk-prepared benchmark shops are real books, and the fast `storefront verify`
still proves them page by page.

- a history written with bulk inserts passes `verify`, and the engine carries on from it;
- verify reads in pages: with tiny pages it still passes and still names the altered row;
- its hash shortcut is `engine.journal.txn_hash`, byte for byte.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from benchmarks.fixtures import Plan, build_history, holder_shop
from benchmarks.workload import Purchases, buy
from engine import journal
from engine import verify as verify_module
from engine.replay import Replayer
from engine.state import snapshot
from engine.verify import at_iso, verify
from storage.db import Database
from tests.test_vectors import VECTORS


def test_a_bulk_history_is_a_shop_the_engine_carries_on_from(tmp_path):
    built = build_history(tmp_path / "shop.db", Plan(users=40, entries=400, seed=2))
    db = Database(f"sqlite:///{built.path}")
    try:
        report = verify(db)
        assert report.ok, report.lines()
        assert report.txns == built.txns
        state = db.read(snapshot)
        assert len(state["entries"]) == built.entries == 400
        assert sum(e["status"] == "waiting" for e in state["entries"]) == built.waiting
        assert any(e["released"] != "0.00" for e in state["entries"])  # accelerations, releases
        stream = iter(Purchases(built.handles, built.end + timedelta(minutes=1), "t",
                                holders=frozenset(built.holders)))
        assert sum(buy(db, next(stream)) for _ in range(30)) == 30
        report = verify(db)
        assert report.ok, report.lines()
        assert report.txns >= built.txns + 30
    finally:
        db.dispose()


def test_every_holder_of_a_holder_shop_holds_points_below_the_exit(tmp_path):
    built = holder_shop(tmp_path / "holders.db", 300)
    db = Database(f"sqlite:///{built.path}")
    try:
        assert verify(db).ok
        users = db.read(snapshot)["users"]
        assert len(built.holders) == sum(u["points"] != "0.000000" for u in users.values())
        assert len(built.holders) >= 295  # only the very first buyers can have been forced out
    finally:
        db.dispose()


@pytest.fixture
def books(db: Database) -> Database:
    with open(VECTORS / "settle-refund.jsonl", encoding="utf-8") as fh:
        Replayer(db).run(fh)
    return db


def test_verify_in_tiny_pages_passes_and_names_the_altered_transaction(books, monkeypatch):
    monkeypatch.setattr(verify_module, "PAGE", 3)
    report = verify(books)
    assert report.ok, report.lines()
    total = report.txns
    assert total > 6
    victim = books.read(lambda s: s.execute(text(
        "select min(txn_id) from postings where txn_id > 4")).scalar_one())
    with books.engine.begin() as conn:
        conn.execute(text("update postings set amount = amount + 1 where id = "
                          "(select min(id) from postings where txn_id = :t and amount > 0)"),
                     {"t": victim})
    report = verify(books)
    assert any(p.startswith(f"transaction {victim} ") and "altered" in p
               for p in report.problems), report.problems
    assert report.txns == total


def test_the_hash_shortcut_is_the_engine_hash():
    assert verify_module.txn_hash is verify_module._fast_hash
    at = datetime(2026, 8, 1, 2, 3, 4, 5, tzinfo=UTC)
    cases = [
        ("0" * 64, 1, "join:A", "join", None, '{"referrer":null,"user":"A"}', None, []),
        ("f" * 64, 99, "order:茶-1", "purchase", "tg:7 \"x\"\\", json.dumps({"é": "\n"}),
         '{"paid":1}', [("user:1:points", "micro", -10**15, "exit:1"),
                        ("points:issued", "micro", 10**15, None)]),
    ]
    for prev, tid, key, kind, actor, body, result, lines in cases:
        expected = journal.txn_hash(prev, tid, key, kind, at, actor, body, result, lines)
        assert verify_module._fast_hash(prev, tid, key, kind, journal.iso(at), actor, body,
                                        result, lines) == expected


def test_stored_times_are_spelled_as_the_journal_hashed_them():
    assert at_iso("2026-08-01 02:03:04.000005") == "2026-08-01T02:03:04.000005"
    assert at_iso("2026-08-01 02:03:04") == "2026-08-01T02:03:04.000000"
    assert at_iso(datetime(2026, 8, 1, 2, 3, 4)) == "2026-08-01T02:03:04.000000"
    aware = datetime(2026, 8, 1, 10, 3, 4, tzinfo=UTC) + timedelta(hours=0)
    assert at_iso(aware.astimezone()) == "2026-08-01T10:03:04.000000"
    assert at_iso("not a time") == "not a time"  # cannot match any hash: reported as altered
