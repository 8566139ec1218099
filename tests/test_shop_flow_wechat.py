"""The whole shop over signed WeChat callbacks (docs/shop.md): the real HTTP server with the
real handlers and engine, wechatpy against the WeChat stand-in and wechatpayv3 against the
WeChat Pay stand-in. An operator lists products from chat, a buyer who joined through a
referrer's QR code searches (搜索), fills the cart (购物车), pays ONE WeChat Pay order by a signed
notification, gives the address (收货地址); the operator ships (发货); the buyer taps the menu
link under the shipping notice (确认收货) and the order settles from its receipt with exact
rebates per line."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from bot.wechat.sender import WeChatSender
from engine import service, users
from engine.state import snapshot
from engine.verify import verify
from handlers.notify import buttons, render
from scheduler import Deliverer
from storage.models import OrderLine
from tests.chat_transcript import picture
from tests.standins import wechat as sw
from tests.test_catalogue_wechat import image
from tests.wechat_harness import OPERATOR, Shop, checkout_path, open_shop

REFERRER = "oReferrer_00000000000000001"
BUYER = "oBuyer_0000000000000000001"
WECHAT_UA = "Mozilla/5.0 (iPhone) MicroMessenger/8.0.47(0x18002f2c)"
SHANGHAI = ZoneInfo("Asia/Shanghai")


async def deliver(s: Shop, at: datetime | None = None) -> list[dict]:
    """Run the outbox once through the adapter's own `WeChatSender`; what it sent."""
    sender = s.server.wechat.sender
    assert isinstance(sender, WeChatSender)
    mark = len(s.api.sent_messages)
    clock = {"clock": lambda: at} if at is not None else {}
    await Deliverer(s.db, {"wx": sender}, renderer=render, buttons=buttons, per_user=0.0,
                    **clock).drain()
    return list(s.api.sent_messages[mark:])


def menu_id_of(text: str, label: str) -> str:
    """The `msgmenuid` of the menu link whose label is `label`."""
    start = text.index(f"msgmenucontent={label}&msgmenuid=") + len(f"msgmenucontent={label}&msgmenuid=")
    return text[start:].split('"')[0]


async def test_a_parcel_from_listing_to_settled_rebates_over_wechat(sqlite_url, keys) -> None:
    async with open_shop(sqlite_url, keys) as s:
        listed = await s.say(OPERATOR, "上架 TEA 100.00 0.50 15 both 绿茶")
        assert "TEA" in listed["Content"]
        assert "添加第 1 张图片" in (await image(s, OPERATOR, picture(1)))["Content"]
        assert "CUP" in (await s.say(OPERATOR, "上架 CUP 30.00 0.40 0 points 茶杯"))["Content"]
        for line, said in (("描述 TEA category 茶叶", "分类已设为“茶叶”"),
                           ("描述 CUP category 茶叶", "分类已设为“茶叶”"),
                           ("注资 queue 1000.00", "当前余额 1000.00 CNY")):
            assert said in (await s.say(OPERATOR, line))["Content"]
        # The referrer bought TEA in the shop (an offline sale) before the window was set.
        await s.say(REFERRER, "我的")
        sold = await s.say(OPERATOR, f"线下 wx:{REFERRER} TEA")
        assert "登记线下销售" in sold["Content"]
        rules = await s.say(OPERATOR, "设置 store.settle_days 7 store.settle_from receipt")
        assert "store.settle_from：payment → receipt" in rules["Content"]

        # The buyer follows through the referrer's QR code and searches.
        code = users.invite_code(s.db, s.user_of(f"wx:{REFERRER}").id)
        await s.event(BUYER, "subscribe", f"qrscene_{code}")
        assert s.user_of(f"wx:{BUYER}").referrer_id == s.user_of(f"wx:{REFERRER}").id
        found = await s.say(BUYER, "搜索 绿茶")
        assert found["Content"] == "“绿茶”的搜索结果：1 件"
        card = s.sent_texts(BUYER)[-1]
        assert card.startswith("• 绿茶（TEA）—— 100.00 CNY")
        add = "🛒 加入购物车"
        added = await s.say(BUYER, add, extra={"bizmsgmenuid": menu_id_of(card, add)})
        assert added["Content"].startswith("已将 绿茶 ×1 加入购物车。")
        more = await s.say(BUYER, "➕", extra={"bizmsgmenuid": menu_id_of(added["Content"], "➕")})
        assert "1. 绿茶（TEA）×2 — 200.00 CNY" in more["Content"]
        assert "已将 茶杯 ×1 加入购物车" in (await s.say(BUYER, "购物车 add CUP"))["Content"]
        view = (await s.say(BUYER, "购物车"))["Content"]
        assert "合计：230.00 CNY" in view and "付款时会请您填写姓名、电话和收货地址" in view

        # One WeChat Pay order for the cart, paid by a signed notification.
        pay = "去结算：支付 230.00 CNY"
        reply = await s.say(BUYER, pay, extra={"bizmsgmenuid": menu_id_of(view, pay)})
        assert "订单 N2：绿茶 ×2 200.00 CNY; 茶杯 ×1 30.00 CNY。应付 230.00 CNY。" in reply["Content"]
        page = await s.http.get(checkout_path(reply["Content"]), headers={"User-Agent": WECHAT_UA})
        assert page.status_code == 200, page.text
        assert s.pay_api.orders["N2"]["total"] == 23000
        headers, body = sw.signed_pay_notification(
            s.keys, out_trade_no="N2", transaction_id="4200000001202612060000000002",
            total_fen=23000, payer_openid=BUYER)
        assert (await s.notify(headers, body)).status_code == 204
        assert s.order("N2").status == "pending" and s.order("N2").settles_at is None
        assert any(t.endswith("确认收货后开始退货期，退货期结束后开始返利；到货后请在“订单”中确认收货。")
                   for t in s.sent_texts(BUYER)), s.sent_texts(BUYER)

        # The address, the operator's list and 发货; the notice carries the receipt link.
        saved = await s.say(BUYER, "收货地址 张三 13800000000 北京市朝阳区示例路1号")
        assert "收货地址已保存：张三, 13800000000, 北京市朝阳区示例路1号" in saved["Content"]
        assert "N2" in saved["Content"]
        todo = (await s.say(OPERATOR, "订单 发货"))["Content"]
        assert "待发货订单：2 个" in todo and "北京市朝阳区示例路1号" in todo  # N1: the referrer's
        refused = await s.say(BUYER, "发货 N2 顺丰 SF1234567890")
        assert refused["Content"] == "抱歉，只有商店运营人员可以执行此操作。"
        shipped = await s.say(OPERATOR, "发货 N2 顺丰 SF1234567890")
        assert "订单 N2 已标记发货：顺丰 SF1234567890" in shipped["Content"]
        (notice,) = [m["text"]["content"] for m in await deliver(s) if m["touser"] == BUYER]
        assert notice.startswith("您的订单 N2 已发货：顺丰 SF1234567890。")
        label = "✅ N2 已收货"
        done = await s.say(BUYER, label, extra={"bizmsgmenuid": menu_id_of(notice, label)})
        assert "谢谢！订单 N2 已确认收货。" in done["Content"]

        # Settled at 00:00 Shanghai on the receipt date + 7 days, with exact rebates per line.
        order = s.order("N2")
        due = datetime.combine(order.received_at.astimezone(SHANGHAI).date() + timedelta(days=7),
                               time(0), SHANGHAI)
        assert order.settles_at == due
        service.settle(s.db, at=due - timedelta(seconds=1))
        assert s.order("N2").status == "pending"
        service.settle(s.db, at=due)
        assert s.order("N2").status == "settled"
        lines = s.db.read(lambda x: [
            (r.sku, r.qty, r.cash, r.entry_seq, r.minted, r.accelerated) for r in x.query(
                OrderLine).filter(OrderLine.order_no == order.no).order_by(OrderLine.line_no)])
        # the same figures as over Telegram (tests/test_shop_flow_telegram.py)
        assert lines == [("TEA", 2, 20000, 2, 29_400_000, 4000), ("CUP", 1, 3000, None, 3_528_000, 0)]
        state = s.db.read(snapshot)
        assert state["pools"] == {"queue": "990.00", "points": "99.00"}
        assert state["users"][f"wx:{BUYER}"]["points"] == "32.928000"
        assert state["users"][f"wx:{REFERRER}"]["wallet"] == "40.00"
        assert [(e["seq"], e["amount"], e["released"]) for e in state["entries"]] == [
            (1, "100.00", "40.00"), (2, "200.00", "0.00")]
        told = {m["touser"]: m["text"]["content"] for m in await deliver(s, at=due)}
        assert told[BUYER].startswith("订单 N2 已结算")
        assert "40.00" in told[REFERRER]
        report = verify(s.db)
        assert report.ok, report.problems
