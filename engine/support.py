"""Support threads (`/support`, 客服): a buyer writes, every operator is told, an operator's
answer reaches the buyer on their own channel; the thread is kept (docs/support.md).

No money moves here, so no journal and no head lock: a message and the notices it owes are
written in one transaction (the outbox delivers them), keyed by the chat message that
carried it, so a redelivered message is one message.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Outbox, SupportMessage, SupportThread, User

from . import outbox
from .errors import Refusal
from .times import now

OPEN, CLOSED = "open", "closed"
BUYER, OPERATOR = "buyer", "operator"
MAX_TEXT = 2000
RECENT = 10
# outbox kinds (handlers/notify.py renders them)
TO_OPERATORS = "support_message"
TO_BUYER = "support_answer"
CLOSED_NOTICE = "support_closed"


def _message(m: SupportMessage) -> dict[str, Any]:
    return {"id": m.id, "author": m.author, "identity": m.identity, "text": m.text, "at": m.at}


def _thread(session: Session, t: SupportThread, limit: int) -> dict[str, Any]:
    msgs = session.execute(select(SupportMessage).where(SupportMessage.thread_id == t.id)
                           .order_by(SupportMessage.id.desc()).limit(limit)).scalars().all()
    user = session.get(User, t.user_id)
    return {"thread": t.id, "status": t.status, "user_id": t.user_id,
            "buyer": (user.display_name or user.handle) if user else "-",
            "created_at": t.created_at, "updated_at": t.updated_at,
            "messages": [_message(m) for m in reversed(msgs)]}


def _replayed(session: Session, key: str) -> dict[str, Any] | None:
    found = session.execute(select(SupportMessage).where(SupportMessage.key == key)).scalar_one_or_none()
    if found is None:
        return None
    return {"thread": found.thread_id, "message": found.id, "replayed": True}


def _clip(text: str) -> str:
    text = text.strip()
    if not text:
        raise Refusal("invalid_event", "empty message")
    return text[:MAX_TEXT]


def write(db: Database, *, user_id: int, identity: str, text: str, key: str,
          operators: Iterable[str], at: datetime | None = None) -> dict[str, Any]:
    """The buyer's message: added to their open thread (a new one when none is open), and
    every operator owed a `support_message` notice in the same transaction."""
    body, when, targets = _clip(text), at or now(), sorted(set(operators))

    def work(session: Session) -> dict[str, Any]:
        if (done := _replayed(session, key)) is not None:
            return done
        # the buyer's row locked: two messages at once land in one thread
        user = session.execute(select(User).where(User.id == user_id)
                               .with_for_update()).scalar_one()
        thread = session.execute(
            select(SupportThread).where(SupportThread.user_id == user_id,
                                        SupportThread.status == OPEN)
            .order_by(SupportThread.id.desc()).limit(1)).scalar_one_or_none()
        new = thread is None
        if thread is None:
            thread = SupportThread(user_id=user_id, status=OPEN, created_at=when,
                                   updated_at=when)
            session.add(thread)
            session.flush()  # its id, for the message
        thread.updated_at = when
        msg = SupportMessage(thread_id=thread.id, key=key, author=BUYER, identity=identity,
                             text=body, at=when)
        session.add(msg)
        session.flush()
        told = outbox.to_operators(
            session, targets, row_key=lambda ident: f"support:{msg.id}:{ident}",
            kind=TO_OPERATORS, at=when,
            params={"thread": thread.id, "buyer": user.display_name or user.handle,
                    "from": identity, "text": body})
        return {"thread": thread.id, "message": msg.id, "new_thread": new, "operators": told}

    return db.run(work)


def answer(db: Database, *, thread: int, operator: str, text: str, key: str,
           at: datetime | None = None) -> dict[str, Any]:
    """An operator's answer, owed to the buyer (their most recently used channel) in the
    same transaction. A closed thread opens again: the conversation goes on."""
    body, when = _clip(text), at or now()

    def work(session: Session) -> dict[str, Any]:
        if (done := _replayed(session, key)) is not None:
            return done
        t = session.execute(select(SupportThread).where(SupportThread.id == thread)
                            .with_for_update()).scalar_one_or_none()
        if t is None:
            raise Refusal("unknown_thread", str(thread))
        t.status, t.updated_at, t.closed_at, t.closed_by = OPEN, when, None, None
        msg = SupportMessage(thread_id=t.id, key=key, author=OPERATOR, identity=operator,
                             text=body, at=when)
        session.add(msg)
        session.flush()
        user = session.get(User, t.user_id)
        session.add(Outbox(**outbox.message_fields(
            f"support:answer:{msg.id}", t.user_id, TO_BUYER, {"thread": t.id, "text": body},
            user.lang if user else None, when)))
        return {"thread": t.id, "message": msg.id, "user_id": t.user_id}

    return db.run(work)


def close(db: Database, *, thread: int, operator: str,
          at: datetime | None = None) -> dict[str, Any]:
    """An operator closes a thread; the buyer is told once. Closing a closed thread changes
    nothing (`closed` False)."""
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        t = session.execute(select(SupportThread).where(SupportThread.id == thread)
                            .with_for_update()).scalar_one_or_none()
        if t is None:
            raise Refusal("unknown_thread", str(thread))
        if t.status == CLOSED:
            return {"thread": t.id, "closed": False}
        t.status, t.closed_at, t.closed_by, t.updated_at = CLOSED, when, operator, when
        user = session.get(User, t.user_id)
        key = f"support:closed:{t.id}:{when.isoformat()}"
        session.add(Outbox(**outbox.message_fields(
            key, t.user_id, CLOSED_NOTICE, {"thread": t.id}, user.lang if user else None, when)))
        return {"thread": t.id, "closed": True}

    return db.run(work)


def latest_of(db: Database, *, user_id: int, limit: int = RECENT) -> dict[str, Any] | None:
    """The buyer's latest thread with its last `limit` messages, or None."""

    def work(session: Session) -> dict[str, Any] | None:
        t = session.execute(select(SupportThread).where(SupportThread.user_id == user_id)
                            .order_by(SupportThread.id.desc()).limit(1)).scalar_one_or_none()
        return _thread(session, t, limit) if t else None

    return db.read(work)


def view(db: Database, *, thread: int, limit: int = RECENT) -> dict[str, Any]:
    """One thread for an operator (`unknown_thread`)."""

    def work(session: Session) -> dict[str, Any]:
        t = session.get(SupportThread, thread)
        if t is None:
            raise Refusal("unknown_thread", str(thread))
        return _thread(session, t, limit)

    return db.read(work)


def open_threads(db: Database, *, limit: int = 20) -> dict[str, Any]:
    """Open threads, the longest waiting first, each with its last message; and how many
    are open in all."""

    def work(session: Session) -> dict[str, Any]:
        count = session.execute(select(func.count()).select_from(SupportThread)
                                .where(SupportThread.status == OPEN)).scalar_one()
        threads = session.execute(select(SupportThread).where(SupportThread.status == OPEN)
                                  .order_by(SupportThread.updated_at, SupportThread.id)
                                  .limit(limit)).scalars().all()
        return {"open": int(count), "threads": [_thread(session, t, 1) for t in threads]}

    return db.read(work)
