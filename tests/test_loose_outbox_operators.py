"""Notifications owed to an operator who has no shop account (never wrote to the bot): the
outbox row names the operator's chat identity, and the deliverer sends it there; a row that
cannot be delivered ends as `unreachable` or `failed`, never pending for ever
(engine/outbox.py, docs/scheduler.md)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from engine import outbox, support, users
from handlers.notify import buttons, render
from storage.db import Database
from storage.models import Outbox
from tests.outbox_kit import (
    drain,
    now,
    sqlite_only_db,  # noqa: F401 - the `db` fixture
    stand_in_api,  # noqa: F401 - the `api` fixture
)
from tests.standins.telegram_api import FakeBotAPI

OPERATOR = "tg:900"  # configured (STOREFRONT_OPERATORS), never talked to the bot


def rows(db: Database) -> list[Any]:
    return list(db.read(lambda s: s.execute(select(Outbox).order_by(Outbox.id)).scalars()
                        .all()))


async def deliver(db: Database, api: FakeBotAPI) -> Any:
    """One drain with the chat's own texts and buttons (operators get reply buttons)."""
    return await drain(db, api, renderer=render, buttons=buttons)


def buyer_writes(db: Database, text: str, operators: tuple[str, ...] = (OPERATOR,)) -> None:
    buyer = users.resolve(db, "tg:5", lang="en", display_name="Bob")
    support.write(db, user_id=int(buyer["user_id"]), identity="tg:5", text=text,
                  key=f"sup:{text}", operators=operators)


async def test_an_operator_without_an_account_is_sent_the_notification(db, api):
    buyer_writes(db, "Where is my tea?")
    (row,) = rows(db)
    assert row.user_id is None and json.loads(row.params)["identity"] == OPERATOR
    stats = await deliver(db, api)
    assert stats["sent"] == 1
    (sent,) = [c for c in api.calls_of("sendMessage") if c.ok]
    assert str(sent.params["chat_id"]) == "900"
    assert "Where is my tea?" in sent.params["text"]
    assert "reply_markup" in sent.params  # the operator's reply and close buttons
    assert [r.status for r in rows(db)] == [outbox.SENT]


async def test_an_operator_who_joined_after_the_row_gets_it_in_their_language(db, api):
    buyer_writes(db, "Is the sofa in stock?")
    users.resolve(db, OPERATOR, lang="en")  # the operator writes to the bot afterwards
    await deliver(db, api)
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
    stats = await deliver(db, api)
    assert stats["unreachable"] == 1
    assert [r.status for r in rows(db)] == [outbox.UNREACHABLE]
