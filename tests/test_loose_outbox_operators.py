"""Notifications owed to an operator who has no shop account (never wrote to the bot): the
outbox row names the operator's chat identity, and the deliverer sends it there; a row that
cannot be delivered ends as `unreachable` or `failed`, never pending for ever
(engine/outbox.py, docs/scheduler.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from telegram import Bot

from bot.senders import TelegramSender
from engine import outbox, support, users
from handlers.notify import buttons, render
from scheduler import Deliverer
from storage.db import Database
from storage.models import Outbox
from tests.standins.telegram_api import FakeBotAPI

TOKEN = "123:ABC"
OPERATOR = "tg:900"  # configured (STOREFRONT_OPERATORS), never talked to the bot


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    return sqlite_db


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI() as stand_in:
        yield stand_in


def now() -> datetime:
    return datetime.now(UTC)


def rows(db: Database) -> list[Any]:
    return list(db.read(lambda s: s.execute(select(Outbox).order_by(Outbox.id)).scalars()
                        .all()))


async def drain(db: Database, api: FakeBotAPI, **senders: Any) -> Any:
    async with Bot(TOKEN, base_url=api.base_url) as bot:
        return await Deliverer(db, {"tg": TelegramSender(bot), **senders},
                               renderer=render, buttons=buttons).drain()


def buyer_writes(db: Database, text: str, operators: tuple[str, ...] = (OPERATOR,)) -> None:
    buyer = users.resolve(db, "tg:5", lang="en", display_name="Bob")
    support.write(db, user_id=int(buyer["user_id"]), identity="tg:5", text=text,
                  key=f"sup:{text}", operators=operators)


async def test_an_operator_without_an_account_is_sent_the_notification(db, api):
    buyer_writes(db, "Where is my tea?")
    (row,) = rows(db)
    assert row.user_id is None and json.loads(row.params)["identity"] == OPERATOR
    stats = await drain(db, api)
    assert stats["sent"] == 1
    (sent,) = [c for c in api.calls_of("sendMessage") if c.ok]
    assert str(sent.params["chat_id"]) == "900"
    assert "Where is my tea?" in sent.params["text"]
    assert "reply_markup" in sent.params  # the operator's reply and close buttons
    assert [r.status for r in rows(db)] == [outbox.SENT]


async def test_an_operator_who_joined_after_the_row_gets_it_in_their_language(db, api):
    buyer_writes(db, "Is the sofa in stock?")
    users.resolve(db, OPERATOR, lang="en")  # the operator writes to the bot afterwards
    await drain(db, api)
    (sent,) = [c for c in api.calls_of("sendMessage") if c.ok]
    assert str(sent.params["chat_id"]) == "900"
    assert sent.params["text"].startswith(render("support_message", {
        "thread": 1, "buyer": "Bob", "text": "Is the sofa in stock?"}, "en")[:20])


async def test_an_operator_row_nobody_can_deliver_ends_and_does_not_stay_pending(db, api):
    # an operator on a channel no sender here serves: retried with backoff, then failed
    buyer_writes(db, "Hello?", operators=("wx:oNoSenderHere_00000000001",))
    at = now()
    for _ in range(outbox.MAX_ATTEMPTS):
        batch = outbox.claim(db, now=at, limit=10)
        if not batch.claims:
            break
        (c,) = batch.claims
        assert c.identities == ("wx:oNoSenderHere_00000000001",)
        outbox.mark_retry(db, c, now=at, error="no sender here for wx")
        at += timedelta(days=1)
    assert [r.status for r in rows(db)] == [outbox.FAILED]
    # one whose chat Telegram refuses (the operator never started the bot, or blocked it):
    # unreachable at once
    db.run(lambda s: s.query(Outbox).delete())
    api.block_chat(900)
    buyer_writes(db, "Hello again?")
    stats = await drain(db, api)
    assert stats["unreachable"] == 1
    assert [r.status for r in rows(db)] == [outbox.UNREACHABLE]
