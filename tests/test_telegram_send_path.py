"""The text replies' send path (bot/telegram/output.py `post_text`, `markup_of`): the same
bytes on the wire as PTB's typed `send_message` with its `InlineKeyboardMarkup`, the same
errors, Telegram's answer not parsed into a `Message`; and the inbox's batch of done marks
and the account view's rules as they were (engine/inbox.py, engine/views.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, WebAppInfo
from telegram.error import BadRequest, Forbidden
from telegram.request._requestparameter import RequestParameter  # how PTB's Bot builds them

from bot.telegram.application import bot_request
from bot.telegram.output import ChatOutput, keyboard, markup_of, post_text
from engine import inbox, service, users
from handlers.base import Button, Reply
from storage.db import Database
from storage.models import InboxUpdate
from tests.standins.telegram_api import FakeBotAPI

TOKEN = "4242:SEND-PATH-TOKEN"
ROWS = ((Button("买 TEA ×2", "buy:v1:TEA:2"), Button("Site", url="https://example.com/a?b=1")),
        (Button("App", url="https://example.com/app", web_app=True),),
        (Button("too long", "x" * 65), Button("no label", "cmd:v1:me")))


def test_markup_of_is_the_json_ptb_sends_for_the_same_keyboard() -> None:
    ptb = InlineKeyboardMarkup([
        [InlineKeyboardButton("买 TEA ×2", callback_data="buy:v1:TEA:2"),
         InlineKeyboardButton("Site", url="https://example.com/a?b=1")],
        [InlineKeyboardButton("App", web_app=WebAppInfo("https://example.com/app"))],
        [InlineKeyboardButton("no label", callback_data="cmd:v1:me")]])
    rows = ROWS[:2] + ((Button("too long", "x" * 65), Button("no label", "cmd:v1:me")),)
    ours = markup_of(rows)
    assert ours is not None
    # the malformed button is dropped; what is left serialises to PTB's very string
    assert RequestParameter.from_input("reply_markup", ours).json_value == \
        RequestParameter.from_input("reply_markup", ptb).json_value
    assert keyboard(rows) == ptb
    assert markup_of(((Button("x" * 3, "y" * 65),),)) is None and markup_of(()) is None


class Recorder:
    """A loopback HTTP server answering every call with one fixed `sendMessage` result and
    keeping each request's body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.result = {"message_id": 41, "date": 1, "text": "hi",
                       "chat": {"id": 7, "type": "private"}}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            self.bodies.append(await reader.readexactly(length))
            answer = json.dumps({"ok": True, "result": self.result}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
        writer.close()


@asynccontextmanager
async def bot_at(port: int) -> AsyncIterator[Bot]:
    bot = Bot(TOKEN, base_url=f"http://127.0.0.1:{port}/bot", request=bot_request())
    await bot.initialize()
    try:
        yield bot
    finally:
        await bot.shutdown()


async def test_post_text_sends_the_bytes_send_message_sends_and_returns_the_message_id() -> None:
    recorder = Recorder()
    server = await asyncio.start_server(recorder.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    text = "余额 ¥12.34 & more=yes\n+100% (a/b) 😀"
    try:
        # (Bot.initialize asks getMe: answered with the same result, and not looked at here)
        recorder.result = {"id": 1, "is_bot": True, "first_name": "b", "username": "b"}
        async with bot_at(port) as bot:
            recorder.result = {"message_id": 41, "date": 1, "text": "hi",
                               "chat": {"id": 7, "type": "private"}}
            recorder.bodies.clear()
            await bot.send_message(7, text, reply_markup=keyboard(ROWS))
            assert await post_text(bot, 7, text, markup_of(ROWS)) == 41
            await bot.send_message(7, text)
            assert await post_text(bot, 7, text, None) == 41
    finally:
        server.close()
        await server.wait_closed()
    typed, ours, typed_plain, ours_plain = recorder.bodies
    assert typed == ours and typed_plain == ours_plain and typed != typed_plain
    assert b"reply_markup=" in ours and b"reply_markup" not in ours_plain


async def test_a_text_reply_goes_out_once_and_a_failure_is_handled_as_before() -> None:
    async with FakeBotAPI(token=TOKEN) as api:
        bot = Bot(TOKEN, base_url=api.base_url, request=bot_request())
        await bot.initialize()
        try:
            out = ChatOutput(bot, None)
            await out.deliver(7, Reply().text("hello", ROWS[:1]), lang="en")
            [call] = api.calls_of("sendMessage")
            assert call.params["text"] == "hello" and call.ok
            assert call.params["reply_markup"]["inline_keyboard"][0][0] == {
                "callback_data": "buy:v1:TEA:2", "text": "买 TEA ×2"}
            # refused: logged and dropped; a blocked chat: the rest of the reply dropped
            api.fail_next("sendMessage", 400, "Bad Request: message text is empty")
            await out.deliver(7, Reply().text("refused").text("next"), lang="en")
            api.block_chat(8)
            await out.deliver(8, Reply().text("a").text("b"), lang="en")
            assert [c.params["text"] for c in api.calls_of("sendMessage")] == \
                ["hello", "refused", "next", "a"]
            assert await out.send_text(7, "x" * 5000) is not None  # two pieces, the last id
            with pytest.raises(BadRequest):
                api.fail_next("sendMessage", 400, "Bad Request: chat not found")
                await post_text(bot, 9, "x", None)
            with pytest.raises(Forbidden):
                await post_text(bot, 8, "x", None)
            # an answer that names no message: the text went out, and goes out once
            api.set_response("sendMessage", True)
            mark = len(api.calls_of("sendMessage"))
            assert await out.send_text(7, "odd answer") is None
            assert [c.params["text"] for c in api.calls_of("sendMessage")[mark:]] == \
                ["odd answer"]
        finally:
            await bot.shutdown()


def _done_at(db: Database) -> dict[int, tuple[str, datetime | None, str | None]]:
    return {r.update_id: (r.status, r.done_at, r.last_error) for r in db.read(
        lambda s: s.execute(select(InboxUpdate)).scalars().all())}


def test_finish_many_marks_more_rows_than_one_statement_takes(db: Database) -> None:
    items = [inbox.Item(update_id=n, kind="message", body="{}", chat_id=n, user_id=n)
             for n in range(1, 1_201)]
    inbox.receive(db, items)
    inbox.set_aside(db, 3, inbox.SPOOLED, error="in the spool")
    before = datetime.now(UTC)
    assert inbox.finish_many(db, [*range(1, 1_101), 5_000]) == 1_100
    rows = _done_at(db)
    assert {n for n, r in rows.items() if r[0] == "done"} == set(range(1, 1_101))
    assert all(r[0] == "pending" and r[1] is None for n, r in rows.items() if n > 1_100)
    stamp = rows[1][1]
    assert stamp is not None and {r[1] for n, r in rows.items() if n <= 1_100} == {stamp}
    # the time as the ORM stores and reads it back (aware on PostgreSQL, naive UTC on SQLite)
    aware = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= aware <= datetime.now(UTC)
    assert rows[3] == ("done", stamp, None)  # a spooled row too, its error cleared
    assert inbox.finish(db, 1_150) and _done_at(db)[1_150][1] is not None


async def test_the_account_view_follows_a_change_of_the_rules(db: Database) -> None:
    service.configure(db, {"points": {"exit_multiple": "2"}})
    member = users.resolve(db, "tg:77")
    assert users.account(db, member["handle"])["exit_multiple"] == 2
    service.configure(db, {"points": {"exit_multiple": "3"}})
    assert users.account(db, member["handle"])["exit_multiple"] == 3
    service.configure(db, {"store": {"currency": "USD"}})
    view = users.resolve_and_account(db, "tg:77")[1]
    assert view["currency"] == "USD" and view["exit_multiple"] == 3
