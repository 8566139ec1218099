"""`客服` over signed WeChat callbacks: the buyer's message reaches the operator (on WeChat: no
buttons, the text says `/reply N`), the operator's typed answer reaches the buyer as a
customer-service message."""

from __future__ import annotations

from handlers.notify import buttons, render
from scheduler import Deliverer
from tests.wechat_harness import OPERATOR, Shop  # its `shop` fixture is conftest's plugin

BUYER = "oBuyer_00000000000000000001"


async def deliver(shop: Shop) -> None:
    sender = shop.server.wechat.sender
    stats = await Deliverer(shop.db, {"wx": sender}, renderer=render, buttons=buttons,
                            per_user=0.0).drain()
    assert stats["sent"] >= 1, stats


async def test_support_over_wechat_both_ways(shop: Shop) -> None:
    await shop.say(OPERATOR, "帮助")  # the operator has an account (where notices go)
    reply = await shop.say(BUYER, "客服 卡密显示已被使用\n订单 N1")
    assert reply["Content"] == "已转给客服（会话 #1），回复会发到这里。"
    await deliver(shop)
    (notice,) = [t for t in shop.sent_texts(OPERATOR) if "会话 #1" in t]
    assert notice.startswith(f"来自 wx:{BUYER} 的客服消息（会话 #1）：\n卡密显示已被使用\n订单 N1")
    assert "/reply 1" in notice

    answered = await shop.say(OPERATOR, "回复 1 已为您补发：NEW-1")
    # the reply's buttons become WeChat menu links under it
    assert answered["Content"].startswith("回复已发送（会话 #1）。\n<a href=\"weixin://bizmsgmenu")
    await deliver(shop)
    assert shop.sent_texts(BUYER)[-1] == (
        "客服回复（会话 #1）：\n已为您补发：NEW-1\n\n继续咨询请发送 客服。")
