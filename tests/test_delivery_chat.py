"""Delivery through the conversations (docs/delivery.md): the buyer's address, the operator's
list and `/ship`, the receipt button and 确认收货, `/orders` with each order's status —
in English on Telegram and in Chinese on WeChat; operator-only refusals; the outbox texts."""

from __future__ import annotations

from sqlalchemy import select

from engine import service
from handlers.notify import render
from storage.models import Order, Shipment
from tests.handlers_kit import OPERATOR, Chat, buttons, text

WX_OPERATOR = "wx:operator"


def _products(chat: Chat) -> None:
    """SOFA (goods, queue+points), CLASS (a service); the return window counts from receipt."""
    db = chat.db
    service.configure(db, {"store": {"settle_days": "7", "settle_from": "receipt"}})
    service.upsert_product(db, sku="SOFA", price="1000.00", margin="0.35", lock_days=30,
                           scheme="both", name="Sofa", kind="goods")
    service.upsert_product(db, sku="CLASS", price="200.00", margin="0.30", lock_days=0,
                           scheme="queue", name="Class", kind="service")
    service.deposit(db, pool="queue", amount="10000.00")


def _order(chat: Chat, ref: str) -> Order:
    return chat.db.read(lambda s: s.execute(select(Order).where(Order.ref == ref)).scalar_one())


async def test_a_telegram_buyer_pays_gives_an_address_is_shipped_and_confirms_receipt(memdb):
    chat = Chat(memdb)
    _products(chat)
    await chat.send("tg:5", "/start")
    await chat.pay("tg:5", await chat.send("tg:5", "/buy SOFA"))
    mine = text(await chat.send("tg:5", "/orders"))
    assert "N1 · SOFA ×1 · 1000.00 CNY — paid; the return window starts when you confirm " \
        "receipt, and rebates 7 days after\n   📦 to be shipped — no delivery address yet: " \
        "send /address" in mine

    saved = text(await chat.send("tg:5", "/address Zhang_San 13800000000 1 Example Road"))
    assert "Delivery address saved: Zhang_San, 13800000000, 1 Example Road" in saved
    assert "waiting to ship: N1." in saved
    listed = text(await chat.send(OPERATOR, "/orders ship"))
    assert "Orders to ship: 1" in listed and "• N1 · SOFA ×1 ·" in listed
    assert "Zhang_San, 13800000000, 1 Example Road" in listed

    done = text(await chat.send(OPERATOR, "/ship N1 SF SF1234567890"))
    assert "Order N1 is marked shipped: SF SF1234567890." in done
    assert text(await chat.send(OPERATOR, "/orders ship")) == \
        "Nothing to ship: every paid goods order has shipped."
    [note] = chat.outbox("order_shipped")
    assert "Your order N1 has shipped: SF SF1234567890." in \
        render(note.kind, __import__("json").loads(note.params), "en")

    reply = await chat.send("tg:5", "/orders")
    assert "\n   📦 shipped " in text(reply) and ": SF SF1234567890" in text(reply)
    assert [b.data for b in buttons(reply)] == ["recv:v1:N1"]
    got = text(await chat.send("tg:5", callback="recv:v1:N1"))
    assert "Thank you! Order N1 is marked received." in got
    assert "Its rebates come on" in got
    assert _order(chat, "N1").received_at is not None
    again = text(await chat.send("tg:5", callback="recv:v1:N1"))
    assert "Order N1 was already marked received on" in again
    mine = text(await chat.send("tg:5", "/orders"))
    assert "— paid; the return window closes and rebates start " in mine
    assert "\n   📦 received " in mine
    assert buttons(await chat.send("tg:5", "/orders")) == []


async def test_a_wechat_buyer_confirms_an_address_and_receipt_in_chinese(memdb):
    chat = Chat(memdb, channel="wechat", operators=(WX_OPERATOR,))
    _products(chat)
    await chat.send("wx:o5", "你好", lang=None)
    assert "已为" in text(await chat.send(WX_OPERATOR, "/offline wx:o5 SOFA", lang=None))
    assert _order(chat, "N1").status == "pending"
    none = text(await chat.send("wx:o5", "收货地址", lang=None))
    assert "您还没有收货地址" in none
    saved = text(await chat.send("wx:o5", "收货地址 张三 13800000000 北京市朝阳区示例路1号",
                                 lang=None))
    assert "收货地址已保存：张三, 13800000000, 北京市朝阳区示例路1号" in saved
    assert "N1" in saved
    shipped = text(await chat.send(WX_OPERATOR, "发货 N1 顺丰 SF1234567890", lang=None))
    assert "订单 N1 已标记发货：顺丰 SF1234567890" in shipped
    choose = await chat.send("wx:o5", "确认收货", lang=None)
    assert "哪个订单到货了" in text(choose)
    assert [b.data for b in buttons(choose)] == ["recv:v1:N1"]
    assert "谢谢！订单 N1 已确认收货。" in text(await chat.send("wx:o5", "确认收货 N1", lang=None))
    mine = text(await chat.send("wx:o5", "订单", lang=None))
    assert "📦 已于 " in mine and " 收货" in mine
    assert "您没有待确认收货" in text(await chat.send("wx:o5", "确认收货", lang=None))


async def test_shipping_holding_and_the_list_are_for_operators_only(memdb):
    chat = Chat(memdb)
    _products(chat)
    await chat.send("tg:5", "/start")
    await chat.pay("tg:5", await chat.send("tg:5", "/buy SOFA"))
    for line in ("/ship N1 SF SF1", "/hold N1", "/orders ship"):
        assert text(await chat.send("tg:5", line)) == \
            "Sorry, only the shop's operators can do that."
    await chat.send("tg:5", "/lang zh")
    assert text(await chat.send("tg:5", "/ship N1 SF SF1")) == "抱歉，只有商店运营人员可以执行此操作。"
    assert chat.outbox("order_shipped") == []
    assert memdb.read(lambda s: s.get(Shipment, "N1")) is None


async def test_a_hold_stops_the_automatic_receipt_and_shows_in_the_list(memdb):
    chat = Chat(memdb)
    _products(chat)
    await chat.send("tg:5", "/start")
    await chat.pay("tg:5", await chat.send("tg:5", "/buy SOFA"))
    held = text(await chat.send(OPERATOR, "/hold N1"))
    assert "Order N1: automatic receipt held." in held
    assert "(automatic receipt held)" in text(await chat.send(OPERATOR, "/orders ship"))
    assert "automatic receipt released" in text(await chat.send(OPERATOR, "/hold N1 off"))


async def test_bad_delivery_input_gets_a_polite_answer_in_the_users_language(memdb):
    chat = Chat(memdb)
    _products(chat)
    await chat.send("tg:5", "/start")
    await chat.send("tg:6", "/start")
    await chat.pay("tg:5", await chat.send("tg:5", "/buy SOFA"))
    await chat.pay("tg:5", await chat.send("tg:5", "/buy CLASS"))
    assert "Usage: /ship ORDER CARRIER NUMBER" in text(await chat.send(OPERATOR, "/ship N1"))
    assert "is not a carrier and a tracking number" in \
        text(await chat.send(OPERATOR, "/ship N1 SF ab!cd"))
    assert "physical goods" in text(await chat.send(OPERATOR, "/ship N2 SF SF1"))
    assert "There is no such order." in text(await chat.send(OPERATOR, "/ship N9 SF SF1"))
    assert "That address is not complete" in text(await chat.send("tg:5", "/address A B"))
    assert "That address is not complete" in \
        text(await chat.send("tg:5", "/address A notaphone Some Road 1"))
    assert "has not shipped yet" in text(await chat.send("tg:5", "/receive N1"))
    await chat.send(OPERATOR, "/ship N1 SF SF1")
    assert "There is no such order." in text(await chat.send("tg:6", callback="recv:v1:N1"))
    await chat.send("tg:6", "/lang zh")
    assert "没有这个订单" in text(await chat.send("tg:6", "确认收货 N1"))
    for data in ("recv:v1", "recv:v1:N1:x", "recv:v2:N1"):
        assert "This button is no longer valid" in text(await chat.send("tg:5", callback=data))
    assert _order(chat, "N1").received_at is None


def test_the_outbox_texts_for_shipping_and_receipt_in_both_languages():
    shipped = {"order": "N1", "carrier": "SF", "tracking": "SF1"}
    assert render("order_shipped", shipped, "en").startswith(
        "Your order N1 has shipped: SF SF1.")
    assert render("order_shipped", shipped, "zh").startswith("您的订单 N1 已发货：SF SF1。")
    received = {"order": "N1", "by": "auto", "settles_at": "2026-08-20T00:00:00+08:00"}
    assert render("order_received", received, "en") == (
        "Order N1 now counts as received (shipped some days ago and no problem reported).\n"
        "Its rebates come on 2026-08-20 00:00.")
    assert render("order_received", received, "zh").startswith("订单 N1 已确认收货（发货多日")


async def test_telegrams_shipping_details_reach_the_order_of_the_invoices_buyer(memdb):
    from handlers.delivery import shipping_details
    from tests.handlers_kit import invoice

    chat = Chat(memdb)
    _products(chat)
    await chat.send("tg:5", "/start")
    opened = await chat.send("tg:5", "/buy SOFA")
    inv = invoice(opened)
    where = {"street_line1": "1 Example Road", "city": "Beijing", "country_code": "CN"}
    assert not await shipping_details(chat.app, token=inv.token, identity="tg:6",
                                      name="Li Si", phone="13900000000", address=where)
    assert not await shipping_details(chat.app, token=inv.token, identity="tg:5",
                                      name="Zhang San", phone=None, address=where)
    assert await shipping_details(chat.app, token=inv.token, identity="tg:5",
                                  name="Zhang San", phone="13800000000", address=where)
    await chat.pay("tg:5", opened)
    row = memdb.read(lambda s: s.get(Shipment, inv.order))
    assert (row.name, row.phone, row.address) == \
        ("Zhang San", "13800000000", "1 Example Road, Beijing, CN")
    assert "Zhang San, 13800000000, 1 Example Road, Beijing, CN" in \
        text(await chat.send(OPERATOR, "/orders ship"))
