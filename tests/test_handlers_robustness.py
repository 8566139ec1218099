"""Bad input anywhere gets a short polite reply, changes nothing and never shows a traceback;
failures inside become a reply too; users are rate limited."""

from __future__ import annotations

import logging

import pytest

import handlers
from engine import users
from handlers.base import Reply, Request
from storage.db import DatabaseUnavailable
from storage.ratelimit import RateLimiter
from tests.handlers_kit import OPERATOR, Chat, text

CONSUMER_GARBAGE = [
    "/buy", "/buy TEA 0", "/buy TEA -1", "/buy TEA 1.5", "/buy TEA 10001", "/buy TEA 1 points",
    "/buy TEA 1 points -3", "/buy TEA 1 points 1e3", "/buy TEA 1 points 0.0000001",
    "/buy ../../etc/passwd", "/buy TEA 1 wallet extra", "/buy <script>alert(1)</script>",
    "/buy TEA 1 points 99999", "/buy NOPE", "/withdraw", "/withdraw -5", "/withdraw 1e9",
    "/withdraw 0", "/withdraw 1.001", "/withdraw 99999999999999", "/withdraw 5 6",
    "/withdraw NaN", "/sellpoints abc", "/sellpoints 0.0000001", "/sellpoints 1",
    "/sellpoints", "/transfer", "/transfer tg:6", "/transfer tg:6 -1", "/transfer tg:6 1",
    "/transfer nobody 1", "/history 0", "/history x", "/history 99999999", "/lang fr",
    "/lang", "/nosuch", "/start " + "x" * 200, "🙂", "%s%n{}{0}{ref}", "<b>bold</b>",
    "\u202ereversed", "购买", "购买 茶", "提现 五十", "卖出积分 -1", "转让 a b c",
    "/queue extra words", "/orders 1 2 3", "/me me me",
]
OPERATOR_GARBAGE = [
    "/product", "/product TEA x 0.3 1 queue", "/product TEA 1.00 2 1 queue",
    "/product TEA 1.00 0.3 99999 queue", "/product TEA 1.00 0.3 1 bogus",
    "/product T*A 1.00 0.3 1 queue", "/product TEA 1.00 -0.3 1 queue", "/deposit",
    "/deposit bank 1", "/deposit queue -1", "/deposit queue 1 2", "/approve x", "/approve 99",
    "/approve", "/reject", "/reject -1", "/offline", "/offline nobody TEA",
    "/offline tg:5 TEA 0", "/offline tg:5 NOPE", "/refund", "/refund bad!ref", "/refund N999",
    "/user", "/user a b", "/broadcast", "/broadcast " + "x" * 3001, "/export a b c",
    "/export journal xml",
]
BAD_BUTTONS = ["", ":", "buy", "x:v1", "wd:v1:a", "wd:v1:z:1", "bc:v1:nope:y", "hist:v1:-1",
               "lang:v1:fr", "cmd:v1:nosuch", "buy:v1:TEA:1:" + "p" * 60, "a:v1:" + "é" * 30]


def _polite(reply: Reply) -> str:
    body = text(reply)
    assert body.strip(), reply
    assert "Traceback" not in body and "Error" not in body and "sqlalchemy" not in body
    assert len(body) < 900
    return body


@pytest.fixture
async def stocked_chat(memdb):
    """The chat over `Chat.setup_shop`'s catalogue, with tg:5 and tg:6 started."""
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send("tg:5", "/start")
    await chat.send("tg:6", "/start")
    return chat


@pytest.mark.parametrize("line", CONSUMER_GARBAGE)
async def test_malformed_consumer_input_gets_a_polite_reply_and_changes_nothing(stocked_chat, line):
    world = stocked_chat.world()
    _polite(await stocked_chat.send("tg:5", line))
    assert stocked_chat.world() == world


@pytest.mark.parametrize("line", OPERATOR_GARBAGE)
async def test_malformed_operator_input_gets_a_polite_reply_and_changes_nothing(stocked_chat, line):
    world = stocked_chat.world()
    _polite(await stocked_chat.send(OPERATOR, line))
    assert stocked_chat.world() == world


@pytest.mark.parametrize("data", BAD_BUTTONS)
async def test_malformed_button_data_gets_a_polite_reply_and_changes_nothing(stocked_chat, data):
    world = stocked_chat.world()
    body = _polite(await stocked_chat.send(OPERATOR, "", callback=data))
    assert "no longer valid" in body or "expired" in body or "not a language" in body
    assert stocked_chat.world() == world


async def test_usage_is_shown_with_the_problem(stocked_chat):
    body = text(await stocked_chat.send("tg:5", "/withdraw 1.001"))
    assert body == ("“1.001” is not an amount: use a plain positive number with at most 2 "
                    "decimals, e.g. 50.00.\nUsage: /withdraw AMOUNT (e.g. /withdraw 50.00) or "
                    "/withdraw all")
    assert text(await stocked_chat.send(OPERATOR, "/product TEA 1.00 2 1 queue")).startswith(
        "“2” is not a margin")


async def test_oversized_or_binary_text_is_refused_politely(stocked_chat):
    world = stocked_chat.world()
    for bad in ("/buy TEA " + "1" * 5000, "/me\x00", "\x07\x08bell", "/buy\udcff"):
        assert "too long or contains characters" in _polite(await stocked_chat.send("tg:5", bad))
    assert "too long" in _polite(await stocked_chat.send("tg:5", "",
                                                         callback="buy:v1:" + "x" * 5000))
    assert stocked_chat.world() == world


async def test_an_identity_that_is_not_one_is_refused(stocked_chat):
    for who in ("", "tg", "tg:", "tg:1 2", "x" * 200, ":5"):
        assert text(await stocked_chat.send(who, "/me")) == \
            "Sorry, I cannot tell who you are in this chat."


async def test_unexpected_errors_are_logged_with_a_reference_and_nothing_leaks(
        stocked_chat, monkeypatch, caplog):
    def broken(*_a, **_k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(users, "account", broken)
    monkeypatch.setattr(users, "admit", broken)  # how every request reads its member
    with caplog.at_level(logging.ERROR, logger="handlers.registry"):
        reply = await stocked_chat.send("tg:5", "/me", request_id="req-42")
    body = text(reply)
    assert body.startswith("Sorry, something went wrong. Nothing was changed; please try again.")
    ref = body.rsplit("(ref ", 1)[1].rstrip(")")
    assert "secret" not in body
    assert any("req-42" in r.getMessage() and ref in r.getMessage() for r in caplog.records)


async def test_a_busy_database_says_try_again(stocked_chat, monkeypatch):
    def busy(*_a, **_k):
        raise DatabaseUnavailable("locked")

    monkeypatch.setattr(users, "account", busy)
    monkeypatch.setattr(users, "admit", busy)  # how every request reads its member
    assert text(await stocked_chat.send("tg:5", "/me")) == \
        "The shop is busy, please try again in a moment. Nothing was changed."
    # in the user's language: a Chinese newcomer is answered in Chinese
    assert "商店繁忙" in text(await stocked_chat.send("tg:7", "/me", lang="zh"))
    monkeypatch.undo()
    monkeypatch.setattr(users, "resolve", busy)  # a first contact of `/me` resolves as ever
    assert text(await stocked_chat.send("tg:9", "/me")).startswith("The shop is busy")
    assert text(await stocked_chat.send("tg:9", "/help")).startswith("The shop is busy")


async def test_commands_are_rate_limited_per_user(memdb):
    chat = Chat(memdb, limiter=RateLimiter())
    replies = [text(await chat.send("tg:5", "/help")) for _ in range(21)]
    assert all(r.startswith("Commands:") for r in replies[:20])
    assert replies[20] == ("You are sending messages very fast; please slow down a little "
                           "and try again.")
    assert text(await chat.send("tg:6", "/help")).startswith("Commands:")


async def test_dispatch_never_raises_even_for_a_broken_request(memdb):
    chat = Chat(memdb)
    weird = Request(channel="telegram", identity="tg:5", request_id="r",
                    args=(None,), command="buy")  # type: ignore[arg-type]
    reply = await handlers.dispatch(chat.app, weird)
    assert isinstance(reply, Reply) and text(reply)
