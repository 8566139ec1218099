"""When the inbox processor looks at the inbox again (bot/telegram/inbox.py): not after every
row it finishes, but whenever a finished row can make others takeable — rows left unread
because 10 × BATCH were in hand, and a user held back after a failure. Each test sets the
processor's idle look (IDLE) to a minute, so a row that only that look would find fails it."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

import bot.telegram.inbox as processor
from handlers.base import App, Reply, Request
from storage.db import Database
from tests.standins.telegram_api import FakeBotAPI, make_text_update
from tests.test_telegram_adapter import Script, settings_for
from tests.test_telegram_inbox import (
    api,
    blink_while_marking,
    drained,
    sdb,
    stored,
    telegram_running,
)

__all__ = ["api", "sdb"]  # the fixtures, shared with tests/test_telegram_inbox.py

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")


async def test_rows_beyond_those_in_hand_are_taken_as_the_first_ones_finish(
        api: FakeBotAPI, sdb: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processor, "IDLE", 60.0)
    # (a smaller batch: the bot as shipped sends 30 answers a second)
    monkeypatch.setattr(processor, "BATCH", 5)
    many = 10 * 5 + 12  # 12 rows more than the processor holds at once
    stored(sdb, [make_text_update(1_000 + n, "/me", update_id=n, message_id=n)
                 for n in range(1, many + 1)])
    script = Script()
    gate = asyncio.Event()

    async def held_until_the_gate(app: App, request: Request) -> Reply:
        await gate.wait()
        return await script.dispatch(app, request)

    conversations = dataclasses.replace(script.conversations(), dispatch=held_until_the_gate)
    async with telegram_running(settings_for(api), App(db=sdb, operators=frozenset()),
                                poll_timeout=1, conversations=conversations) as application:
        taken = application.bot_data["inbox"]

        async def in_hand() -> None:  # the processor holds all it may, and looks no more
            while len(taken._in_flight) < 10 * processor.BATCH:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(in_hand(), 10.0)
        await asyncio.sleep(0.2)
        assert len(taken._in_flight) == 10 * processor.BATCH
        gate.set()
        done = await drained(sdb, many, timeout=20.0)
    assert set(done.values()) == {"done"} and len(done) == many
    assert len(script.requests) == many  # each row handled once


async def test_a_held_user_is_tried_again_after_its_backoff_not_the_idle_look(
        api: FakeBotAPI, sdb: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processor, "IDLE", 60.0)
    failed = blink_while_marking(monkeypatch, 1)
    stored(sdb, [make_text_update(90, "/me one", update_id=1, message_id=1),
                 make_text_update(90, "/me two", update_id=2, message_id=2)])
    script = Script()
    async with telegram_running(settings_for(api), App(db=sdb, operators=frozenset()),
                                poll_timeout=1, conversations=script.conversations()):
        assert await drained(sdb, 2, timeout=20.0) == {1: "done", 2: "done"}
    assert [r.text for r in script.requests] == ["/me one", "/me one", "/me two"]
    assert failed == [1]
