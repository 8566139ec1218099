"""What the adapter remembers in `SeenMessage`: each inbound message's reply (so a retry gets
the same answer and is never processed twice) and the button data behind menu links."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from handlers.base import Database, DatabaseUnavailable
from storage.models import Identity, SeenMessage

log = logging.getLogger(__name__)

# WeChat retries within 15 s; menu links stay usable this long. It must also outlive every
# moment a replayed request could still be fresh (bot/wechat/replay.py, `check_no_gap`).
KEEP = timedelta(days=3)


class Seen:
    def __init__(self, db: Database) -> None:
        self.db = db

    def claim(self, key: str, identity: str, now: datetime) -> tuple[bool, str | None]:
        """(seen before?, its stored reply). Claims `key` for this delivery and marks the
        user active (the 48-hour customer-service window counts from here). A reply of None
        means another delivery is still answering it; "" that it was answered otherwise."""
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
            return self.db.run(work)
        except IntegrityError:
            return True, None  # the same message, claimed a moment ago by a retry

    def remember(self, key: str, value: str, now: datetime) -> None:
        """Store a reply (or a menu link's button data). A failure is logged, not raised:
        the answer still goes out, and money the message moved is keyed by its id anyway."""
        def work(s: Session) -> None:
            row = s.get(SeenMessage, key)
            if row is None:
                s.add(SeenMessage(key=key, reply=value, created_at=now))
            else:
                row.reply = value

        try:
            self.db.run(work)
        except DatabaseUnavailable:
            log.warning("wechat: could not store %s", key)

    def recall(self, key: str) -> str | None:
        return self.db.read(lambda s: s.execute(select(SeenMessage.reply).where(
            SeenMessage.key == key)).scalar_one_or_none())

    def prune(self, now: datetime) -> int:
        """Forget WeChat messages and menu links older than `KEEP`."""
        def work(s: Session) -> int:
            result = s.execute(delete(SeenMessage).where(SeenMessage.created_at < now - KEEP,
                                                         SeenMessage.key.like("wx:%")))
            return int(getattr(result, "rowcount", 0) or 0)

        return self.db.run(work)
