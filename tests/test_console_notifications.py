"""The console is a channel too: every user's notifications are printed into the chat,
marked with whom they are for (issue 14: after `:as tg:2` that user's never showed)."""

from __future__ import annotations

import io

import pytest

from bot.console import ConsoleSender, console_senders
from bot.senders import ANY_CHANNEL
from scheduler import Deliverer, build_scheduler
from storage.db import Database
from tests.test_outbox_delivery import owe, statuses, user


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    """These tests run on SQLite only (the conftest `db` runs on both)."""
    return sqlite_db


async def test_console_users_get_their_notifications_printed(db: Database) -> None:
    owe(db, user(db, "console:alice"), "your entry 7 was paid 100.00")
    out = io.StringIO()
    stats = await Deliverer(db, {"console": ConsoleSender(out)}).drain()
    assert stats["sent"] == 1
    assert "[to console:alice] your entry 7 was paid 100.00" in out.getvalue()
    assert statuses(db) == {"t:your entry 7 was paid 100.00": "sent"}


async def test_every_users_notifications_show_in_the_console_marked_with_the_recipient(
        db: Database) -> None:
    """Telegram and WeChat users made with `:as tg:2` / `:as wx:…` have no Telegram or
    WeChat here: the console prints theirs too, instead of leaving them pending with
    "no sender here for tg"."""
    owe(db, user(db, "tg:2"), "to a telegram user")
    owe(db, user(db, "wx:oABC"), "to a wechat user")
    owe(db, user(db, "console:bob"), "to a console user")
    out = io.StringIO()
    stats = await Deliverer(db, console_senders(out)).drain()
    assert stats["sent"] == 3
    printed = out.getvalue()
    for line in ("🔔 [to tg:2] to a telegram user", "🔔 [to wx:oABC] to a wechat user",
                 "🔔 [to console:bob] to a console user"):
        assert line in printed, printed
    assert set(statuses(db).values()) == {"sent"}


async def test_a_sender_for_every_channel_leaves_the_named_channels_to_their_own(
        db: Database) -> None:
    class Named:
        channel = "tg"

        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send(self, identity: str, text: str) -> None:
            self.sent.append(identity)

    tg = Named()
    owe(db, user(db, "tg:5"), "for telegram")
    owe(db, user(db, "wx:oXYZ"), "for anyone else")
    out = io.StringIO()
    await Deliverer(db, {"tg": tg, ANY_CHANNEL: ConsoleSender(out)}).drain()
    assert tg.sent == ["tg:5"]
    assert "[to wx:oXYZ] for anyone else" in out.getvalue() and "tg:5" not in out.getvalue()


async def test_the_console_processes_scheduler_delivers_to_every_channel(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make run` without tokens builds its scheduler with `console_senders`
    (bot/app.py `_console_scheduler`)."""
    from bot import app as app_module
    from bot.settings import Settings

    settings = Settings(_env_file=None, REDIS_URL=None)  # type: ignore[call-arg]
    built: list[dict[str, object]] = []

    def spy(settings: object, db: Database, senders: dict[str, object], *a: object,
            **k: object) -> object:
        built.append(dict(senders))
        return build_scheduler(settings, db, senders, *a, **k)  # type: ignore[arg-type]

    import scheduler

    monkeypatch.setattr(scheduler, "build_scheduler", spy)
    sched = app_module._console_scheduler(settings, db)
    await sched.stop()
    [senders] = built
    assert isinstance(senders.get(ANY_CHANNEL), ConsoleSender)
