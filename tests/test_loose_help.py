"""`/help` lists every command a shopper can use, `/payout` included, one line each, and the
whole list still fits one chat message in either language (docs/shop.md)."""

from __future__ import annotations

import pytest

import handlers
from bot.wechat.messages import MAX_TEXT_BYTES
from tests.handlers_kit import OPERATOR, Chat, text

SHOPPER = "tg:70"


@pytest.mark.parametrize("lang,title", [("en", "Commands:"), ("zh", "命令：")])
async def test_help_lists_payout_one_line_per_command_and_fits_one_message(memdb, lang, title):
    chat = Chat(memdb)
    for who in (SHOPPER, OPERATOR):
        await chat.send(who, f"/lang {lang}")
        shown = text(await chat.send(who, "/help"))
        lines = shown.split("\n")
        assert lines[0] == title
        listed = [c.name for c in handlers.commands(operator=False)]
        assert "payout" in listed
        # one line per shopper command, in the menu's order, nothing else (but the
        # operator's pointer to /admin)
        commands = [line.split()[0] for line in lines[1:] if line.startswith("/")]
        assert commands == [f"/{name}" for name in listed]
        assert len(lines) == 1 + len(listed) + (who == OPERATOR)
        payout_line = next(line for line in lines if line.startswith("/payout "))
        assert payout_line.split(" ", 2)[1] == "收款方式"  # its Chinese word, as the others
        # one WeChat text message (the smaller limit; Telegram takes 4096 characters)
        assert len(shown.encode()) <= MAX_TEXT_BYTES
    # and a returning member's /start (a greeting, then the list) stays a short reply: under
    # 900 characters, the bound tests/test_handlers_robustness.py sets for any polite answer;
    # an operator's too, which still lists every shopper command and points to /admin
    for who in (SHOPPER, OPERATOR):
        greeting = text(await chat.send(who, "/start"))
        assert len(greeting) < 900, (who, len(greeting))
        shown = [line.split()[0] for line in greeting.split("\n") if line.startswith("/")]
        assert shown == [f"/{name}" for name in listed]
        assert ("/admin" in greeting) == (who == OPERATOR)


async def test_payout_in_the_help_is_described_in_each_language_without_repeating_itself():
    info = {c.name: c for c in handlers.commands(operator=False)}["payout"]
    assert info.description == {"en": "Where my withdrawals are paid", "zh": "我的提现收款方式"}
    assert all("\n" not in d for d in info.description.values())


@pytest.mark.parametrize("lang", ["en", "zh"])
async def test_a_newcomers_first_start_is_the_welcome_and_the_buttons_not_the_list(memdb, lang):
    chat = Chat(memdb)
    for who in ("tg:71", OPERATOR):
        reply = await chat.send(who, "/start", lang=lang)
        greeting = text(reply)
        assert len(greeting) < 900, (who, len(greeting))
        assert "/help" in greeting and "/payout" not in greeting
        taps = [b.data for row in reply.items[0].buttons for b in row]
        assert taps == ["cmd:v1:shop", "cmd:v1:me", "cmd:v1:invite", "cmd:v1:help"]
        # the list is one tap away, and the next /start shows it under the greeting
        again = text(await chat.send(who, "/start", lang=lang))
        assert "/payout" in again and len(again) < 900
