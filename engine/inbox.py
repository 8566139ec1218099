"""The inbox of chat updates (docs/telegram.md, "The inbox").

A channel adapter stores every update here, in its own commit, before it acknowledges it to
the channel (Telegram: before the getUpdates offset moves past it, or before the webhook's
200), then processes the pending rows. A row is `done` in the same transaction as the
update's money effects (`mark`, called inside `engine.checkout.record_payment`), so a crash either
leaves the row pending with nothing recorded, or done with everything recorded; and
recording a payment is idempotent by its charge id besides, so a row processed twice never
credits twice.

Operators are told, through the outbox, about every payment that is not recorded in the
normal way (`tell_waiting`, `tell_recorded_late`, `set_aside`): one message per charge (per
operator) while it waits, one when it is recorded late, one per update set aside as
`failed`; `unrecorded` counts the payments still waiting, for /pool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.driver import Driver
from storage.models import Checkout, InboxUpdate, JournalTxn

from . import outbox

PENDING, DONE, SPOOLED, EXPIRED, FAILED = "pending", "done", "spooled", "expired", "failed"
# outbox kinds of the operators' notices (handlers/notify.py renders them)
WAITING_NOTICE, LATE_NOTICE, FAILED_NOTICE = "payment_waiting", "payment_late", "update_failed"
KEEP = timedelta(days=7)  # finished rows are pruned after this long
_INBOX = cast(Table, InboxUpdate.__table__)  # how `received_at` is bound


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


_RECEIVED = ("update_id", "kind", "body", "chat_id", "user_id", "status", "attempts",
             "received_at")
_RECEIVE_CHUNK = 100  # rows per INSERT statement (Telegram hands out at most 100 at once)


def _receive_sql(n: int) -> str:
    row = "(" + ",".join("?" * len(_RECEIVED)) + ")"
    return (f"INSERT INTO inbox ({','.join(_RECEIVED)}) VALUES {','.join([row] * n)} "
            "ON CONFLICT (update_id) DO NOTHING RETURNING update_id")


def receive(db: Database, items: Sequence[Item], *, at: datetime | None = None) -> int:
    """Store updates in one commit; ones already stored (same `update_id`) are left as they
    are. Returns how many were new. When this returns, every item is durable."""
    if not items:
        return 0
    when = at or now()
    rows = [(i.update_id, i.kind[:24], i.body, i.chat_id, i.user_id, PENDING, 0, when)
            for i in items]

    def work(session: Session) -> int:
        # the driver's statement, not the ORM's (storage/driver.py): a multi-row INSERT built
        # by SQLAlchemy is compiled afresh for every batch. RETURNING names the rows that
        # were new (a driver's rowcount for INSERT … ON CONFLICT DO NOTHING is not to be
        # trusted).
        driver = Driver(session)
        bound = driver.bind(_INBOX, _RECEIVED, rows)
        new = 0
        for k in range(0, len(bound), _RECEIVE_CHUNK):
            chunk = bound[k:k + _RECEIVE_CHUNK]
            new += len(driver.rows(_receive_sql(len(chunk)),
                                   [v for row in chunk for v in row]))
        return new

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


_PENDING_COLUMNS = ("update_id", "kind", "body", "chat_id", "user_id", "attempts",
                    "received_at")


def pending(db: Database, *, limit: int = 200, skip: Iterable[int] = ()) -> list[Row]:
    """Pending rows in `update_id` order (those in `skip` left out)."""
    skipped = sorted(set(skip))
    # the driver's statement (storage/driver.py): the processor asks often (on each stored
    # batch, and after finished rows that can make others takeable), skipping the rows in
    # hand, and the ORM's NOT IN was rebuilt for each ask
    sql = (f"SELECT {','.join(_PENDING_COLUMNS)} FROM inbox WHERE status = ?"
           + (f" AND update_id NOT IN ({','.join('?' * len(skipped))})" if skipped else "")
           + " ORDER BY update_id LIMIT ?")

    def work(session: Session) -> list[Row]:
        driver = Driver(session)
        found = driver.read(_INBOX, _PENDING_COLUMNS,
                            driver.rows(sql, [PENDING, *skipped, limit]))
        return [Row(*r) for r in found]

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


_FINISH_CHUNK = 500  # update ids per UPDATE statement (bounds its parameters)


def finish_many(db: Database, update_ids: Sequence[int]) -> int:
    """`mark` done of several rows in one transaction (one durable commit): the Telegram
    processor's finished rows, gathered while the previous batch commits. Returns how many
    rows were pending (or spooled) and are done now."""
    ids = sorted(set(update_ids))
    if not ids:
        return 0
    when = now()

    def work(session: Session) -> int:
        # the driver's statement (storage/driver.py), as `receive` and `pending`: the ORM's
        # bulk UPDATE cost more than the rest of the commit of a batch of marks
        driver = Driver(session)
        (done_at,), = driver.bind(_INBOX, ("done_at",), [(when,)])
        changed = 0
        for k in range(0, len(ids), _FINISH_CHUNK):
            chunk = ids[k:k + _FINISH_CHUNK]
            changed += driver.run(
                "UPDATE inbox SET status = ?, done_at = ?, last_error = NULL "
                f"WHERE update_id IN ({','.join('?' * len(chunk))}) AND status IN (?, ?)",
                [DONE, done_at, *chunk, PENDING, SPOOLED])
        return changed

    return db.run(work, label="inbox.finish_many")


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


def unrecorded(session: Session) -> int:
    """Payments waiting to be recorded: `spooled` rows, and payment rows still pending after
    a failed attempt (the database blinked, or a handler failed; they are tried again)."""
    return int(session.execute(select(func.count()).select_from(InboxUpdate).where(or_(
        InboxUpdate.status == SPOOLED,
        and_(InboxUpdate.status == PENDING, InboxUpdate.kind == "payment",
             InboxUpdate.attempts > 0)))).scalar_one())


# -- telling operators ---------------------------------------------------------------------

def notify_operators(session: Session, operators: Iterable[str], *, key: str, kind: str,
                     params: Mapping[str, Any], at: datetime) -> int:
    """Inside the caller's transaction: one `kind` outbox row per operator identity, once per
    `key` (written again, it is skipped). An operator with a shop account gets it in their
    language; the identity is in the params either way. Returns how many were new."""
    def row_key(ident: str) -> str:
        found = f"{kind}:{key}:{ident}"
        return found if len(found) <= 200 else \
            f"{kind}:sha256:{hashlib.sha256(found.encode()).hexdigest()}"

    written = outbox.to_operators(session, operators, row_key=row_key, kind=kind,
                                  params=params, at=at)
    session.flush()
    return written


def _charge_key(charge: Mapping[str, Any]) -> str:
    from .checkout import payment_key  # (engine.checkout imports this module)

    return payment_key(str(charge.get("channel") or "telegram"), str(charge.get("charge_id")))


def _charge_params(session: Session, charge: Mapping[str, Any]) -> dict[str, Any]:
    """A spooled charge (bot/charge_spool.py) as a notice's params, with its order's ref."""
    token = charge.get("token")
    order = session.execute(select(Checkout.order_ref).where(
        Checkout.token == token)).scalar_one_or_none() if isinstance(token, str) else None
    amount = charge.get("amount")
    return {"channel": str(charge.get("channel") or "-")[:16],
            "charge": str(charge.get("charge_id") or "-")[:128],
            "amount": amount if isinstance(amount, int) else 0,
            "currency": str(charge.get("currency") or "")[:8],
            "buyer": str(charge.get("identity") or "-")[:64], "order": order or "-",
            "update": charge.get("update_id")}


class NotRecorded(RuntimeError):
    """A spooled charge is still unrecorded (its inbox row is not done)."""


def _recorded(session: Session, charge: Mapping[str, Any]) -> bool:
    return session.execute(select(JournalTxn.id).where(
        JournalTxn.key == _charge_key(charge))).first() is not None


def tell_waiting(db: Database, operators: Iterable[str], charge: Mapping[str, Any], *,
                 at: datetime | None = None) -> int:
    """Every operator is owed one `payment_waiting` message for a charge in the spool that is
    not recorded yet (nothing when it is recorded, or was told already). Raises while the
    database takes no writes: the spool's replay calls this after each failed attempt, so
    the message is written as soon as the database accepts writes again."""
    targets = sorted(set(operators))
    if not targets:
        return 0

    def work(session: Session) -> int:
        if _recorded(session, charge):
            return 0
        return notify_operators(session, targets, key=_charge_key(charge), kind=WAITING_NOTICE,
                                params=_charge_params(session, charge), at=at or now())

    return db.run(work, label="inbox.tell_waiting")


def tell_recorded_late(db: Database, operators: Iterable[str], charge: Mapping[str, Any], *,
                       at: datetime | None = None) -> int:
    """Every operator is owed one `payment_late` message for a spooled charge now recorded
    (nothing if it is not in the journal: a charge the shop refused was flagged to them as
    `payment_flag` by `engine.checkout.record_payment` instead, its inbox row marked done). Raises
    `NotRecorded` while the charge's inbox row is still pending or spooled: neither recorded
    nor refused, it must stay in the spool."""
    targets = sorted(set(operators))
    update_id = charge.get("update_id")

    def work(session: Session) -> int:
        if isinstance(update_id, int) and session.execute(select(InboxUpdate.status).where(
                InboxUpdate.update_id == update_id)).scalar_one_or_none() in (PENDING, SPOOLED):
            raise NotRecorded(f"charge {charge.get('charge_id')} is not recorded yet")
        if not targets or not _recorded(session, charge):
            return 0
        return notify_operators(session, targets, key=_charge_key(charge), kind=LATE_NOTICE,
                                params=_charge_params(session, charge), at=at or now())

    return db.run(work, label="inbox.tell_recorded_late")


def set_aside(db: Database, update_id: int, status: str, *, error: str,
              operators: Iterable[str] = (), charge: Mapping[str, Any] | None = None) -> bool:
    """Mark a row `spooled` (its charge is in the spool: `charge`) or `failed`, and in the
    same transaction owe every operator a message about it (`payment_waiting` for a spooled
    payment, `update_failed` otherwise). False, and no message, when the row was not pending."""
    when = now()
    targets = sorted(set(operators))

    def work(session: Session) -> bool:
        if not mark(session, update_id, status, at=when, error=error):
            return False
        if targets and charge is not None:
            notify_operators(session, targets, key=_charge_key(charge), kind=WAITING_NOTICE,
                             params=_charge_params(session, charge), at=when)
        elif targets:
            row = session.execute(select(InboxUpdate).where(
                InboxUpdate.update_id == update_id)).scalar_one_or_none()
            notify_operators(session, targets, key=f"inbox:{update_id}", kind=FAILED_NOTICE,
                             params={"update": update_id, "kind": row.kind if row else "-",
                                     "buyer": f"tg:{row.user_id}" if row and row.user_id
                                     is not None else "-", "error": error[:200]}, at=when)
        return True

    return db.run(work, label="inbox.set_aside")
