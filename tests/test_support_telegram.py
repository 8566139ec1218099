"""`/support` over the Telegram stand-in: the real Application polling it, the outbox
delivered by the real `TelegramSender` — the operator's notice carries its reply button,
pressing it and writing the answer brings the answer to the buyer's chat."""

from __future__ import annotations

import json

import pytest

from bot.senders import TelegramSender
from handlers.notify import buttons, render
from scheduler import Deliverer
from tests.test_telegram_e2e import OPERATOR, Shop, running_shop

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")

BUYER = 5



async def deliver(s: Shop) -> None:
    sender = TelegramSender(s.application.bot)
    stats = await Deliverer(s.app.db, {"tg": sender}, renderer=render, buttons=buttons,
                            per_user=0.0).drain()
    assert stats["sent"] >= 1, stats


async def test_support_thread_over_the_telegram_stand_in(sqlite_url: str) -> None:
    async with running_shop(sqlite_url) as s:
        await s.say(OPERATOR, "/start")
        assert "Sent to the shop's staff (conversation #1)" in await s.say(
            BUYER, "/support My code says 'already used'")

        mark = len(s.api.calls)
        await deliver(s)
        (notice,) = [c for c in s.api.calls[mark:] if c.is_("sendMessage") and c.chat_id == OPERATOR]
        assert notice.params["text"].startswith(
            "Message from User5 (conversation #1):\nMy code says 'already used'")
        markup = notice.params["reply_markup"]
        markup = json.loads(markup) if isinstance(markup, str) else markup
        assert [[b["callback_data"] for b in row] for row in markup["inline_keyboard"]] == [
            ["sup:v1:reply:1", "sup:v1:close:1"]]

        # the operator presses the button under that very notice, then writes the answer
        shown = await s.press(OPERATOR, "sup:v1:reply:1")
        assert shown.endswith("Write your answer to #1 now.")
        assert await s.say(OPERATOR, "Here is a new one: XYZ-987") == "Answer sent (conversation #1)."

        mark = len(s.api.calls)
        await deliver(s)
        (answer,) = [c for c in s.api.calls[mark:] if c.is_("sendMessage") and c.chat_id == BUYER]
        assert answer.params["text"] == ("Answer from the shop (conversation #1):\n"
                                         "Here is a new one: XYZ-987\n\nWrite back with /support.")
        assert "reply_markup" not in answer.params  # the buyer's message has no operator buttons
