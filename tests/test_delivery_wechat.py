"""Delivery over signed WeChat callbacks (the real HTTP server, wechatpy against the
stand-in; docs/delivery.md): the buyer confirms an address in chat (收货地址), the operator
lists and ships (订单 发货, 发货), the buyer taps the receipt menu link (确认收货)."""

from __future__ import annotations

from engine import service
from storage.models import Shipment
from tests.wechat_harness import OPERATOR

ALICE = "oAlice_0000000000000000001"


async def test_a_wechat_buyers_address_shipping_and_receipt(shop):
    s = shop
    service.configure(s.db, {"store": {"settle_days": "7", "settle_from": "receipt"}})
    await s.say(ALICE, "你好")
    sold = await s.say(OPERATOR, f"线下 wx:{ALICE} TEA")
    assert "已为" in sold["Content"] and "登记线下销售" in sold["Content"]
    ref = s.last_order_of(f"wx:{ALICE}").ref
    mine = await s.say(ALICE, "订单")
    assert "📦 待发货——尚无收货地址" in mine["Content"]
    saved = await s.say(ALICE, "收货地址 张三 13800000000 北京市朝阳区示例路1号")
    assert "收货地址已保存：张三, 13800000000, 北京市朝阳区示例路1号" in saved["Content"]
    assert ref in saved["Content"]  # attached to the paid order waiting to ship
    listed = await s.say(OPERATOR, "订单 发货")
    assert "待发货订单：1 个" in listed["Content"] and "北京市朝阳区示例路1号" in listed["Content"]
    shipped = await s.say(OPERATOR, f"发货 {ref} 顺丰 SF1234567890")
    assert f"订单 {ref} 已标记发货：顺丰 SF1234567890" in shipped["Content"]
    choose = await s.say(ALICE, "确认收货")
    assert "哪个订单到货了" in choose["Content"] and "weixin://bizmsgmenu" in choose["Content"]
    menu_id = choose["Content"].split("msgmenuid=")[1].split('"')[0]
    label = f"✅ {ref} 已收货"
    assert label in choose["Content"]
    done = await s.say(ALICE, label, extra={"bizmsgmenuid": menu_id})
    assert f"谢谢！订单 {ref} 已确认收货。" in done["Content"]
    row = s.db.read(lambda x: x.get(Shipment, ref))
    assert row.received_by == "buyer" and s.order(ref).received_at is not None
