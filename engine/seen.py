"""Keyed one-time records of a channel adapter (`SeenMessage`): WeChat's message dedupe and
menu links (bot/wechat/seen.py, keys `wx:…`) and its signed-query nonces when Redis is not
there (bot/wechat/replay.py, keys `wxn:…`). Not the shop's rules, the adapter's memory; it
lives here so that the adapter never touches `storage`.

Each `work` is a pure function of its session, because `Database.run` may call it again when
a transaction is retried.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Identity, SeenMessage


def claim(db: Database, key: str, identity: str, now: datetime) -> tuple[bool, str | None]:
    """(seen before?, its stored reply). Claims `key` (reply None: being answered) and marks
    `identity` active at `now`, in one transaction. A key claimed a moment ago by another
    delivery reads as (True, None)."""
    def work(s: Session) -> tuple[bool, str | None]:
        row = s.get(SeenMessage, key)
        if row is not None:
            return True, row.reply
        s.add(SeenMessage(key=key, reply=None, created_at=now))
        s.execute(update(Identity).where(Identity.identity == identity)
                  .values(last_seen_at=now))
        s.flush()
        return False, None

    try:
        return db.run(work)
    except IntegrityError:
        return True, None


def claim_for(db: Database, key: str, value: str, now: datetime) -> bool:
    """True when `key` is new (now stored with `value`) or was stored with this very
    `value` before; False when it holds another value."""
    def work(s: Session) -> None:
        s.add(SeenMessage(key=key, reply=value, created_at=now))
        s.flush()

    try:
        db.run(work)
        return True
    except IntegrityError:
        return recall(db, key) == value


def remember(db: Database, key: str, value: str, now: datetime) -> None:
    """Store `value` under `key`, replacing what was there (its first time is kept)."""
    def work(s: Session) -> None:
        row = s.get(SeenMessage, key)
        if row is None:
            s.add(SeenMessage(key=key, reply=value, created_at=now))
        else:
            row.reply = value

    db.run(work)


def recall(db: Database, key: str) -> str | None:
    return db.read(lambda s: s.execute(select(SeenMessage.reply).where(
        SeenMessage.key == key)).scalar_one_or_none())


def prune(db: Database, prefix: str, before: datetime) -> int:
    """Forget the records whose key starts with `prefix` made before `before`; how many."""
    def work(s: Session) -> int:
        result = s.execute(delete(SeenMessage).where(SeenMessage.created_at < before,
                                                     SeenMessage.key.like(prefix + "%")))
        return int(getattr(result, "rowcount", 0) or 0)

    return db.run(work)
