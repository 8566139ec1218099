"""Digital goods over the Telegram stand-in: the operator sends a file of codes with the
caption `/codes GAME`, a buyer pays an invoice, and the receipt with the code reaches the
buyer's chat through the outbox."""

from __future__ import annotations

import pytest

from bot.senders import TelegramSender
from handlers.notify import buttons, render
from scheduler import Deliverer
from tests.standins.telegram_api import make_message, make_user
from tests.test_telegram_e2e import OPERATOR, Shop, running_shop

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")

BUYER = 7



async def send_file(s: Shop, user: int, content: bytes, caption: str) -> str:
    file_id = s.api.store_file(content)
    mark = len(s.api.calls)
    s.api.push_update({"message": make_message(
        user, from_user=make_user(user, first_name=f"User{user}"), caption=caption,
        document={"file_id": file_id, "file_unique_id": f"u-{file_id}",
                  "file_name": "codes.txt", "mime_type": "text/plain",
                  "file_size": len(content)})})
    (call,) = await s.replies(user, mark, 1)
    return str(call.params["text"])


async def test_codes_file_then_a_paid_invoice_delivers_the_code(sqlite_url: str) -> None:
    async with running_shop(sqlite_url) as s:
        await s.say(OPERATOR, "/start")
        await s.say(OPERATOR, "/product GAME 30.00 0.50 0 points Game key")
        assert await s.say(OPERATOR, "/kind GAME digital") == "GAME is now digital (codes: /codes)."
        assert await send_file(s, OPERATOR, b"KEY-1\nKEY-2\n", "/codes GAME") == (
            "GAME: 2 new codes added (0 already there), 0 went to buyers who were waiting for one;"
            " stock now 2.")
        # a buyer's file is nobody's business: not downloaded, answered as usual
        assert "KEY" not in await send_file(s, BUYER, b"X\n", "hello")
        assert len(s.api.calls_of("getFile")) == 1

        token, amount = await s.buy(BUYER, "GAME")
        assert amount == 3000
        assert await s.precheck(BUYER, token, amount) == (True, None)
        await s.pay(BUYER, token, amount, "charge-1")

        mark = len(s.api.calls)
        sender = TelegramSender(s.application.bot)
        await Deliverer(s.app.db, {"tg": sender}, renderer=render, buttons=buttons,
                        per_user=0.0).drain()
        texts = [c.params["text"] for c in s.api.calls[mark:]
                 if c.is_("sendMessage") and c.chat_id == BUYER]
        (receipt,) = [t for t in texts if "KEY-1" in t]
        assert receipt.startswith("Your codes for order N1:\nGAME: KEY-1\n")
