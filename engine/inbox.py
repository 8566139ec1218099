"""The inbox of chat updates (docs/telegram.md, "The inbox").

A channel adapter stores every update here, in its own commit, before it acknowledges it to
the channel (Telegram: before the getUpdates offset moves past it, or before the webhook's
200), then processes the pending rows. A row is `done` in the same transaction as the
update's money effects (`mark`, called inside `engine.checkout.paid`), so a crash either
leaves the row pending with nothing recorded, or done with everything recorded; and
recording a payment is idempotent by its charge id besides, so a row processed twice never
credits twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import InboxUpdate

PENDING, DONE, SPOOLED, EXPIRED = "pending", "done", "spooled", "expired"
KEEP = timedelta(days=7)  # finished rows are pruned after this long


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Item:
    """One update as the adapter stores it: its raw JSON body and who it is from."""

    update_id: int
    kind: str
    body: str
    chat_id: int | None = None
    user_id: int | None = None


def receive(db: Database, items: Sequence[Item], *, at: datetime | None = None) -> int:
    """Store updates in one commit; ones already stored (same `update_id`) are left as they
    are. Returns how many were new. When this returns, every item is durable."""
    if not items:
        return 0
    when = at or now()
    rows = [{"update_id": i.update_id, "kind": i.kind[:24], "body": i.body,
             "chat_id": i.chat_id, "user_id": i.user_id, "status": PENDING, "attempts": 0,
             "received_at": when} for i in items]

    def work(session: Session) -> int:
        dialect_insert = pg_insert if db.is_postgres else sqlite_insert
        # one statement for the batch; RETURNING names the rows that were new (a driver's
        # rowcount for INSERT … ON CONFLICT DO NOTHING is not to be trusted)
        stmt = (dialect_insert(InboxUpdate).values(rows)
                .on_conflict_do_nothing(index_elements=["update_id"])
                .returning(InboxUpdate.update_id))
        return len(session.execute(stmt).all())

    return db.run(work, label="inbox.receive")


@dataclass(frozen=True)
class Row:
    update_id: int
    kind: str
    body: str
    chat_id: int | None
    user_id: int | None
    attempts: int
    received_at: datetime


def pending(db: Database, *, limit: int = 200, skip: Iterable[int] = ()) -> list[Row]:
    """Pending rows in `update_id` order (those in `skip` left out)."""
    skipped = sorted(set(skip))

    def work(session: Session) -> list[Row]:
        query = select(InboxUpdate).where(InboxUpdate.status == PENDING)
        if skipped:
            query = query.where(InboxUpdate.update_id.not_in(skipped))
        found = session.execute(query.order_by(InboxUpdate.update_id).limit(limit)
                                ).scalars().all()
        return [Row(r.update_id, r.kind, r.body, r.chat_id, r.user_id, r.attempts,
                    r.received_at) for r in found]

    return db.read(work)


def mark(session: Session, update_id: int, status: str = DONE, *,
         at: datetime | None = None, error: str | None = None) -> bool:
    """Inside the caller's transaction: a pending (or spooled) row becomes `status`. False
    when it was neither (already finished, or never stored). A spooled payment recorded
    later from the charge spool so becomes done, and `spooled` rows are exactly the
    payments still unrecorded."""
    result = session.execute(update(InboxUpdate).where(
        InboxUpdate.update_id == update_id,
        InboxUpdate.status.in_((PENDING, SPOOLED))).values(
        status=status, done_at=at or now(), last_error=error[:255] if error else None))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def finish(db: Database, update_id: int, status: str = DONE, *,
           error: str | None = None) -> bool:
    """`mark` in a transaction of its own."""
    return db.run(lambda s: mark(s, update_id, status, error=error), label="inbox.finish")


def failed_attempt(db: Database, update_id: int, error: str) -> int:
    """Count a failed attempt at a pending row; returns the attempts so far."""
    def work(session: Session) -> int:
        session.execute(update(InboxUpdate).where(
            InboxUpdate.update_id == update_id, InboxUpdate.status == PENDING).values(
            attempts=InboxUpdate.attempts + 1, last_error=error[:255]))
        n = session.execute(select(InboxUpdate.attempts).where(
            InboxUpdate.update_id == update_id)).scalar_one_or_none()
        return int(n or 0)

    return db.run(work, label="inbox.failed_attempt")


def status_of(db: Database, update_id: int) -> str | None:
    return db.read(lambda s: s.execute(select(InboxUpdate.status).where(
        InboxUpdate.update_id == update_id)).scalar_one_or_none())


def summary(db: Database) -> dict[str, Any]:
    """Rows per status, the oldest pending row's time, and the spooled rows (what operators
    must look at: payments not recorded)."""
    def work(session: Session) -> dict[str, Any]:
        counts = {status: int(n) for status, n in session.execute(select(
            InboxUpdate.status, func.count()).group_by(InboxUpdate.status)).all()}
        oldest = session.execute(select(func.min(InboxUpdate.received_at)).where(
            InboxUpdate.status == PENDING)).scalar_one_or_none()
        spooled = session.execute(select(InboxUpdate).where(
            InboxUpdate.status == SPOOLED).order_by(InboxUpdate.update_id)).scalars().all()
        return {"counts": counts, "oldest_pending": oldest,
                "spooled": [{"update_id": r.update_id, "kind": r.kind, "user_id": r.user_id,
                             "error": r.last_error, "at": r.done_at} for r in spooled]}

    return db.read(work)


def prune(db: Database, *, at: datetime | None = None, keep: timedelta = KEEP) -> int:
    """Delete `done` and `expired` rows finished more than `keep` ago (spooled and pending
    rows stay until an operator or the processor deals with them). Returns how many."""
    cutoff = (at or now()) - keep

    def work(session: Session) -> int:
        result = session.execute(delete(InboxUpdate).where(
            InboxUpdate.status.in_((DONE, EXPIRED)), InboxUpdate.done_at < cutoff))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    return db.run(work, label="inbox.prune")
