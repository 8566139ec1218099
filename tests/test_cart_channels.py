"""One checkout for a cart over the channels' stand-ins: a Telegram invoice (line items, the
shipping details asked for) paid by `successful_payment`, and one WeChat Pay order paid by a
signed notification. Each records one order with two lines and empties the cart."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from engine.verify import verify
from storage.models import CartItem, Order, OrderLine, Shipment
from tests.standins import wechat as sw
from tests.test_telegram_e2e import OPERATOR, Shop, running_shop
from tests.wechat_harness import checkout_path

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")

BUYER = 7
ALICE = "oAlice_000000000000000000001"
WECHAT_UA = "Mozilla/5.0 (iPhone) MicroMessenger/8.0.47(0x18002f2c)"


def lines_of(db, ref: str) -> list[tuple[str, int, int]]:  # type: ignore[no-untyped-def]
    def work(s):  # type: ignore[no-untyped-def]
        no = s.execute(select(Order.no).where(Order.ref == ref)).scalar_one()
        return [(x.sku, x.qty, x.total) for x in s.execute(select(OrderLine).where(
            OrderLine.order_no == no).order_by(OrderLine.line_no)).scalars()]
    return db.read(work)


def cart_rows(db) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    return db.read(lambda s: [(i.sku, i.qty) for i in s.execute(
        select(CartItem).order_by(CartItem.position)).scalars()])


def callback_data(call, prefix: str) -> str:  # type: ignore[no-untyped-def]
    keyboard = call.params["reply_markup"]["inline_keyboard"]
    (found,) = [b["callback_data"] for row in keyboard for b in row
                if b.get("callback_data", "").startswith(prefix)]
    return str(found)


async def press_many(s: Shop, user: int, data: str, expect: int):  # type: ignore[no-untyped-def]
    mark = len(s.api.calls)
    s.api.push_callback(user, data)
    return await s.replies(user, mark, expect)


async def test_a_two_line_cart_is_one_telegram_invoice_asking_for_shipping_details(
        sqlite_url: str) -> None:
    async with running_shop(sqlite_url) as s:
        assert "TEA" in await s.say(OPERATOR, "/product TEA 100.00 0.50 15 both Green tea")
        assert "CUP" in await s.say(OPERATOR, "/product CUP 30.00 0.40 0 points Tea cup")
        assert "Added Green tea ×1" in await s.press(BUYER, "cart:v1:add:TEA")
        await s.press(BUYER, "cart:v1:inc:TEA")
        await s.press(BUYER, "cart:v1:add:CUP")
        (view,) = await s.send(BUYER, "/cart")
        assert "Total: 230.00 CNY" in view.params["text"]

        sent = await press_many(s, BUYER, callback_data(view, "cartpay:v1:c:"), 2)
        (inv,) = [c for c in sent if c.is_("sendInvoice")]
        params = inv.params
        assert [int(p["amount"]) for p in params["prices"]] == [23000]
        assert params["need_name"] and params["need_phone_number"]
        assert params["need_shipping_address"]
        assert "Green tea ×2 200.00 CNY" in params["description"]
        assert "Tea cup ×1 30.00 CNY" in params["description"]
        assert cart_rows(s.app.db) == [("TEA", 2), ("CUP", 1)]  # not emptied by an invoice

        token = params["payload"]
        assert await s.precheck(BUYER, token, 23000) == (True, None)
        # the payment carries what the invoice asked for (the delivery helper keeps it)
        receipt = await s.pay_shipped(BUYER, token, 23000, "charge-cart-1", name="Li Si",
                                      phone="+86 139 0000 0000", city="Shanghai",
                                      street="8 Cart Lane", post_code="200000")
        orders = s.app.db.read(lambda x: x.execute(select(Order)).scalars().all())
        (order,) = orders
        assert order.status == "settled" and order.cash == 23000
        assert f"order {order.ref} — 2 lines, total 230.00 CNY" in receipt
        assert lines_of(s.app.db, order.ref) == [("TEA", 2, 20000), ("CUP", 1, 3000)]
        assert cart_rows(s.app.db) == []
        shipment = s.app.db.read(lambda x: x.get(Shipment, order.ref))
        assert (shipment.name, shipment.phone) == ("Li Si", "+86 139 0000 0000")
        assert "8 Cart Lane" in shipment.address
        assert "Your cart is empty" in await s.say(BUYER, "/cart")
        # the same charge delivered again records nothing more
        await s.pay(BUYER, token, 23000, "charge-cart-1")
        assert len(s.app.db.read(lambda x: x.execute(select(Order)).scalars().all())) == 1
        report = verify(s.app.db)
        assert report.ok, report.problems


async def test_a_cart_is_one_wechat_pay_order_paid_by_a_signed_notification(shop) -> None:
    assert "已将 Oolong tea ×2 加入购物车" in (await shop.say(ALICE, "购物车 add TEA 2"))["Content"]
    await shop.say(ALICE, "购物车 add CUP")
    reply = await shop.say(ALICE, "购物车 pay")
    page = await shop.http.get(checkout_path(reply["Content"]), headers={"User-Agent": WECHAT_UA})
    assert page.status_code == 200, page.text
    order = shop.last_order_of(f"wx:{ALICE}")
    placed = shop.pay_api.orders[order.ref]
    assert placed["total"] == order.cash == 27000  # 2 × 120.00 + 30.00: one order
    assert placed["description"] == f"TEA x2 等2项 (2 lines) ({order.ref})"
    assert cart_rows(shop.db) == [("TEA", 2), ("CUP", 1)]

    headers, body = sw.signed_pay_notification(
        shop.keys, out_trade_no=order.ref, transaction_id="4200000001202601010000000042",
        total_fen=27000, payer_openid=ALICE)
    r = await shop.notify(headers, body)
    assert r.status_code == 204
    paid = shop.order(order.ref)
    assert paid.status == "settled"
    assert lines_of(shop.db, order.ref) == [("TEA", 2, 24000), ("CUP", 1, 3000)]
    assert cart_rows(shop.db) == []
    assert any(f"订单 {order.ref}" in t or order.ref in t for t in shop.sent_texts(ALICE))
    again = await asyncio.gather(*(shop.notify(headers, body) for _ in range(2)))
    assert [a.status_code for a in again] == [204, 204]
    assert shop.order(order.ref).status == "settled"
    report = verify(shop.db)
    assert report.ok, report.problems
