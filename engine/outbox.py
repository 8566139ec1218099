"""The outbox: notifications owed to users, delivered once (SPEC §1, §6).

The engine writes a row in the same transaction as the movement it reports (`Book.notify`),
so a notification exists if and only if its movement does. Delivery (scheduler/) claims
rows here, sends them through the user's channel and records the outcome:

    pending ──claim──▶ claimed ──▶ sending ──▶ sent
       ▲                 │            │──▶ pending   (transient error or RetryAfter: backoff)
       │◀── recovered ───┘            │──▶ failed    (permanent error, or too many attempts)
       │  (claimed, never sent)       │──▶ unreachable (blocked the bot / no channel)
       │                              └──▶ interrupted (left `sending`: died mid-send)
       └──── requeue (operator) ◀── interrupted / failed

A claim increments `attempts`; that number is the claim's token, and every later step is
recorded only while the row is still ours under the same token. A claimed row is marked
`sending` in its own small transaction just before its HTTP call, so a crash before that
point leaves it `claimed`, and recovery safely returns it to `pending` (it was never sent).
Chat APIs take no idempotency key, so a crash after the send and before `sent` is recorded
leaves the row `sending`: it then becomes `interrupted` and is *not* sent again.
Notifications are at most once; the unknown window is one HTTP request per row
(docs/scheduler.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, func, select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Identity, Outbox, User
from storage.rows import OUTBOX

from .journal import canonical

PENDING = "pending"
CLAIMED = "claimed"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
UNREACHABLE = "unreachable"
INTERRUPTED = "interrupted"
STATUSES = (PENDING, CLAIMED, SENDING, SENT, FAILED, UNREACHABLE, INTERRUPTED)

# Wait after the n-th failed attempt; the last value repeats. Deterministic: no jitter, since
# rows are already spread by the order they were written and the per-chat limits.
BACKOFF = tuple(timedelta(seconds=s) for s in (10, 30, 120, 600, 1800, 3600, 3 * 3600, 6 * 3600))
MAX_ATTEMPTS = 10
# A row still `sending` this long after its claim was abandoned by a process that died.
SENDING_TIMEOUT = timedelta(minutes=10)
# How many due rows one claim looks at to find rows for chats that are free right now.
CLAIM_WINDOW = 1000


def message(key: str, user_id: int | None, kind: str, params: dict[str, Any],
            lang: str | None, at: datetime) -> tuple[Any, ...]:
    """A message owed from `at` on, as an outbox row in `storage.rows.OUTBOX`'s column order:
    the one shape every writer of the outbox uses (`Book.notify`, a release's page,
    broadcasts, operator flags and pool warnings). A user with no language gets Chinese."""
    return (key, user_id, kind, canonical(params), lang or "zh", PENDING, 0, at, at)


def release_paid(seq: int, user_id: int, owed: int, total: int, lang: str | None,
                 stamp: Any) -> tuple[Any, ...]:
    """`message(f"release:entry:{seq}", user_id, "release_paid", {"entry": seq, "amount":
    owed, "total": total}, lang, at)` with `at` already bound (`stamp`) and the params' canonical
    text written directly (tests/test_release_chain.py compares the two): a release page owes
    one per entry."""
    return (f"release:entry:{seq}", user_id, "release_paid",
            f'{{"amount":{owed},"entry":{seq},"total":{total}}}', lang or "zh", PENDING, 0,
            stamp, stamp)


def message_fields(key: str, user_id: int | None, kind: str, params: dict[str, Any],
                   lang: str | None, at: datetime) -> dict[str, Any]:
    """`message` by column name, for an ORM or Core insert."""
    return dict(zip(OUTBOX.columns, message(key, user_id, kind, params, lang, at), strict=True))


def to_operators(session: Session, operators: Iterable[str], *, row_key: Callable[[str], str],
                 kind: str, params: Mapping[str, Any], at: datetime) -> int:
    """Inside the caller's transaction: one `kind` row per operator identity, once per
    `row_key(identity)` (a key already written is skipped). An operator with a shop account
    gets it in their language; the identity is in the params either way (an operator need
    not have an account: `claim` then delivers to that identity, or to the account it has by
    then). Returns how many rows are new."""
    written = 0
    for ident in sorted(set(operators)):
        key = row_key(ident)
        if session.execute(select(Outbox.id).where(Outbox.key == key)).first():
            continue
        user = session.execute(select(User).join(Identity, Identity.user_id == User.id)
                               .where(Identity.identity == ident)).scalar_one_or_none()
        session.add(Outbox(**message_fields(
            key, user.id if user else None, kind, {**params, "identity": ident},
            user.lang if user else None, at)))
        written += 1
    return written


@dataclass(frozen=True)
class Claim:
    """One row this deliverer now owns; `token` is the attempt number it owns."""

    id: int
    token: int
    user_id: int | None
    kind: str
    params: dict[str, Any]
    lang: str
    identities: tuple[str, ...]  # the user's chat identities, most recently seen first


@dataclass(frozen=True)
class Batch:
    claims: list[Claim]
    deferred: int  # due rows left for users that already had a message just now


def claim(db: Database, *, now: datetime, limit: int, busy: Collection[int] = (),
          window: int = CLAIM_WINDOW) -> Batch:
    """Claim up to `limit` due rows, at most one per user and none for users in `busy`.

    Rows are taken in the order they fell due (`next_at`, then `id`: the order they were
    written, for rows due together). On PostgreSQL the scan is `FOR UPDATE SKIP LOCKED`, so
    deliverers in other processes take other rows; SQLite's `BEGIN IMMEDIATE` serialises
    claims. Each claimed row is `claimed` with a new attempt number before this returns."""

    def work(session: Session) -> Batch:
        due = session.execute(
            select(Outbox.id, Outbox.user_id)
            .where(Outbox.status == PENDING, Outbox.next_at <= now)
            .order_by(Outbox.next_at, Outbox.id).limit(window)
            .with_for_update(skip_locked=True)
        ).all()
        chosen: list[int] = []
        users: set[int] = set()
        deferred = 0
        for row_id, user_id in due:
            if user_id is not None and (user_id in busy or user_id in users):
                deferred += 1
                continue
            if len(chosen) < limit:
                chosen.append(row_id)
                if user_id is not None:
                    users.add(user_id)
        if not chosen:
            return Batch([], deferred)
        session.execute(
            update(Outbox).where(Outbox.id.in_(chosen))
            .values(status=CLAIMED, attempts=Outbox.attempts + 1,
                    next_at=now + SENDING_TIMEOUT))
        rows = session.execute(
            select(Outbox.id, Outbox.attempts, Outbox.user_id, Outbox.kind, Outbox.params,
                   Outbox.lang).where(Outbox.id.in_(chosen)).order_by(Outbox.id)).all()
        identities = _identities(session, users)
        claims = []
        for r in rows:
            params, lang = _params(r.params), r.lang
            if r.user_id is not None:
                to = identities.get(r.user_id, ())
            else:
                to, lang = _operator(session, params, lang)
            claims.append(Claim(r.id, r.attempts, r.user_id, r.kind, params, lang, to))
        return Batch(claims, deferred)

    return db.run(work)


def _operator(session: Session, params: Mapping[str, Any],
              lang: str) -> tuple[tuple[str, ...], str]:
    """Where a row with no user goes: one `to_operators` wrote for an operator with no
    account then, whose identity (taken from the configured operators) is in its params. If
    the operator has an account now, its identities and language; else that identity alone
    (Telegram reaches a chat by its id; a sender that cannot ends the row `unreachable`). A
    row that names no identity goes nowhere (`unreachable`)."""
    ident = params.get("identity")
    if not isinstance(ident, str) or not ident.partition(":")[2]:
        return (), lang
    found = session.execute(select(User.id, User.lang).join(Identity, Identity.user_id == User.id)
                            .where(Identity.identity == ident)).first()
    if found is None:
        return (ident,), lang
    return _identities(session, [found.id]).get(found.id, (ident,)), found.lang or lang


def _identities(session: Session, users: Iterable[int]) -> dict[int, tuple[str, ...]]:
    """Each user's identities, most recently seen first: the channel a message goes to."""
    ids = sorted(users)
    if not ids:
        return {}
    seen = func.coalesce(Identity.last_seen_at, Identity.created_at)
    out: dict[int, list[str]] = {}
    for identity, user_id in session.execute(
            select(Identity.identity, Identity.user_id).where(Identity.user_id.in_(ids))
            .order_by(Identity.user_id, seen.desc(), Identity.identity)):
        out.setdefault(user_id, []).append(identity)
    return {k: tuple(v) for k, v in out.items()}


def _changed(db: Database, statement: Executable) -> int:
    """Run one UPDATE in its own transaction; the number of rows it changed."""
    return db.run(lambda s: cast(CursorResult[Any], s.execute(statement)).rowcount)


def _params(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def mark_sending(db: Database, c: Claim) -> bool:
    """Just before the HTTP call: from here on a crash means "maybe sent" (never resent)."""
    return _changed(db, update(Outbox).where(Outbox.id == c.id, Outbox.status == CLAIMED,
                                             Outbox.attempts == c.token)
                    .values(status=SENDING)) == 1


def _finish(db: Database, c: Claim, status: str, now: datetime, error: str | None,
            next_at: datetime | None = None) -> bool:
    """Record an outcome if the row is still ours (claimed or sending under this claim's
    token)."""
    values: dict[str, Any] = {"status": status, "last_error": error[:255] if error else None}
    if status == SENT:
        values["sent_at"] = now
    if next_at is not None:
        values["next_at"] = next_at
    return _changed(db, update(Outbox).where(Outbox.id == c.id,
                                             Outbox.status.in_((CLAIMED, SENDING)),
                                             Outbox.attempts == c.token).values(**values)) == 1


def mark_sent(db: Database, c: Claim, *, now: datetime) -> bool:
    return _finish(db, c, SENT, now, None)


def mark_unreachable(db: Database, c: Claim, *, now: datetime, error: str) -> bool:
    return _finish(db, c, UNREACHABLE, now, error)


def mark_failed(db: Database, c: Claim, *, now: datetime, error: str) -> bool:
    return _finish(db, c, FAILED, now, error)


def backoff(attempt: int) -> timedelta:
    """The wait after failed attempt number `attempt` (1-based)."""
    return BACKOFF[min(max(attempt, 1), len(BACKOFF)) - 1]


def mark_retry(db: Database, c: Claim, *, now: datetime, error: str,
               after: timedelta | None = None) -> str:
    """Back to `pending`, due after `after` (a channel's RetryAfter) or the backoff; `failed`
    once the row has had MAX_ATTEMPTS tries. Returns the status written."""
    if c.token >= MAX_ATTEMPTS:
        _finish(db, c, FAILED, now, f"gave up after {c.token} attempts: {error}")
        return FAILED
    _finish(db, c, PENDING, now, error, next_at=now + (after if after is not None
                                                          else backoff(c.token)))
    return PENDING


def recover_stale(db: Database, *, now: datetime) -> int:
    """Rows of a claim abandoned by a process that died: those never sent go back to
    `pending`; those left `sending` become `interrupted` (never resent). Returns how many
    were interrupted."""
    _changed(db, update(Outbox).where(Outbox.status == CLAIMED, Outbox.next_at <= now)
             .values(status=PENDING, next_at=now - SENDING_TIMEOUT,  # due since its claim
                     last_error="claimed by a deliverer that stopped before sending; requeued"))
    return _changed(db, update(Outbox).where(Outbox.status == SENDING, Outbox.next_at <= now)
                    .values(status=INTERRUPTED,
                            last_error="stopped between sending and recording it; not resent"))


def requeue(db: Database, *, now: datetime,
            statuses: Collection[str] = (INTERRUPTED,)) -> int:
    """An operator's choice: send rows in `statuses` again (an interrupted one may then
    arrive twice). Attempts start over."""
    if not set(statuses) <= {INTERRUPTED, FAILED, UNREACHABLE}:
        raise ValueError(f"only interrupted, failed or unreachable rows can be requeued: "
                         f"{sorted(statuses)}")
    return _changed(db, update(Outbox).where(Outbox.status.in_(list(statuses)))
                    .values(status=PENDING, next_at=now, attempts=0, last_error=None))


def summary(db: Database, *, now: datetime, problems: int = 10) -> dict[str, Any]:
    """Counts by status, the pending queue's age, and the latest rows that went wrong."""

    def work(session: Session) -> dict[str, Any]:
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in session.execute(select(Outbox.status, func.count())
                                         .group_by(Outbox.status)):
            counts[status] = int(n)
        oldest, next_due = session.execute(
            select(func.min(Outbox.created_at), func.min(Outbox.next_at))
            .where(Outbox.status == PENDING)).one()
        due_now = session.execute(select(func.count()).where(
            Outbox.status == PENDING, Outbox.next_at <= now)).scalar_one()
        bad = session.execute(
            select(Outbox.id, Outbox.kind, Outbox.user_id, Outbox.status, Outbox.attempts,
                   Outbox.last_error)
            .where(Outbox.status.in_([FAILED, UNREACHABLE, INTERRUPTED]))
            .order_by(Outbox.id.desc()).limit(problems)).all()
        return {"counts": counts, "due_now": int(due_now),
                "oldest_pending": oldest, "next_due": next_due,
                "problems": [{"id": r.id, "kind": r.kind, "user_id": r.user_id,
                              "status": r.status, "attempts": r.attempts,
                              "error": r.last_error} for r in bad]}

    return db.read(work)
