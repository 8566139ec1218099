"""What the driver keeps to save CPU (storage/driver.py) changes nothing it writes or reads,
on SQLite and PostgreSQL:

- a time is bound once per transaction whichever time column it goes to, and bound exactly
  as SQLAlchemy binds it for each of those columns;
- the cursors kept with a PostgreSQL connection between transactions read the right rows
  after a transaction that failed at its commit, and after the connection was replaced.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from sqlalchemy import Table, text
from sqlalchemy.exc import IntegrityError

from engine import service
from engine.book import Book
from storage import models
from storage.db import Database
from storage.driver import Driver
from tests.helpers import seed_shop

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TIME_COLUMNS = [(models.Order, "created_at"), (models.Order, "settles_at"),
                (models.Entry, "matures_at"), (models.JournalTxn, "at"),
                (models.Outbox, "next_at")]


def seed(db: Database) -> None:
    seed_shop(db, products=[("tea", "100.00", "0.40", 0, "both")], users=("ann", "bob"),
              referrals={"bob": "ann"}, at=T)


def test_a_time_is_bound_once_a_transaction_and_as_sqlalchemy_binds_it_for_each_column(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[datetime] = []
    original = models.UTCDateTime.process_bind_param

    def counted(self: models.UTCDateTime, value: Any, dialect: Any) -> Any:
        calls.append(value)
        return original(self, value, dialect)

    # the same instant, written in another zone, is the same stored time
    at = T.astimezone(timezone(timedelta(hours=8)))
    with db.transaction() as s:
        driver = Driver(s)
        dialect = driver.dialect
        monkeypatch.setattr(models.UTCDateTime, "process_bind_param", counted)
        bound = [driver.bind(cast(Table, model.__table__), (column,), [(at,)])[0][0]
                 for model, column in TIME_COLUMNS]
        assert len(calls) == 1
        monkeypatch.setattr(models.UTCDateTime, "process_bind_param", original)
        for (model, column), value in zip(TIME_COLUMNS, bound, strict=True):
            column_type = cast(Table, model.__table__).c[column].type
            processor = column_type.dialect_impl(dialect).bind_processor(dialect)
            assert processor is not None
            assert value == processor(T)
    with db.transaction() as s:  # a new transaction binds afresh
        monkeypatch.setattr(models.UTCDateTime, "process_bind_param", counted)
        Driver(s).bind(cast(Table, models.Order.__table__), ("paid_at",), [(at,)])
    assert len(calls) == 2


def _failed_commit(db: Database) -> None:
    with pytest.raises(IntegrityError):
        with db.transaction() as s:
            book = Book(s)
            book.user("ann").wallet += 1
            book.record(key="join:ann", kind="again", at=T)  # that key is taken (the join)


def test_reads_after_a_failed_commit_on_the_same_connection_are_right(db: Database) -> None:
    seed(db)
    first = service.buy(db, user="bob", sku="tea", at=T, key="k1")
    _failed_commit(db)
    again = service.buy(db, user="bob", sku="tea", at=T, key="k1")  # read through the pipeline
    assert again["replayed"] is True and again["order"] == first["order"]
    second = service.buy(db, user="bob", sku="tea", at=T + timedelta(seconds=1), key="k2")
    assert second["order"] != first["order"]
    with db.reading() as s:
        assert s.execute(text("SELECT count(*) FROM orders")).scalar_one() == 2
        kinds = s.execute(text("SELECT kind, count(*) FROM journal GROUP BY kind")).all()
        assert dict(kinds)["purchase"] == 2 and "again" not in dict(kinds)


def test_a_replaced_connection_gets_cursors_of_its_own(db: Database) -> None:
    seed(db)
    service.buy(db, user="bob", sku="tea", at=T, key="k1")
    with db.engine.connect() as conn:  # the pooled connection, closed under its record
        conn.invalidate()
    result = service.buy(db, user="bob", sku="tea", at=T + timedelta(seconds=1), key="k2")
    assert result["status"] == "settled"
    with db.reading() as s:
        assert s.execute(text("SELECT count(*) FROM orders")).scalar_one() == 2
