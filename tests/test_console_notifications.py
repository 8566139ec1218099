"""The console is a channel too: its users' notifications are printed into the chat."""

from __future__ import annotations

import io

from bot.console import ConsoleSender
from scheduler import Deliverer
from storage.db import Database
from storage.migrate import migrate
from tests.test_outbox_delivery import owe, statuses, user


async def test_console_users_get_their_notifications_printed(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    migrate(db)
    try:
        owe(db, user(db, "console:alice"), "your entry 7 was paid 100.00")
        out = io.StringIO()
        stats = await Deliverer(db, {"console": ConsoleSender(out)}).drain()
        assert stats["sent"] == 1
        assert "[console:alice] your entry 7 was paid 100.00" in out.getvalue()
        assert statuses(db) == {"t:your entry 7 was paid 100.00": "sent"}
    finally:
        db.dispose()
