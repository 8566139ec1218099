"""The Telegram adapter on its own: the real PTB Application against the loopback Bot API,
with scripted conversations standing in for `handlers/`, so each mapping and failure rule of
bot/telegram can be checked exactly."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from telegram.ext import Application

from bot import charge_spool
from bot.settings import Settings
from bot.telegram import (
    Conversations,
    MenuCommand,
    bot_username,
    start_telegram,
    stop_telegram,
)
from bot.telegram.application import adapter_of
from bot.telegram.output import split_text, utf16_len
from handlers.base import App, Button, Document, Invoice, Photo, Progress, Reply, Request, Text
from tests.standins.telegram_api import FakeBotAPI

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")

TOKEN = "123:SECRETTOKEN"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR\x00\x00\x00\x02\x00\x00\x00\x03" + b"x" * 20

MENU = (
    MenuCommand("start", (), False, {"zh": "开始", "en": "Start"}),
    MenuCommand("me", ("my", "我的"), False, {"zh": "我的账户", "en": "My account"}),
    MenuCommand("deposit", (), True, {"zh": "注资", "en": "Deposit into a pool"}),
)


class Script:
    """Scripted conversations: records every call, answers with what the test set."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.reply: Reply | Exception = Reply().text("ok")
        self.prechecks: list[dict[str, Any]] = []
        self.precheck_answer: tuple[bool, str | None] | Exception = (True, None)
        self.payments: list[dict[str, Any]] = []
        self.paid_failures = 0
        self.job_pushes: list[str] = []
        self.job_result: Reply | None = Reply().text("job done")

    async def dispatch(self, app: App, request: Request) -> Reply:
        self.requests.append(request)
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply

    def precheck(self, app: App, *, token: str, amount: int, currency: str,
                 identity: str) -> tuple[bool, str | None]:
        self.prechecks.append(dict(token=token, amount=amount, currency=currency,
                                   identity=identity))
        if isinstance(self.precheck_answer, Exception):
            raise self.precheck_answer
        return self.precheck_answer

    def paid(self, app: App, **kw: Any) -> Reply:
        self.payments.append(kw)
        if self.paid_failures:
            self.paid_failures -= 1
            raise ConnectionError("database went away")
        return Reply().text(f"paid {kw['amount']}")

    def run_job(self, app: App, job: str, request: Request, update: Any) -> Reply | None:
        # Runs in a worker thread (a sync job): pushes faster than Telegram may be edited.
        for n in range(1, 31):
            text = f"{job}: {n}/30"
            self.job_pushes.append(text)
            update(text)
            time.sleep(0.05)
        return self.job_result

    def conversations(self) -> Conversations:
        return Conversations(dispatch=self.dispatch, precheck=self.precheck, paid=self.paid,
                             run_job=self.run_job, menu=MENU)

    def held_back(self, gate: threading.Event, wait: float) -> Conversations:
        """Conversations whose "/me slow" waits for `gate` (at most `wait` s); each request
        answered is appended to `self.order` as "identity text"."""
        self.order: list[str] = []

        async def dispatch(app: App, request: Request) -> Reply:
            if request.text == "/me slow":
                await asyncio.to_thread(gate.wait, wait)
            self.order.append(f"{request.identity} {request.text}")
            return Reply().text("ok")

        return Conversations(dispatch=dispatch, precheck=self.precheck, paid=self.paid,
                             run_job=self.run_job, menu=MENU)


def settings_for(api: FakeBotAPI, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_BASE_URL": api.base_url,
        "TELEGRAM_PAYMENT_PROVIDER_TOKEN": "provider-tok",
        "TELEGRAM_WEBHOOK_URL": None,
        "TELEGRAM_WEBHOOK_SECRET": None,
        "STOREFRONT_CHARGE_SPOOL": str(Path(tempfile.mkdtemp()) / "charges.jsonl"),
    }
    values.update(extra)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def make_app(operators: tuple[str, ...] = ("tg:1",)) -> App:
    return App(db=None, operators=frozenset(operators))  # type: ignore[arg-type]


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI(token=TOKEN) as fake:
        yield fake


@pytest.fixture
async def bot(api: FakeBotAPI) -> AsyncIterator[tuple[FakeBotAPI, Script, App, Application]]:
    script, app = Script(), make_app()
    application = await start_telegram(settings_for(api), app, poll_timeout=1,
                                       conversations=script.conversations())
    try:
        yield api, script, app, application
    finally:
        await stop_telegram(application)


async def said(api: FakeBotAPI, chat_id: int, since: int, timeout: float = 5.0) -> Any:
    return await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == chat_id,
                              timeout, since=since)


# --------------------------------------------------------------------------- start-up


async def test_start_learns_username_and_publishes_menus_per_language_and_operator(bot) -> None:
    api, _, app, _ = bot
    assert await bot_username(settings_for(api)) == "rebate_shop_bot"  # bot/app.py asks first
    assert api.commands[""] == [{"command": "start", "description": "Start"},
                                {"command": "me", "description": "My account"}]
    assert api.commands["zh"] == [{"command": "start", "description": "开始"},
                                  {"command": "me", "description": "我的账户"}]
    scope = '{"chat_id": 1, "type": "chat"}'
    assert [c["command"] for c in api.scoped_commands[(scope, "")]] == ["start", "me", "deposit"]
    assert api.scoped_commands[(scope, "zh")][2] == {"command": "deposit", "description": "注资"}
    poll = await api.wait_for("getUpdates")
    assert poll.params["allowed_updates"] == [
        "message", "callback_query", "pre_checkout_query"]


async def test_without_provider_token_payments_are_off_and_invoices_never_sent(api) -> None:
    script, app = Script(), make_app()
    script.reply = Reply([Invoice("O1", "tok", "Tea", "Green tea", 1000, "CNY")])
    application = await start_telegram(
        settings_for(api, TELEGRAM_PAYMENT_PROVIDER_TOKEN=None), app, poll_timeout=1,
        conversations=script.conversations())
    try:
        api.push_text(5, "/me")
        call = await said(api, 5, 0)
        assert "Online payment is not available" in call.params["text"]
        assert api.calls_of("sendInvoice") == []
    finally:
        await stop_telegram(application)


async def test_webhook_mode_sets_webhook_with_secret_and_does_not_poll(api) -> None:
    app = make_app()
    settings = settings_for(api, TELEGRAM_WEBHOOK_URL="https://shop.example/telegram",
                            TELEGRAM_WEBHOOK_SECRET="s3cret_token-1")
    application = await start_telegram(settings, app, conversations=Script().conversations())
    try:
        (call,) = api.calls_of("setWebhook")
        assert call.params["url"] == "https://shop.example/telegram"
        assert call.params["secret_token"] == "s3cret_token-1"
        assert api.calls_of("getUpdates") == []
    finally:
        await stop_telegram(application)


@pytest.mark.parametrize("secret", [None, "", "has space", "x" * 257])
async def test_webhook_mode_refuses_to_start_without_a_usable_secret(api, secret) -> None:
    settings = settings_for(api, TELEGRAM_WEBHOOK_URL="https://shop.example/telegram",
                            TELEGRAM_WEBHOOK_SECRET=secret)
    with pytest.raises(ValueError, match="TELEGRAM_WEBHOOK_SECRET"):
        await start_telegram(settings, make_app(), conversations=Script().conversations())
    assert api.calls_of("getMe") == []


# --------------------------------------------------------------------------- updates → requests


async def test_start_with_payload_maps_to_a_request(bot) -> None:
    api, script, _, _ = bot
    update = api.push_text(42, "/start REF_abc-1", first_name="Li", language_code="zh-hans")
    await said(api, 42, 0)
    (req,) = script.requests
    message_id = update["message"]["message_id"]
    assert req == Request(channel="telegram", identity="tg:42",
                          request_id=f"tg:msg:42:{message_id}", command="start",
                          args=("REF_abc-1",), text="/start REF_abc-1", lang="zh-hans",
                          display_name="Li", start_payload="REF_abc-1")


async def test_aliases_map_to_the_canonical_command_and_other_input_to_text(bot) -> None:
    api, script, _, _ = bot
    for text in ("/MY", "/me@rebate_shop_bot extra", "/nosuch 1", "hello", "我的"):
        mark = len(api.calls)
        api.push_text(7, text)
        await said(api, 7, mark)
    got = [(r.command, r.args, r.text) for r in script.requests]
    assert got == [("me", (), "/MY"), ("me", ("extra",), "/me@rebate_shop_bot extra"),
                   (None, (), "/nosuch 1"), (None, (), "hello"), (None, (), "我的")]
    assert all(r.start_payload is None for r in script.requests)


async def test_non_text_messages_reach_the_conversations_as_empty_text(bot) -> None:
    api, script, _, _ = bot
    from tests.standins.telegram_api import make_message, make_user

    user = make_user(9)
    sticker = {"file_id": "st1", "file_unique_id": "u", "width": 1, "height": 1,
               "is_animated": False, "is_video": False, "type": "regular"}
    api.push_update({"message": make_message(9, from_user=user, sticker=sticker)})
    await said(api, 9, 0)
    (req,) = script.requests
    assert (req.command, req.text, req.identity) == (None, "", "tg:9")


async def test_group_chats_get_a_private_chat_note_and_no_conversation(bot) -> None:
    api, script, _, _ = bot
    from tests.standins.telegram_api import _command_entities, make_message, make_user

    api.push_update({"message": make_message(-100123, from_user=make_user(3), text="/me",
                                             entities=_command_entities("/me"))})
    call = await said(api, -100123, 0)
    assert call.params["text"] == "Please use the shop commands in a private chat with me."
    assert script.requests == []


async def test_button_press_is_answered_even_when_the_conversation_fails(bot) -> None:
    api, script, _, _ = bot
    script.reply = RuntimeError("bug")
    update = api.push_callback(11, "buy:v1:TEA:2", language_code="zh")
    call = await said(api, 11, 0)
    assert call.params["text"].startswith("抱歉")
    (answer,) = api.answers_to_callbacks()
    assert answer[0] == update["callback_query"]["id"]
    (req,) = script.requests
    assert (req.callback, req.command, req.request_id) == (
        "buy:v1:TEA:2", None, f"tg:cbq:{update['callback_query']['id']}")


# --------------------------------------------------------------------------- rendering


async def test_text_is_plain_with_inline_buttons_and_long_text_is_split(bot) -> None:
    api, script, _, _ = bot
    long_text = "\n".join(f"line {n} " + "好" * 60 for n in range(100))
    script.reply = Reply([
        Text("<b>*not markup*</b>", ((Button("Buy", data="buy:v1:TEA:1"),
                                      Button("Site", url="https://example.com/x")),
                                     (Button("bad", data="x" * 65),))),
        Text(long_text),
    ])
    api.push_text(5, "/me")
    await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == 5
                       and c.params["text"].startswith("line 99", c.params["text"].rfind("\n") + 1))
    sends = api.calls_of("sendMessage")
    first = sends[0].params
    assert first["text"] == "<b>*not markup*</b>" and "parse_mode" not in first
    assert first["reply_markup"] == {"inline_keyboard": [[
        {"text": "Buy", "callback_data": "buy:v1:TEA:1"},
        {"text": "Site", "url": "https://example.com/x"}]]}
    pieces = [c.params["text"] for c in sends[1:]]
    assert len(pieces) > 1 and "".join(pieces) == long_text
    assert all(utf16_len(p) <= 4096 for p in pieces)


def test_split_text_cuts_long_lines_and_counts_utf16_units() -> None:
    emoji_line = "😀" * 3000  # 2 UTF-16 units each
    pieces = list(split_text("a\n" + emoji_line + "\nb"))
    assert "".join(pieces) == "a\n" + emoji_line + "\nb"
    assert max(utf16_len(p) for p in pieces) <= 4096
    assert list(split_text("")) == [] and list(split_text("  \n")) == []


async def test_photo_document_and_invoice_are_sent_natively(bot) -> None:
    api, script, _, _ = bot
    script.reply = Reply([
        Photo(PNG, caption="scan me"),
        Document(b"a,b\n1,2\n", "report.csv", caption="c" * 2000),
        Invoice("O-7", "tok-7", "A very long product title that overflows", "Green tea",
                12345, "CNY"),
    ])
    api.push_text(5, "/me")
    invoice = await api.wait_for("sendInvoice")
    photo = api.calls_of("sendPhoto")[0]
    assert photo.files["photo"] == PNG and photo.params["caption"] == "scan me"
    doc = api.calls_of("sendDocument")[0]
    assert doc.files["document"] == b"a,b\n1,2\n" and doc.filenames["document"] == "report.csv"
    assert "caption" not in doc.params  # too long for a caption: it follows as text
    assert api.sent_texts(5) == ["c" * 2000]
    assert invoice.params["payload"] == "tok-7"
    assert invoice.params["provider_token"] == "provider-tok"
    assert invoice.params["currency"] == "CNY"
    assert invoice.params["title"] == "A very long product title that o"
    assert invoice.params["prices"] == [{"label": invoice.params["title"], "amount": 12345}]


async def test_progress_edits_one_message_at_most_once_a_second(bot) -> None:
    api, script, _, _ = bot
    script.reply = Reply([Progress("release", "release: starting")])
    api.push_text(1, "/me")
    await api.wait_for(lambda c: c.is_("sendMessage") and c.params["text"] == "job done",
                       timeout=10)
    first = api.calls_of("sendMessage")[0]
    assert first.params["text"] == "release: starting"
    edits = api.calls_of("editMessageText")
    assert {e.params["message_id"] for e in edits} == {first.result["message_id"]}
    assert edits[-1].params["text"] == "release: 30/30"  # the last state is always shown
    assert 1 <= len(edits) <= 3  # 30 pushes over ~1.5 s
    gaps = [b.time - a.time for a, b in zip(edits, edits[1:], strict=False)]
    assert all(g >= 0.95 for g in gaps), gaps


# --------------------------------------------------------------------------- payments


async def test_pre_checkout_answers_ok_or_the_conversations_reason(bot) -> None:
    api, script, _, _ = bot
    api.push_pre_checkout(8, "tok-1", 1000)
    await api.wait_for("answerPreCheckoutQuery")
    script.precheck_answer = (False, "Amount does not match / 金额不符")
    api.push_pre_checkout(8, "tok-1", 999)
    await api.wait_for(lambda c: c.is_("answerPreCheckoutQuery") and not c.params.get("ok"))
    script.precheck_answer = RuntimeError("db down")
    update = api.push_pre_checkout(8, "tok-1", 1000)
    await api.wait_for(lambda c: c.is_("answerPreCheckoutQuery")
                       and c.params["pre_checkout_query_id"]
                       == update["pre_checkout_query"]["id"])
    answers = [(ok, err) for _, ok, err in api.answers_to_pre_checkout()]
    assert answers == [(True, None), (False, "Amount does not match / 金额不符"),
                       (False, "This order cannot be confirmed right now; you have not been "
                               "charged. Please try again shortly.")]
    assert script.prechecks[0] == dict(token="tok-1", amount=1000, currency="CNY",
                                       identity="tg:8")


async def test_successful_payment_is_recorded_with_the_charge_id(bot) -> None:
    api, script, _, _ = bot
    api.push_successful_payment(8, "tok-1", 1000, "charge-1")
    call = await said(api, 8, 0)
    assert call.params["text"] == "paid 1000"
    assert script.payments == [dict(token="tok-1", amount=1000, currency="CNY",
                                    charge_id="charge-1", channel="telegram", identity="tg:8")]


async def test_payment_recording_is_retried_then_reported_loudly(bot, caplog) -> None:
    api, script, _, _ = bot
    script.paid_failures = 1
    api.push_successful_payment(8, "tok-1", 1000, "charge-2")
    assert (await said(api, 8, 0)).params["text"] == "paid 1000"
    assert len(script.payments) == 2
    script.paid_failures = 3
    mark = len(api.calls)
    with caplog.at_level(logging.CRITICAL, logger="bot.telegram.application"):
        api.push_successful_payment(8, "tok-9", 500, "charge-3")
        call = await said(api, 8, mark)
    assert "charge-3" in call.params["text"] and "not lost" in call.params["text"]
    (record,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "UNRECORDED TELEGRAM PAYMENT charge=charge-3" in record.getMessage()

    # ... and it is on disk, replayed until the database records it (once: keyed by charge)
    _, _, _, application = bot
    adapter = adapter_of(application)
    assert [c["charge_id"] for c in charge_spool.pending(adapter.spool_path)] == ["charge-3"]
    script.paid_failures = 1
    assert await charge_spool.replay(adapter.spool_path, adapter.record_spooled) == 0
    assert [c["charge_id"] for c in charge_spool.pending(adapter.spool_path)] == ["charge-3"]
    assert await charge_spool.replay(adapter.spool_path, adapter.record_spooled) == 1
    assert charge_spool.pending(adapter.spool_path) == []
    assert script.payments[-1] == {"token": "tok-9", "amount": 500, "currency": "CNY",
                                   "charge_id": "charge-3", "channel": "telegram",
                                   "identity": "tg:8"}


# --------------------------------------------------------------------------- Bot API failures


async def test_flood_control_waits_and_retries_a_reply_once(bot) -> None:
    api, _, _, _ = bot
    api.fail_next("sendMessage", 429, retry_after=1)
    api.push_text(6, "/me")
    call = await api.wait_for(lambda c: c.is_("sendMessage") and c.ok, timeout=5)
    tries = api.request_times[("sendMessage", 6)]
    assert call.params["text"] == "ok" and len(tries) == 2
    assert tries[1] - tries[0] >= 0.95


async def test_flood_control_twice_drops_the_reply_and_the_bot_keeps_going(bot) -> None:
    api, _, _, _ = bot
    api.fail_next("sendMessage", 429, retry_after=1, times=2)
    api.push_text(6, "/me")
    await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == 6 and not c.ok
                       and len(api.request_times[("sendMessage", 6)]) == 2)
    assert api.sent_texts(6) == []
    api.push_text(6, "/me")  # one chat's updates run in order: this comes after the first's
    assert (await said(api, 6, len(api.calls))).ok
    assert len(api.request_times[("sendMessage", 6)]) == 3  # no third try of the dropped one
    assert api.sent_texts(6) == ["ok"]


async def test_blocked_user_is_dropped_and_others_still_answered(bot) -> None:
    api, script, _, _ = bot
    script.reply = Reply().text("one").text("two")
    api.block_chat(13)
    api.push_text(13, "/me")
    api.push_text(14, "/me")
    await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == 14 and c.ok)
    await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == 13)
    await asyncio.sleep(0.1)
    assert len(api.request_times[("sendMessage", 13)]) == 1  # "two" was not attempted
    assert api.sent_texts(14)[:1] == ["one"]


async def test_token_never_reaches_the_logs(api, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    script = Script()
    script.reply = Reply([Invoice("O1", "tok", "Tea", "Green tea", 1000, "CNY"),
                          Text("after the invoice")])
    application = await start_telegram(settings_for(api), make_app(), poll_timeout=1,
                                       conversations=script.conversations())
    try:
        api.fail_next("sendMessage", 400, "Bad Request: fake failure")
        api.push_text(5, "/me")
        await api.wait_for(lambda c: c.is_("sendMessage"))
        await asyncio.sleep(0.05)
    finally:
        await stop_telegram(application)
    text = "\n".join(r.getMessage() for r in caplog.records)
    # the logs were really captured, URLs and call parameters included
    assert "HTTP Request" in text and "sendInvoice" in text and "Green tea" in text
    assert "SECRETTOKEN" not in text and "provider-tok" not in text


# --------------------------------------------------------------------------- ordering


async def test_one_users_updates_run_in_order_while_others_overtake(bot) -> None:
    api, script, _, _ = bot
    gate = threading.Event()
    adapter = bot[3].bot_data["adapter"]
    adapter.conv = script.held_back(gate, 3)
    order = script.order
    api.push_text(20, "/me slow")
    api.push_text(20, "/me second")
    api.push_text(21, "/me other")
    await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == 21)
    gate.set()
    await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == 20)
    while len(order) < 3:
        await asyncio.sleep(0.01)
    assert order == ["tg:21 /me other", "tg:20 /me slow", "tg:20 /me second"]
