"""The inbox's batch writes (engine/inbox.py): a getUpdates batch stored in one commit, and
the rows the processor finished together marked done in one commit."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from engine import inbox
from storage.db import Database
from storage.models import InboxUpdate


def _items(ids: range) -> list[inbox.Item]:
    return [inbox.Item(update_id=n, kind="message", body=f'{{"update_id":{n}}}', chat_id=n,
                       user_id=n) for n in ids]


def _rows(db: Database) -> dict[int, tuple[str, str, datetime | None]]:
    return {r.update_id: (r.status, r.body, r.done_at) for r in db.read(
        lambda s: s.execute(select(InboxUpdate)).scalars().all())}


def test_receive_stores_more_than_one_statement_of_rows_and_counts_only_new_ones(
        db: Database) -> None:
    at = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert inbox.receive(db, _items(range(1, 251)), at=at) == 250  # three INSERTs
    again = [inbox.Item(update_id=7, kind="message", body="changed")]
    assert inbox.receive(db, [*again, *_items(range(249, 253))], at=at) == 2  # 251, 252 new
    rows = _rows(db)
    assert len(rows) == 252 and rows[7] == ("pending", '{"update_id":7}', None)
    stored = db.read(lambda s: s.execute(select(InboxUpdate).where(
        InboxUpdate.update_id == 1)).scalar_one())
    assert stored.received_at == at and stored.chat_id == 1 and stored.attempts == 0
    assert [r.update_id for r in inbox.pending(db, limit=3)] == [1, 2, 3]


def test_finish_many_marks_pending_rows_done_once_and_leaves_the_rest(db: Database) -> None:
    inbox.receive(db, _items(range(1, 6)))
    inbox.finish(db, 2, inbox.EXPIRED)
    assert inbox.finish_many(db, [1, 2, 3, 3, 99]) == 2  # 2 was finished, 99 never stored
    assert inbox.finish_many(db, [1, 3]) == 0
    assert inbox.finish_many(db, []) == 0
    rows = _rows(db)
    assert {n: r[0] for n, r in rows.items()} == {1: "done", 2: "expired", 3: "done",
                                                  4: "pending", 5: "pending"}
    assert rows[1][2] is not None and rows[4][2] is None
