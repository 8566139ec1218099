"""A person (`/support`, 客服): the buyer's message reaches every operator with a reply
button, the operator's answer reaches the buyer on their channel, the thread is kept."""

from __future__ import annotations

import json

import pytest

from handlers import notify
from storage.db import Database
from storage.models import Outbox
from tests.handlers_kit import OPERATOR, Chat, buttons, text

OTHER_OPERATOR = "wx:boss"
BUYER = "tg:5"


def params(row: Outbox) -> dict:
    return json.loads(row.params)


async def _shop(db: Database) -> Chat:
    chat = Chat(db, operators=(OPERATOR, OTHER_OPERATOR))
    for who, lang in ((OPERATOR, "en"), (OTHER_OPERATOR, "zh"), (BUYER, "zh")):
        await chat.send(who, "/start", lang=lang)
    return chat


async def test_a_buyers_message_reaches_every_operator_with_a_reply_button(db: Database):
    chat = await _shop(db)
    reply = await chat.send(BUYER, "/support 我的卡密不能用\n订单 N1", lang="zh")
    assert text(reply) == "已转给客服（会话 #1），回复会发到这里。"
    rows = chat.outbox("support_message")
    assert sorted(params(r)["identity"] for r in rows) == sorted([OPERATOR, OTHER_OPERATOR])
    assert {params(r)["text"] for r in rows} == {"我的卡密不能用\n订单 N1"}
    en = next(r for r in rows if params(r)["identity"] == OPERATOR)
    assert en.lang == "en"
    said = notify.render(en.kind, params(en), en.lang)
    assert said.startswith("Message from tg:5 (conversation #1):\n我的卡密不能用\n订单 N1")
    assert "/reply 1" in said
    assert notify.buttons(en.kind, params(en), en.lang) == (
        (("Reply #1", "sup:v1:reply:1"), ("Close #1", "sup:v1:close:1")),)


async def test_support_then_the_next_message_and_the_operators_answer_by_button(db: Database):
    chat = await _shop(db)
    prompt = text(await chat.send(BUYER, "客服", lang="zh"))
    assert prompt == "请直接写下您的问题，我们会转给客服，客服的回复会发到这里。"
    # the next message is the text, even one that starts with a command word (购买 = buy)
    assert "会话 #1" in text(await chat.send(BUYER, "购买后没有收到卡密", lang="zh"))
    assert len(chat.outbox("support_message")) == 2
    shown = text(await chat.send(OPERATOR, callback="sup:v1:reply:1"))
    assert "Buyer: 购买后没有收到卡密" in shown and shown.endswith("Write your answer to #1 now.")
    done = await chat.send(OPERATOR, "Sent again, sorry!\nCode: ABC-123")
    assert text(done) == "Answer sent (conversation #1)."
    assert [b.data for b in buttons(done)] == ["sup:v1:reply:1", "sup:v1:close:1"]
    (answer,) = chat.outbox("support_answer")
    assert answer.lang == "zh"  # the buyer's language, to the buyer's account
    assert notify.render(answer.kind, params(answer), answer.lang) == (
        "客服回复（会话 #1）：\nSent again, sorry!\nCode: ABC-123\n\n继续咨询请发送 客服。")
    # the thread is kept: the buyer sees both sides
    seen = text(await chat.send(BUYER, "/support", lang="zh"))
    assert "您：购买后没有收到卡密" in seen and "客服：Sent again, sorry!" in seen
    # ... and a second message joins the same open thread
    await chat.send(BUYER, "谢谢", lang="zh")
    assert {params(r)["thread"] for r in chat.outbox("support_message")} == {1}


async def test_a_command_in_between_forgets_the_waiting_message(sqlite_db: Database):
    chat = await _shop(sqlite_db)
    await chat.send(BUYER, "/support")
    await chat.send(BUYER, "/me")
    reply = await chat.send(BUYER, "hello there")
    assert "已转给客服" not in text(reply) and "Sent to" not in text(reply)
    assert chat.outbox("support_message") == []


async def test_typed_reply_tickets_and_close(sqlite_db: Database):
    chat = await _shop(sqlite_db)
    await chat.send(BUYER, "/support where is my parcel?")
    await chat.send("tg:6", "/support refund please", lang="en")
    listed = await chat.send(OPERATOR, "/tickets")
    assert text(listed).startswith("Open support conversations: 2\n#1 tg:5, ")
    assert [b.data for b in buttons(listed)] == [
        "sup:v1:reply:1", "sup:v1:close:1", "sup:v1:reply:2", "sup:v1:close:2"]
    assert text(await chat.send(OPERATOR, "/reply 2 Refunded today.")) == \
        "Answer sent (conversation #2)."
    (answer,) = chat.outbox("support_answer")
    assert params(answer)["text"] == "Refunded today."
    assert text(await chat.send(OPERATOR, callback="sup:v1:close:1")) == \
        "Conversation #1 closed."
    assert text(await chat.send(OPERATOR, callback="sup:v1:close:1")) == \
        "Conversation #1 was already closed."
    (closed,) = chat.outbox("support_closed")
    assert notify.render(closed.kind, params(closed), closed.lang).startswith(
        "您与客服的会话 #1 已结束")
    assert text(await chat.send(OPERATOR, "/tickets")).startswith(
        "Open support conversations: 1\n#2 tg:6")
    # a buyer who writes after the close starts a new thread
    assert "#3" in text(await chat.send(BUYER, "/support again"))


@pytest.mark.parametrize("line,data", [
    ("/reply 1 hi", None), ("/tickets", None), ("", "sup:v1:reply:1"), ("", "sup:v1:close:1")])
async def test_only_operators_answer_list_or_close(sqlite_db: Database, line, data):
    chat = await _shop(sqlite_db)
    await chat.send(BUYER, "/support hi")
    await chat.send("tg:6", "/start", lang="en")
    world = chat.world()
    reply = await chat.send("tg:6", line, callback=data, lang="en")
    assert text(reply) == "Sorry, only the shop's operators can do that."
    assert chat.world() == world


async def test_bad_thread_numbers_and_buttons_are_refused_politely(sqlite_db: Database):
    chat = await _shop(sqlite_db)
    assert text(await chat.send(OPERATOR, "/reply 9 hello")) == \
        "There is no such support conversation."
    assert text(await chat.send(OTHER_OPERATOR, "/reply 9 你好", lang="zh")) == \
        "没有这个客服会话。"
    assert "Something is missing" in text(await chat.send(OPERATOR, "/reply 9"))
    for data in ("sup:v1:reply:x", "sup:v1:answer:1", "sup:v1:write", "sup:v1:nope:1"):
        assert text(await chat.send(OPERATOR, callback=data)) == \
            "This button is no longer valid. Please send the command again."
    assert chat.outbox("support_answer") == []


async def test_a_redelivered_message_is_one_message(sqlite_db: Database):
    chat = await _shop(sqlite_db)
    for _ in range(2):
        await chat.send(BUYER, "/support hello", request_id="wx:123")
    assert len(chat.outbox("support_message")) == 2  # one per operator, once


async def test_a_wait_older_than_ten_minutes_is_forgotten(sqlite_db: Database, monkeypatch):
    from datetime import timedelta

    from engine import pending

    chat = await _shop(sqlite_db)
    monkeypatch.setattr(pending, "TTL", timedelta(0))
    await chat.send(BUYER, "/support")
    await chat.send(BUYER, "hello after a long pause")
    assert chat.outbox("support_message") == []
