"""The loopback Bot API stand-in drives the real python-telegram-bot Application over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, LabeledPrice, Update
from telegram.error import Forbidden, RetryAfter
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    PreCheckoutQueryHandler,
    filters,
)

from tests.standins.telegram_api import (
    FakeBotAPI,
    make_callback_update,
    make_pre_checkout_update,
    make_successful_payment_update,
    make_text_update,
)

PNG_1X1 = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00"
    b"\x00\x00\x00IEND\xaeB`\x82"
)


@pytest.fixture
async def running() -> AsyncIterator[tuple[FakeBotAPI, Application, dict[str, list[Any]]]]:
    seen: dict[str, list[Any]] = {"payments": [], "callbacks": []}

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Buy", callback_data="buy:1")]])
        await update.effective_message.reply_text("Welcome to the shop", reply_markup=keyboard)

    async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        seen["callbacks"].append(query.data)
        await query.answer("ok")
        await query.edit_message_text(f"chose {query.data}")

    async def pre_checkout(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.pre_checkout_query.answer(ok=True)

    async def paid(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        seen["payments"].append(update.effective_message.successful_payment)

    api = FakeBotAPI().start()
    app = (
        ApplicationBuilder()
        .token("123:ABC")
        .base_url(api.base_url)
        .base_file_url(api.base_file_url)
        .build()
    )
    app.add_handler(CommandHandler("start", start))
    app.add_handler(CallbackQueryHandler(on_button))
    app.add_handler(PreCheckoutQueryHandler(pre_checkout))
    app.add_handler(MessageHandler(filters.SUCCESSFUL_PAYMENT, paid))
    try:
        await app.initialize()
        await app.start()
        await app.updater.start_polling(poll_interval=0.0, timeout=1)
        yield api, app, seen
    finally:
        if app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()
        await app.shutdown()
        await asyncio.to_thread(api.stop)


async def test_real_application_round_trip(running) -> None:
    api, app, seen = running
    assert api.calls_of("getMe"), "Application.initialize should call getMe"
    assert app.bot.username == "rebate_shop_bot"
    assert app.bot.id == 4242

    # /start -> reply with an inline keyboard
    api.push_text(7, "/start", first_name="Ann")
    await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == 7)
    assert api.sent_texts(7) == ["Welcome to the shop"]
    sent = api.calls_of("sendMessage")[0]
    assert sent.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "buy:1"

    # press the button on that message -> answerCallbackQuery + editMessageText
    api.push_callback(7, "buy:1")
    await api.wait_for(lambda c: c.is_("editMessageText") and c.chat_id == 7)
    assert seen["callbacks"] == ["buy:1"]
    assert api.answers_to_callbacks()[0][1:] == ("ok", False)
    assert api.sent_texts(7) == ["Welcome to the shop", "chose buy:1"]
    edit = api.calls_of("editMessageText")[0]
    assert edit.params["message_id"] == sent.result["message_id"]

    # pre-checkout answered ok=True
    update = api.push_pre_checkout(7, "order-1", 1999)
    await api.wait_for("answerPreCheckoutQuery")
    query_id = update["pre_checkout_query"]["id"]
    assert api.answers_to_pre_checkout() == [(query_id, True, None)]

    # successful_payment reaches MessageHandler(filters.SUCCESSFUL_PAYMENT)
    api.push_successful_payment(7, "order-1", 1999, "tg-charge-1")
    for _ in range(300):
        if seen["payments"]:
            break
        await asyncio.sleep(0.01)
    (payment,) = seen["payments"]
    assert payment.invoice_payload == "order-1"
    assert payment.total_amount == 1999
    assert payment.currency == "CNY"
    assert payment.telegram_payment_charge_id == "tg-charge-1"
    assert payment.provider_payment_charge_id == "p-tg-charge-1"


@pytest.mark.filterwarnings("ignore:.*retry_after.*timedelta")  # PTB 22 deprecation notice
async def test_direct_bot_calls(running) -> None:
    api, app, _ = running
    bot = app.bot

    # file upload: multipart body, bytes recorded, file downloadable again
    msg = await bot.send_photo(7, photo=PNG_1X1, caption="look")
    (call,) = api.calls_of("sendPhoto")
    assert call.files["photo"] == PNG_1X1
    assert call.params["caption"] == "look"
    assert msg.photo[0].width == 1 and msg.photo[0].file_size == len(PNG_1X1)
    tg_file = await bot.get_file(msg.photo[0].file_id)
    assert bytes(await tg_file.download_as_bytearray()) == PNG_1X1

    doc = await bot.send_document(7, document=b"a,b\n1,2\n", filename="report.csv")
    assert doc.document.file_name == "report.csv"
    assert api.calls_of("sendDocument")[0].files["document"] == b"a,b\n1,2\n"

    # invoice message parses as a real telegram.Message with an Invoice
    inv = await bot.send_invoice(
        7, "Coupon", "A coupon", "order-2", "CNY", [LabeledPrice("item", 500)], provider_token=""
    )
    assert inv.invoice.total_amount == 500 and inv.invoice.currency == "CNY"
    assert api.calls_of("sendInvoice")[0].params["prices"] == [{"label": "item", "amount": 500}]

    # commands recorded per language
    await bot.set_my_commands([BotCommand("start", "Open shop")], language_code="zh")
    assert api.commands["zh"] == [{"command": "start", "description": "Open shop"}]
    assert [c.command for c in await bot.get_my_commands(language_code="zh")] == ["start"]

    # injected 429 surfaces as RetryAfter, then the next call succeeds
    api.fail_next("sendMessage", 429, retry_after=1)
    with pytest.raises(RetryAfter):
        await bot.send_message(7, "first try")
    await bot.send_message(7, "second try")
    assert api.sent_texts(7) == ["second try"]

    # blocked chat -> Forbidden
    api.block_chat(8)
    with pytest.raises(Forbidden, match="blocked by the user"):
        await bot.send_message(8, "hello?")
    assert len(api.request_times[("sendMessage", 8)]) == 1


def test_builders_and_raw_http() -> None:
    for data in (
        make_text_update(7, "/buy 3"),
        make_callback_update(7, "x", message_id=5),
        make_pre_checkout_update(7, "p", 100),
        make_successful_payment_update(7, "p", 100, "c"),
    ):
        update = Update.de_json(data, None)
        assert update.update_id == data["update_id"]
    text_update = Update.de_json(make_text_update(7, "/buy 3"), None)
    assert text_update.message.entities[0].length == 4

    with FakeBotAPI(token="1:T") as api, httpx.Client() as client:
        url = f"{api.base_url}1:T"
        first = api.push_text(1, "a")
        second = api.push_text(1, "b")
        got = client.post(f"{url}/getUpdates", data={"offset": "0"}).json()["result"]
        assert [u["update_id"] for u in got] == [first["update_id"], second["update_id"]]
        offset = str(second["update_id"])
        got = client.post(f"{url}/getUpdates", data={"offset": offset}).json()["result"]
        assert [u["message"]["text"] for u in got] == ["b"]
        assert client.get(f"{api.base_url}9:X/getMe").status_code == 401
        response = client.post(f"{url}/sendMessage", json={"chat_id": 3, "text": "42"})
        assert response.json()["result"]["text"] == "42"
        assert api.wait_for_sync("sendMessage").params == {"chat_id": 3, "text": "42"}
