"""Outbox buttons on WeChat (`WeChatSender.send_buttons`): a support notice reaches a WeChat
operator with its Reply and Close buttons as `weixin://bizmsgmenu` links, and tapping Reply
asks for the answer, which then reaches the buyer. Outside the 48-hour window (a template
message) and without a database, the text goes alone."""

from __future__ import annotations

import re

from bot.wechat import StorefrontWeChatClient, WeChatSender
from handlers.notify import buttons, render
from scheduler import Deliverer
from tests.standins import wechat as sw
from tests.wechat_harness import (  # its `shop` fixture is conftest's plugin
    FRESH,
    OPERATOR,
    STALE,
    Shop,
    seen_fresh_and_stale,
)

BUYER = "oBuyer_00000000000000000001"
MENU = re.compile(r'<a href="weixin://bizmsgmenu\?msgmenucontent=([^&]+)&msgmenuid=(\d+)">'
                  r"([^<]+)</a>")


async def deliver(shop: Shop) -> None:
    stats = await Deliverer(shop.db, {"wx": shop.server.wechat.sender}, renderer=render,
                            buttons=buttons, per_user=0.0).drain()
    assert stats["sent"] >= 1, stats


async def test_a_wechat_operator_taps_reply_on_a_support_notice(shop: Shop) -> None:
    await shop.say(OPERATOR, "帮助")  # the operator has an account (where notices go)
    await shop.say(BUYER, "客服 卡密显示已被使用 <a href=\"http://evil\">x</a>")
    await deliver(shop)
    (notice,) = [t for t in shop.sent_texts(OPERATOR) if "会话 #1" in t]
    links = MENU.findall(notice)
    assert [(content, label) for content, _id, label in links] == [
        ("回复 #1", "回复 #1"), ("结束 #1", "结束 #1")]
    # what the buyer wrote stays text: the notice's only links are the shop's two
    assert notice.count("<a ") == 2 and "＜a href" in notice
    assert "/reply 1" in notice  # the typed way is still said

    reply_id = links[0][1]
    asked = await shop.say(OPERATOR, "回复 #1", extra={"bizmsgmenuid": reply_id})
    assert asked["Content"].endswith("请写下对 #1 的回复。")
    answered = await shop.say(OPERATOR, "已为您补发：NEW-1")
    assert answered["Content"].startswith("回复已发送（会话 #1）。")
    await deliver(shop)
    assert shop.sent_texts(BUYER)[-1].startswith("客服回复（会话 #1）：\n已为您补发：NEW-1")

    closed = await shop.say(OPERATOR, "结束 #1", extra={"bizmsgmenuid": links[1][1]})
    assert closed["Content"].startswith("会话 #1 已结束。")


APPID, SECRET = "wx1234567890abcdef", "s3cret"
ROWS = ((("Reply #3", "sup:v1:reply:3"), ("Close #3", "sup:v1:close:3")),)


async def test_outside_the_window_or_without_a_database_the_text_goes_alone(memdb):
    seen_fresh_and_stale(memdb)
    with sw.FakeWeChatAPI(appid=APPID, secret=SECRET) as api:
        client = StorefrontWeChatClient(APPID, SECRET, api.base_url)
        await WeChatSender(client, memdb, "TPL").send_buttons(f"wx:{STALE}", "Message", ROWS)
        assert api.sent_messages == []
        (tpl,) = api.template_messages
        assert tpl["data"] == {"content": {"value": "Message"}}

        await WeChatSender(client, None, "TPL").send_buttons(f"wx:{FRESH}", "Plain", ROWS)
        await WeChatSender(client, memdb, "TPL").send_buttons(f"wx:{FRESH}", "None", ())
        assert [m["text"]["content"] for m in api.sent_messages] == ["Plain", "None"]

        await WeChatSender(client, memdb, "TPL").send_buttons(f"wx:{FRESH}", "Linked", ROWS)
        text = api.sent_messages[-1]["text"]["content"]
        assert text.startswith("Linked\n")
        assert [label for _c, _id, label in MENU.findall(text)] == ["Reply #3", "Close #3"]
