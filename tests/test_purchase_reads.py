"""A one-connection purchase's reads (`storage.queries.purchase_reads`, `Book.prefetch_purchase`):
every row it may need in one round trip of seven statements on both databases — the head,
the buyer and their referrer together (one statement), the referrer's waiting entries, the
pools, the smallest exit keys, the idempotency key and the orders due — each statement a
client cost on PostgreSQL (psycopg) and SQLite alike, so the count must not creep back up."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, text

from engine import orders, service
from engine.book import Book
from storage import queries
from storage.db import Database
from storage.rows import UserRow
from storage.unit import Rows
from tests.helpers import at, seed_shop

USERS = UserRow.SELECT + " WHERE"


def shop(db: Database) -> None:
    """R refers A and B; R and A have bought, so R has waiting entries for B's purchase."""
    seed_shop(db, users=("R", "A", "B", "loner"), referrals={"A": "R", "B": "R"})
    service.buy(db, user="R", sku="tea", at=at(2), key="r1")
    service.buy(db, user="A", sku="tea", at=at(3), key="a1")


@contextmanager
def heard(db: Database) -> Iterator[list[str]]:
    """The statements sent meanwhile, as the driver's listeners hear them."""
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", listen)


def reads(statements: list[str]) -> list[str]:
    return [s for s in statements if s.startswith("SELECT")]


def waiting_of(db: Database, handle: str) -> list[tuple[int, int]]:
    with db.reading() as s:
        return [tuple(r) for r in s.execute(text(
            "SELECT e.amount, e.released FROM entries e JOIN users u ON u.id = e.user_id "
            "WHERE u.handle = :h ORDER BY e.seq"), {"h": handle})]


def test_a_purchase_reads_in_seven_statements_buyer_and_referrer_in_one(db: Database) -> None:
    shop(db)
    before = waiting_of(db, "R")
    with heard(db) as seen:
        result = service.buy(db, user="B", sku="tea", at=at(4), key="b1")
    assert result["order"] and not result.get("replayed")
    selects = reads(seen)
    assert len(selects) == 7, selects
    users = [s for s in selects if s.startswith(USERS)]
    assert len(users) == 1 and "referrer_id FROM users WHERE handle" in users[0], users
    # the referrer's waiting entries read ahead were the ones the purchase accelerated
    after = waiting_of(db, "R")
    assert len(after) == len(before) and after != before, (before, after)


def test_a_purchase_in_an_open_book_reads_in_seven_statements_too(db: Database) -> None:
    """`prefetch_purchase` on a book opened without the purchase: the head, then six."""
    shop(db)
    with heard(db) as seen, db.transaction() as s:
        book = Book(s)
        first = orders.record_paid_order(book, user="B", sku="tea", at=at(4), key="b1")
    assert first["order"]
    assert len(reads(seen)) == 7, reads(seen)
    # the same purchase again in the same book: the key is known, nothing new to read
    with heard(db) as seen, db.transaction() as s:
        book = Book(s)
        orders.record_paid_order(book, user="B", sku="tea", at=at(4), key="b1")
        again = orders.record_paid_order(book, user="B", sku="tea", at=at(4), key="b1")
    assert again["replayed"] is True and again["order"] == first["order"]


def test_the_one_users_read_splits_into_buyer_and_referrer(db: Database) -> None:
    shop(db)
    with db.transaction() as s:
        rows = Rows(s)
        got = queries.purchase_reads(rows, "B", None, None, with_pools=False)
        assert [u.handle for u in got["buyer"]] == ["B"]
        assert [u.handle for u in got["referrer"]] == ["R"]
        waiting = queries.waiting_entries(rows, got["referrer"][0].id)  # kept: no statement
        assert waiting and all(e.user_id == got["referrer"][0].id for e in waiting)
        assert [e.seq for e in waiting] == sorted(e.seq for e in waiting)
        alone = queries.purchase_reads(rows, "loner", None, None, with_pools=False)
        assert [u.handle for u in alone["buyer"]] == ["loner"] and alone["referrer"] == []
        nobody = queries.purchase_reads(rows, "nobody", None, None, with_pools=False)
        assert nobody["buyer"] == [] and nobody["referrer"] == []
        # a referrer who is also a buyer: one row, the same object, whichever is read first
        referrer = queries.purchase_reads(rows, "R", None, None, with_pools=False)
        assert referrer["buyer"] == [got["referrer"][0]] and referrer["referrer"] == []


def test_the_kept_waiting_entries_are_those_a_read_would_find(db: Database) -> None:
    shop(db)
    with heard(db) as seen, db.transaction() as s:  # heard from the transaction's start
        rows = Rows(s)
        got = queries.purchase_reads(rows, "A", None, None, with_pools=False)
        referrer_id = got["referrer"][0].id
        sent = len(seen)
        kept = queries.waiting_entries(rows, referrer_id)
        assert len(seen) == sent  # offered by the read ahead
        again = queries.waiting_entries(rows, referrer_id)  # read afresh
        assert len(seen) == sent + 1
        assert kept == again and kept
