"""Who is talking (SPEC §1, §5): resolve a chat identity to its user (creating the user at
first contact, with the referrer fixed from a valid invite code, SPEC §5), invite codes, the
stored language and operator broadcasts.

What the chat shows them (the account, statement, orders, look-ups) is engine/views.py; its
functions are named here too, where the handlers have always found them.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage import queries
from storage.db import Database
from storage.driver import Driver
from storage.models import Identity, User

from . import accounts, pending, views
from .book import Book
from .errors import Refusal
from .times import now
from .views import (
    account,
    current_price,
    exit_view,
    identity_on,
    invitees,
    lang_of,
    last_seen,
    lookup,
    order_method,
    orders,
    statement,
    store_config,
    withdrawals,
)

INVITE_CODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
IDENTITY = re.compile(r"^[A-Za-z]{1,16}:[^\s]{1,79}$")
LANGS = ("zh", "en")
SEEN_EVERY = timedelta(hours=1)


def normalise_lang(value: str | None, default: str = "en") -> str:
    """`zh`, `zh-hans`, `zh_TW` → `zh`; any other language → `en`; none → `default`."""
    if not value:
        return default
    return "zh" if value.strip().lower().startswith("zh") else "en"


def _member(user: User, new: bool) -> dict[str, Any]:
    return {"user_id": user.id, "handle": user.handle, "lang": user.lang, "new": new,
            "referrer_id": user.referrer_id, "blocked": bool(user.blocked),
            "display_name": user.display_name}


def _new_invite_code(session: Session) -> str:
    # 12 URL-safe characters = 72 random bits: unguessable, and short enough for a deep link.
    while True:
        code = secrets.token_urlsafe(9)
        if session.execute(select(User.id).where(User.invite_code == code)).first() is None:
            return code


def resolve(db: Database, identity: str, *, lang: str | None = None,
            display_name: str | None = None, start_payload: str | None = None,
            at: datetime | None = None) -> dict[str, Any]:
    """The user behind `identity`; at first contact the user is created (handle = identity)
    and the referrer is fixed from `start_payload` when it is another user's invite code.
    A malformed, unknown or own payload is ignored (SPEC §5). Returns `new` = True once."""
    _check_identity(identity)

    def known(session: Session) -> dict[str, Any] | None:
        return _known(session, identity)

    when = at or now()
    found = db.read(known)
    if found is not None:
        _touch(db, identity, found.pop("last_seen_at"), when)
        return found
    name = display_name[:128] if display_name else None

    def create(session: Session) -> dict[str, Any]:
        book = Book(session)  # the head lock serialises two first messages of one identity
        if (again := known(session)) is not None:
            again.pop("last_seen_at")
            return again
        user = session.execute(select(User).where(User.handle == identity)
                               .with_for_update()).scalar_one_or_none()
        new = user is None
        if user is None:
            referrer = None
            if isinstance(start_payload, str) and INVITE_CODE.match(start_payload):
                referrer = session.execute(select(User.handle).where(
                    User.invite_code == start_payload)).scalar_one_or_none()
            user = accounts.join(book, user=identity, referrer=referrer, at=when,
                                 lang=lang, display_name=name)
        if user.invite_code is None:
            user.invite_code = _new_invite_code(session)
        if user.lang is None and lang is not None:
            user.lang = lang
        session.add(Identity(identity=identity, user_id=user.id, created_at=when,
                             last_seen_at=when))
        session.flush()
        return _member(user, new)

    return db.run(create)


def _check_identity(identity: str) -> None:
    if not isinstance(identity, str) or not IDENTITY.match(identity):
        raise Refusal("invalid_event", "bad identity")


def _touch(db: Database, identity: str, seen: datetime | None, when: datetime) -> None:
    """Which identity a user was last seen on routes their notifications (engine.outbox);
    `last_seen_at` is refreshed at most hourly, not on every message."""
    if seen is None or when - seen > SEEN_EVERY:
        db.run(lambda s: s.execute(update(Identity).where(Identity.identity == identity)
                                   .values(last_seen_at=when)))


def resolve_and_account(db: Database, identity: str, *, lang: str | None = None,
                        display_name: str | None = None, start_payload: str | None = None,
                        at: datetime | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """`resolve(...)` and then `account(handle)`, the same two dicts, for a chat's `/me`:
    a known identity is read with its account in one read snapshot (one session, four
    SELECTs) instead of two. At first contact it is exactly `resolve`, then `account`."""
    _check_identity(identity)
    when = at or now()
    found = db.read(lambda session: _known_with_account(session, identity))
    if found is None:
        member = resolve(db, identity, lang=lang, display_name=display_name,
                         start_payload=start_payload, at=when)
        return member, account(db, member["handle"])
    member, seen, view = found
    _touch(db, identity, seen, when)
    return member, view


def admit(db: Database, identity: str, *, with_account: bool, plain: bool,
          lang: str | None = None, display_name: str | None = None,
          start_payload: str | None = None, at: datetime | None = None
          ) -> tuple[dict[str, Any], dict[str, Any] | None, pending.Waiting | None]:
    """What a chat request needs before its conversation: the member (`resolve`), their
    account when the command shows one (`resolve_and_account`), and what their plain
    message was awaited for (`pending.take`) — a known member in one read."""
    _check_identity(identity)
    when = at or now()

    def work(session: Session) -> tuple[Any, pending.Seen | None]:
        found = (_known_with_account(session, identity) if with_account
                 else _known(session, identity))
        return found, pending.look(session, identity)

    found, seen = db.read(work)
    waiting = pending.taken(db, identity, seen, plain=plain, at=when)
    if found is None:  # first contact: created as `resolve` creates it
        member = resolve(db, identity, lang=lang, display_name=display_name,
                         start_payload=start_payload, at=when)
        return member, account(db, member["handle"]) if with_account else None, waiting
    if with_account:
        member, last_seen, view = found
        _touch(db, identity, last_seen, when)
        return member, view, waiting
    _touch(db, identity, found.pop("last_seen_at"), when)
    return found, None, waiting


def _known(session: Session, identity: str) -> dict[str, Any] | None:
    """The member behind a known identity, with when it was last seen."""
    row = session.execute(
        select(User, Identity.last_seen_at).join(Identity, Identity.user_id == User.id)
        .where(Identity.identity == identity)).first()
    if row is None:
        return None
    return {**_member(row[0], False), "last_seen_at": row[1]}


def _known_with_account(session: Session, identity: str
                        ) -> tuple[dict[str, Any], datetime | None, dict[str, Any]] | None:
    """A known identity's member, when it was last seen and its account, in one snapshot."""
    driver = Driver(session)
    found = queries.holder_by_identity(driver, identity)
    if found is None:
        return None
    *columns, seen = found
    row = views.Holder(*columns)
    member = {"user_id": row.id, "handle": row.handle, "lang": row.lang, "new": False,
              "referrer_id": row.referrer_id, "blocked": bool(row.blocked),
              "display_name": row.display_name}
    last_seen_at = driver.read(views.IDENTITIES, ("last_seen_at",), [(seen,)])[0][0]
    return member, last_seen_at, views.account_view(driver, row)


def set_lang(db: Database, user_id: int, lang: str) -> str:
    if lang not in LANGS:
        raise Refusal("invalid_event", "language is zh or en")

    def work(session: Session) -> str:
        user = session.execute(select(User).where(User.id == user_id)
                               .with_for_update()).scalar_one()
        user.lang = lang
        return lang

    return db.run(work)


def invite_code(db: Database, user_id: int) -> str:
    """The user's invite code, made now for users created outside the chat (replay, CLI)."""
    def work(session: Session) -> str:
        user = session.execute(select(User).where(User.id == user_id)
                               .with_for_update()).scalar_one()
        if user.invite_code is None:
            user.invite_code = _new_invite_code(session)
        return user.invite_code

    current = db.read(lambda s: s.execute(
        select(User.invite_code).where(User.id == user_id)).scalar_one())
    return current or db.run(work)


def find_handle(db: Database, query: str) -> str | None:
    """A user named by handle, chat identity, invite code or `#<id>`; None when unknown."""
    def work(session: Session) -> str | None:
        user = views.find_user(session, query)
        return user.handle if user is not None else None

    return db.read(work)


# -- broadcast ------------------------------------------------------------------------------

def broadcast(db: Database, *, text: str, actor: str, key: str,
              at: datetime | None = None) -> dict[str, Any]:
    """One outbox row (kind `broadcast`) per user who is not blocked, journaled with who sent
    it; the same `key` never broadcasts twice."""
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        book = Book(session)
        if (done := book.already(key)) is not None:
            return done
        users = session.execute(select(User.id, User.lang).where(User.blocked.is_(False))
                                .order_by(User.id)).all()
        n = book.head.last_txn + 1
        for uid, lang in users:  # written at commit in one statement, however many there are
            book.owe(f"broadcast:{n}:{uid}", uid, "broadcast", {"text": text}, lang, when)
        result = {"broadcast": n, "recipients": len(users)}
        book.record(key=key, kind="broadcast", at=when, actor=actor,
                    body={"text": text, "recipients": len(users)}, result=result)
        return result

    return db.run(work)


__all__ = ["IDENTITY", "INVITE_CODE", "LANGS", "account", "broadcast", "current_price",
           "exit_view", "find_handle", "identity_on", "invite_code", "invitees", "lang_of",
           "last_seen", "lookup",
           "normalise_lang", "order_method", "orders", "resolve", "resolve_and_account",
           "set_lang", "statement", "store_config", "withdrawals"]
