"""Polling stores each update as Telegram sent it (bot/telegram/request.py `UpdatesRequest`),
not PTB's rendering of the object it parsed, and handles it once."""

from __future__ import annotations

import json

from sqlalchemy import select

from bot.telegram.request import UpdatesRequest
from handlers.base import App
from storage.db import Database
from storage.models import InboxUpdate
from tests.standins.telegram_api import FakeBotAPI, make_text_update
from tests.test_telegram_adapter import Script, settings_for
from tests.test_telegram_inbox import api, drained, sdb, telegram_running  # noqa: F401

UNKNOWN = {"a_field_ptb_does_not_know": {"x": [1, 2]}}  # Telegram adds fields over time


async def test_a_polled_update_is_stored_as_received_and_handled_once(
        api: FakeBotAPI, sdb: Database) -> None:  # noqa: F811
    db = sdb
    sent = api.push_update({**make_text_update(70, "/me ünïcode", update_id=5, message_id=9),
                            **UNKNOWN})
    script = Script()
    async with telegram_running(settings_for(api), App(db=db, operators=frozenset()),
                                poll_timeout=1, conversations=script.conversations()) as app:
        assert isinstance(app.bot_data["updates_request"], UpdatesRequest)
        assert await drained(db, 1) == {5: "done"}
    body = db.read(lambda s: s.execute(select(InboxUpdate.body).where(
        InboxUpdate.update_id == 5)).scalar_one())
    assert json.loads(body) == sent  # every field, the unknown one too
    assert [(r.identity, r.text) for r in script.requests] == [("tg:70", "/me ünïcode")]


def test_take_gives_the_last_answer_once() -> None:
    request = UpdatesRequest(connection_pool_size=1)
    answer = {"ok": True, "result": [{"update_id": 3, "message": {}}, {"update_id": 4}]}
    assert request.parse_json_payload(json.dumps(answer).encode()) == answer
    assert request.take() == {3: {"update_id": 3, "message": {}}, 4: {"update_id": 4}}
    assert request.take() == {}
    request.parse_json_payload(b'{"ok": true, "result": true}')  # not a list of updates
    assert request.take() == {}
