"""What the adapter remembers in `SeenMessage`: each inbound message's reply (so a retry gets
the same answer and is never processed twice) and the button data behind menu links."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from handlers.base import Database, DatabaseUnavailable
from handlers.stores import seen

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
        return seen.claim(self.db, key, identity, now)

    def remember(self, key: str, value: str, now: datetime) -> None:
        """Store a reply (or a menu link's button data). A failure is logged, not raised:
        the answer still goes out, and money the message moved is keyed by its id anyway."""
        try:
            seen.remember(self.db, key, value, now)
        except DatabaseUnavailable:
            log.warning("wechat: could not store %s", key)

    def recall(self, key: str) -> str | None:
        return seen.recall(self.db, key)

    def prune(self, now: datetime) -> int:
        """Forget WeChat messages and menu links older than `KEEP`."""
        return seen.prune(self.db, "wx:", now - KEEP)
