"""Forced exit (SPEC §4) inside a group commit (engine/batch.py): every purchase's seek is
answered from the batch's read-ahead of the smallest exit keys (`storage.queries.ExitsAhead`)
with no flush and no round trip of its own, and the books are still exactly those of the
same purchases made one by one: the same answers, refusals, journal bytes and postings."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text

from engine import service
from engine.points import exit_key
from engine.verify import verify
from storage import queries
from storage.db import Database
from storage.rows import UserRow
from storage.unit import Rows
from tests.conftest import MakeDb
from tests.helpers import at, seed_shop
from tests.test_group_commit import batched, same_books

SEEK = "SELECT exit_key FROM users WHERE exit_key IS NOT NULL AND exit_key <="


def holders_shop(db: Database) -> None:
    """Holders near their forced exit (a steep points pool, exit at 1.5 × basis): h0, h1, h2
    bought one after the other (each exit price above the one before), h3 shared two thirds
    of their points with h4 and h5 (h4 and h5 tie on the exit price, h3 a hair above)."""
    seed_shop(db, users=["x", "h0", "h1", "h2", "h3", "h4", "h5", "y", "z"],
              referrals={"y": "x", "h0": "x"},
              products=[("rice", "100.00", "0.30", 0, "points"),
                        ("gold", "100.00", "0.30", 0, "points")],
              config={"points": {"pool_rate": "0.5", "mint_rate": "0.3",
                                 "exit_multiple": "1.5"}}, at=at(1))
    for h in ("h0", "h1", "h2", "h3"):
        service.buy(db, user=h, sku="rice", at=at(2), key=f"setup:{h}")
    for receiver in ("h4", "h5"):
        service.transfer_points(db, sender="h3", receiver=receiver, points="0.747500",
                                at=at(2))


def exits(db: Database) -> list[tuple[str, str]]:
    """(user, cause) of every forced exit, in the journal's order."""
    with db.reading() as s:
        return [(body["user"], body["cause"]) for body in (json.loads(b) for (b,) in s.execute(
            text("SELECT body FROM journal WHERE kind = 'forced_exit' ORDER BY id")))]


# every batch here follows one warm-up purchase recorded alone (test_group_commit.batched)
WARM: dict[str, Any] = {"user": "z", "sku": "rice", "at": at(2), "key": "warm"}


def test_a_batch_forcing_exits_keeps_the_books_of_one_by_one_purchases(db: Database,
                                                                       make_db: MakeDb) -> None:
    """Two purchases of one batch force exits out of the same holders (the second must not
    find again those the first forced out: their stored keys are stale until the batch is
    written), holders tied on the exit price go out together, earliest first, and a holder
    forced out buys again in the same batch — with points they no longer have, refused."""
    holders_shop(db)
    assert exits(db) == []
    calls: list[dict[str, Any]] = [
        {"user": "x", "sku": "gold", "qty": 2, "at": at(3), "key": "a"},  # h0 out
        {"user": "z", "sku": "gold", "qty": 8, "at": at(3), "key": "b"},
        {"user": "h0", "sku": "rice", "at": at(3), "key": "c"},  # forced out, buys again
        {"user": "y", "sku": "gold", "qty": 60, "at": at(3), "key": "d"},  # h1, h2 out
        {"user": "h1", "sku": "rice", "at": at(3), "pay_points": "0.10", "key": "e"},
        {"user": "z", "sku": "gold", "qty": 40, "at": at(3), "key": "f"},  # h4, h5, h3
    ]
    answers, sent = batched(db, calls, WARM)
    assert verify(db).ok
    order = {answers[i]["order"]: calls[i]["key"] for i in range(len(calls))
             if isinstance(answers[i], dict)}
    assert [(user, order[cause.split(":")[1]]) for user, cause in exits(db)] == [
        ("h0", "a"), ("h1", "d"), ("h2", "d"), ("h4", "f"), ("h5", "f"), ("h3", "f")]
    assert answers[4] == ("refused", "insufficient_points")
    assert not [s for s in sent if s.startswith(SEEK)]  # every seek answered from memory

    serial = make_db("memory")
    holders_shop(serial)
    same_books(db, serial, calls, WARM, answers)


def test_a_batch_asks_the_exit_index_nothing_and_writes_its_rows_at_the_end(
        pg_db: Database) -> None:
    """The seeks no longer write the batch so far to ask the index: nothing is written
    before the batch's end, where each table's new rows go in one statement."""
    holders_shop(pg_db)
    calls = [{"user": h, "sku": "rice", "at": at(2, 11), "key": f"k{h}"}
             for h in ("x", "y", "z", "h0", "h1", "h2", "h3", "h4")]
    answers, sent = batched(pg_db, calls, WARM)
    assert all(isinstance(a, dict) for a in answers.values())
    assert exits(pg_db) == [("h0", f"settle:{answers[0]['order']}")]  # a buyer later: held
    assert not [s for s in sent if s.startswith(SEEK)]
    inserts = [s for s in sent if s.startswith("INSERT INTO orders")]
    assert len(inserts) == 1 and "unnest" in inserts[0]


def keys_in_order(db: Database) -> list[tuple[bytes, int]]:
    with db.reading() as s:
        return [(bytes(k), i) for k, i in s.execute(text(
            "SELECT exit_key, id FROM users WHERE exit_key IS NOT NULL ORDER BY exit_key, id"))]


def test_exits_ahead_reads_the_next_page_once_every_key_read_is_held(db: Database) -> None:
    """`ExitsAhead` read with too few keys (all of them held) reads the next page after the
    last key read, unflushed, and answers as the index does for the users not held."""
    seed_shop(db, users=[f"u{i}" for i in range(12)], at=at(1))
    with db.transaction() as s:
        for i in range(12):  # u3 and u4 tie
            key = exit_key(1000 + 10 * min(i, 12 - i if i > 8 else i) - (i == 4) * 10, 50)
            s.execute(text("UPDATE users SET exit_key = :k WHERE handle = :h"),
                      {"k": key, "h": f"u{i}"})
    stored = keys_in_order(db)
    assert len(stored) == 12
    limit = stored[-3][0]

    def truth(skip: set[int]) -> bytes | None:
        rest = [k for k, i in stored if i not in skip]
        return rest[0] if rest and rest[0] <= limit else None

    with db.transaction() as s:
        rows = Rows(s)
        ahead = queries.ExitsAhead(rows, stored[:3], 3)
        assert not ahead.complete
        for held in (0, 2, 3, 5, 8, 9, 12):
            skip = [i for _k, i in stored[:held]]
            assert queries.first_exit_key(rows, limit, skip) == truth(set(skip)), held
        # a user held and changed in memory is skipped, whatever is stored for them
        first = rows.load(UserRow, "id = ?", (stored[0][1],))[0]
        first.exit_key = None
        rows.flush()
        assert queries.first_exit_key(rows, limit, [first.id]) == stored[1][0]
    assert ahead.pages >= 2 and ahead.complete


def pending_shop(db: Database) -> None:
    """`holders_shop` with 210 orders waiting in their return window, all paid on 4 Aug:
    150 with a window of two days (due 6 Aug 00:00), then 60 with one (due 5 Aug): the
    first page of orders due by 6 Aug (`DUE_PAGE`, by number) holds only 49 of those 60."""
    holders_shop(db)
    service.upsert_product(db, sku="tea", price="100.00", margin="0.40", lock_days=0,
                           scheme="queue", at=at(3))
    for n in range(210):
        if n in (0, 150):
            service.configure(db, {"store": {"settle_days": "2" if n == 0 else "1"}},
                              at=at(3))
        service.buy(db, user=("x", "y", "h0")[n % 3], sku="tea", at=at(4),
                    key=f"pending:{n}")


def test_a_batch_settles_the_orders_due_as_one_by_one_purchases_even_past_a_full_page(
        db: Database, make_db: MakeDb) -> None:
    """The read-ahead reads the orders due by the batch's latest time once; an earlier
    time's orders are its part of that page — unless the page was full (`DUE_PAGE`), when
    the purchase reads its own. Either way each settles exactly what it would alone."""
    assert queries.DUE_PAGE == 200
    pending_shop(db)
    calls: list[dict[str, Any]] = [
        {"user": "z", "sku": "tea", "at": at(5, 9), "key": "a"},  # the 60 (past the page)
        {"user": "h1", "sku": "tea", "at": at(6, 9), "key": "b"},  # the 150
        {"user": "h2", "sku": "tea", "at": at(5, 9), "key": "c"},
    ]
    answers, sent = batched(db, calls, WARM)
    assert verify(db).ok
    with db.reading() as s:
        assert s.execute(text("SELECT count(*) FROM orders WHERE status = 'pending'")
                         ).scalar_one() == 2  # b's and c's (a's was due by b's time)
    due_reads = [s for s in sent if s.startswith("SELECT") and "settles_at <=" in s]
    assert len(due_reads) >= 3  # the read-ahead's, then a's own (a full page), b's next page

    serial = make_db("memory")
    pending_shop(serial)
    same_books(db, serial, calls, WARM, answers)
