"""The cart (docs/cart.md, SPEC §9): its lines and buttons, one checkout for all of it, and
the cart emptied when — and only when — its order is recorded as paid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from engine import cart, checkout, service
from engine.errors import Refusal
from storage.models import CartItem, CartOrder, Checkout, Order, OrderLine, Product
from tests.handlers_kit import OPERATOR, Chat, buttons, invoice, text

BUYER = "tg:5"


def items(chat: Chat) -> list[tuple[str, int]]:
    """The buyer's cart as stored: (sku, qty) in the cart's order."""
    return chat.db.read(lambda s: [(i.sku, i.qty) for i in s.execute(
        select(CartItem).order_by(CartItem.position)).scalars()])


def order_lines(chat: Chat, ref: str) -> list[tuple[str, int, int]]:
    def work(s):  # type: ignore[no-untyped-def]
        no = s.execute(select(Order.no).where(Order.ref == ref)).scalar_one()
        return [(x.sku, x.qty, x.total) for x in s.execute(
            select(OrderLine).where(OrderLine.order_no == no).order_by(OrderLine.line_no))
            .scalars()]
    return chat.db.read(work)


def orders_of(chat: Chat) -> list[Order]:
    return list(chat.db.read(lambda s: s.execute(select(Order).order_by(Order.no))
                             .scalars().all()))


def data_of(reply, prefix: str) -> str:  # type: ignore[no-untyped-def]
    (found,) = [b.data for b in buttons(reply) if b.data and b.data.startswith(prefix)]
    return found


async def shop_with_cart(memdb) -> Chat:  # type: ignore[no-untyped-def]
    """TEA (queue 100.00), RICE (points 50.00), SOFA (both 1000.00); the buyer has 2 TEA and
    1 RICE in their cart."""
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send(BUYER, "/start")
    await chat.send(BUYER, callback="cart:v1:add:TEA")
    await chat.send(BUYER, callback="cart:v1:add:TEA")
    await chat.send(BUYER, callback="cart:v1:add:RICE")
    return chat


async def shop_with_wallet_cash(memdb) -> Chat:  # type: ignore[no-untyped-def]
    """The buyer bought a TEA offline and its rebate was released: cash in the wallet."""
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send(BUYER, "/start")
    await chat.send(OPERATOR, f"/offline {_handle(chat)} TEA")
    service.release(memdb, at=datetime.now(UTC) + timedelta(days=16))
    return chat


# -- the cart's lines -----------------------------------------------------------------------

async def test_adding_a_product_again_adds_to_its_line_and_lines_keep_their_order(memdb):
    chat = await shop_with_cart(memdb)
    assert items(chat) == [("TEA", 2), ("RICE", 1)]
    reply = await chat.send(BUYER, "/cart")
    body = text(reply)
    assert "1. Green tea (TEA) ×2 — 200.00 CNY" in body
    assert "2. Rice (RICE) ×1 — 50.00 CNY" in body and "Total: 250.00 CNY" in body
    # what it earns, before paying: a queue entry for the queue products, points for RICE
    assert "queue entries worth 200.00 CNY" in body and "green points" in body
    assert [b.data for b in buttons(reply)][:6] == [
        "cart:v1:dec:TEA", "cart:v1:inc:TEA", "cart:v1:del:TEA",
        "cart:v1:dec:RICE", "cart:v1:inc:RICE", "cart:v1:del:RICE"]


async def test_plus_minus_and_remove_buttons_change_one_line(memdb):
    chat = await shop_with_cart(memdb)
    await chat.send(BUYER, callback="cart:v1:inc:RICE")
    assert items(chat) == [("TEA", 2), ("RICE", 2)]
    await chat.send(BUYER, callback="cart:v1:dec:TEA")
    await chat.send(BUYER, callback="cart:v1:dec:TEA")  # down to 0: the line goes
    assert items(chat) == [("RICE", 2)]
    reply = await chat.send(BUYER, callback="cart:v1:dec:TEA")
    assert "not in your cart" in text(reply)
    await chat.send(BUYER, callback="cart:v1:add:SOFA")
    await chat.send(BUYER, callback="cart:v1:del:RICE")
    assert items(chat) == [("SOFA", 1)]
    assert "Your cart is empty" in text(await chat.send(BUYER, callback="cart:v1:clear"))
    assert items(chat) == []


async def test_typed_cart_commands_work_in_both_languages(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    assert "已将 Rice ×3 加入购物车" in text(await chat.send(BUYER, "购物车 add RICE 3",
                                                         lang="zh"))
    await chat.send(BUYER, "/cart add tea")  # SKUs typed in any case
    assert items(chat) == [("RICE", 3), ("TEA", 1)]
    await chat.send(BUYER, "/cart del RICE")
    assert items(chat) == [("TEA", 1)]
    reply = await chat.send(BUYER, "/cart add TEA 0")
    assert "用法：/cart" in text(reply) and items(chat) == [("TEA", 1)]  # their language: zh


async def test_malformed_cart_buttons_are_refused_politely(memdb):
    chat = await shop_with_cart(memdb)
    before = items(chat)
    for data in ("cart:v1:add", "cart:v1:zap:TEA", "cart:v1:add:TEA:9", "cartpay:v1:x:abcdef12",
                 "cartpay:v1:c:short", "cart:v2:add:TEA"):
        reply = await chat.send(BUYER, callback=data)
        assert "button" in text(reply).lower(), (data, text(reply))
    assert items(chat) == before


async def test_a_cart_holds_at_most_50_lines(memdb):
    chat = Chat(memdb)
    await chat.send(BUYER, "/start")
    user = _handle(chat)
    for n in range(51):
        service.upsert_product(memdb, sku=f"P{n:02d}", price="1.00", margin="0.10",
                               lock_days=0, scheme="none")
    for n in range(50):
        cart.add(memdb, user=user, sku=f"P{n:02d}")
    with pytest.raises(Refusal) as refused:
        cart.add(memdb, user=user, sku="P50")
    assert refused.value.code == "cart_full"
    cart.add(memdb, user=user, sku="P00")  # an existing line still grows
    assert len(items(chat)) == 50 and items(chat)[0] == ("P00", 2)
    assert "Your cart is full (50 lines at most)" in text(
        await chat.send(BUYER, callback="cart:v1:add:P50"))
    await chat.send(BUYER, "/lang zh")
    assert "购物车已满（最多 50 项）" in text(await chat.send(BUYER, callback="cart:v1:add:P50"))


def _handle(chat: Chat) -> str:
    from storage.models import Identity, User

    return chat.db.read(lambda s: s.execute(select(User.handle).join(
        Identity, Identity.user_id == User.id).where(Identity.identity == BUYER)).scalar_one())


async def test_a_line_is_bounded_as_buy_quantities_are(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send(BUYER, "/cart add RICE 10000")
    reply = await chat.send(BUYER, callback="cart:v1:inc:RICE")
    assert "That amount is not valid" in text(reply)
    assert items(chat) == [("RICE", 10000)]


async def test_refusals_are_polite_in_both_languages(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    zh = "tg:6"
    await chat.send(BUYER, "/start")
    await chat.send(zh, "/start", lang="zh")
    assert "Your cart is empty: nothing to check out" in text(
        await chat.send(BUYER, "/cart pay"))
    assert "购物车是空的，没有可结算的商品" in text(await chat.send(zh, "/cart pay"))
    await chat.send(OPERATOR, "/product KETTLE 80.00 0.30 0 points Kettle")
    service.set_on_sale(memdb, sku="KETTLE", active=False)
    assert "not on sale" in text(await chat.send(BUYER, callback="cart:v1:add:KETTLE"))
    assert "该商品暂未销售" in text(await chat.send(zh, callback="cart:v1:add:KETTLE"))
    service.upsert_product(memdb, sku="LAMP", price="20.00", margin="0.10", lock_days=0,
                           scheme="none", stock=2)
    await chat.send(BUYER, "/cart add LAMP 2")
    await chat.send(zh, "/cart add LAMP 2")
    assert "not enough of that product left" in text(
        await chat.send(BUYER, callback="cart:v1:inc:LAMP"))
    assert "库存不足" in text(await chat.send(zh, callback="cart:v1:inc:LAMP"))
    assert items(chat) == [("LAMP", 2), ("LAMP", 2)]  # both carts, unchanged
    assert "no such product" in text(await chat.send(BUYER, "/cart add NOPE"))
    assert "购物车里没有这个商品" in text(await chat.send(zh, callback="cart:v1:dec:TEA"))


async def test_a_line_gone_off_sale_or_short_of_stock_is_marked_and_blocks_checkout(memdb):
    chat = await shop_with_cart(memdb)
    service.set_on_sale(memdb, sku="RICE", active=False)
    reply = await chat.send(BUYER, "/cart")
    assert "Not on sale at the moment" in text(reply)
    assert not [b for b in buttons(reply) if b.data and b.data.startswith("cartpay")]
    nonce_reply = await chat.send(BUYER, "/cart pay")
    assert "not on sale" in text(nonce_reply) and orders_of(chat) == []
    service.set_on_sale(memdb, sku="RICE", active=True)
    service.upsert_product(memdb, sku="TEA", price="100.00", margin="0.30", lock_days=15,
                           scheme="queue", stock=1)
    assert "Only 1 left" in text(await chat.send(BUYER, "/cart"))
    assert "not enough" in text(await chat.send(BUYER, "/cart pay")) and orders_of(chat) == []


# -- one checkout for the whole cart --------------------------------------------------------

async def test_checkout_is_one_invoice_for_the_cart_asking_for_an_address(memdb):
    chat = await shop_with_cart(memdb)
    reply = await chat.send(BUYER, callback=data_of(await chat.send(BUYER, "/cart"),
                                                      "cartpay:v1:c:"))
    inv = invoice(reply)
    assert (inv.amount, inv.currency) == (25000, "CNY")
    assert inv.need_name and inv.need_phone_number and inv.need_shipping_address
    assert "Green tea ×2 200.00 CNY" in inv.description and "Rice ×1 50.00 CNY" in inv.description
    assert "Your cart stays as it is until the order is paid" in text(reply)
    (order,) = orders_of(chat)
    assert order.status == "awaiting_payment"
    assert order_lines(chat, order.ref) == [("TEA", 2, 20000), ("RICE", 1, 5000)]
    assert items(chat) == [("TEA", 2), ("RICE", 1)]  # an open invoice empties nothing

    receipt = text(await chat.pay(BUYER, reply))
    assert f"Paid: order {order.ref} — 2 lines, total 250.00 CNY" in receipt
    assert "TEA ×2: 200.00 CNY" in receipt
    assert items(chat) == []
    assert chat.db.read(lambda s: s.execute(select(func.count()).select_from(CartOrder))
                        .scalar_one()) == 0
    assert [o.status for o in orders_of(chat)] == ["settled"]


async def test_a_cart_with_nothing_to_ship_asks_for_no_address(memdb):
    chat = Chat(memdb)
    await chat.send(BUYER, "/start")
    service.upsert_product(memdb, sku="CLASS", price="30.00", margin="0.10", lock_days=0,
                           scheme="points", kind="service")
    service.upsert_product(memdb, sku="CODE", price="5.00", margin="0.10", lock_days=0,
                           scheme="none", kind="digital")
    await chat.send(BUYER, "/cart add CLASS")
    await chat.send(BUYER, "/cart add CODE 2")
    inv = invoice(await chat.send(BUYER, "/cart pay"))
    assert inv.amount == 4000
    assert not (inv.need_name or inv.need_phone_number or inv.need_shipping_address)


async def test_a_product_added_after_the_invoice_stays_in_the_cart(memdb):
    chat = await shop_with_cart(memdb)
    reply = await chat.send(BUYER, "/cart pay")
    await chat.send(BUYER, callback="cart:v1:add:SOFA")
    await chat.send(BUYER, callback="cart:v1:add:TEA")
    await chat.pay(BUYER, reply)
    assert items(chat) == [("TEA", 1), ("SOFA", 1)]  # only what the order bought left


async def test_an_unpaid_cart_order_that_expires_leaves_the_cart_whole(memdb):
    chat = await shop_with_cart(memdb)
    reply = await chat.send(BUYER, "/cart pay")
    later = datetime.now(UTC) + timedelta(hours=2)
    assert checkout.expire_due(memdb, at=later) == 1
    assert [o.status for o in orders_of(chat)] == ["cancelled"]
    assert "Total: 250.00 CNY" in text(await chat.send(BUYER, "/cart"))
    assert items(chat) == [("TEA", 2), ("RICE", 1)]
    ok, _ = await checkout_ok(chat, reply)
    assert not ok


async def checkout_ok(chat: Chat, reply) -> tuple[bool, str | None]:  # type: ignore[no-untyped-def]
    from handlers import shop

    inv = invoice(reply)
    return await shop.precheck(chat.app, inv.token, inv.amount, inv.currency, BUYER)


async def test_checking_out_again_replaces_the_open_order_and_a_double_tap_opens_one(memdb):
    chat = await shop_with_cart(memdb)
    pay = data_of(await chat.send(BUYER, "/cart"), "cartpay:v1:c:")
    first = await chat.send(BUYER, callback=pay)
    again = await chat.send(BUYER, callback=pay)  # a double tap: the same invoice
    assert invoice(first).token == invoice(again).token and len(orders_of(chat)) == 1
    second = await chat.send(BUYER, "/cart pay")
    assert invoice(second).token != invoice(first).token
    assert [o.status for o in orders_of(chat)] == ["cancelled", "awaiting_payment"]
    assert await checkout_ok(chat, first) == (False, "This invoice is no longer open. "
                                                     "Please start again with /buy.")
    await chat.pay(BUYER, second)
    assert items(chat) == []


async def test_the_wallet_pays_for_the_whole_cart_at_once(memdb):
    chat = await shop_with_wallet_cash(memdb)
    await chat.send(BUYER, "/cart add RICE 2")
    open_reply = await chat.send(BUYER, "/cart pay")  # an invoice first, then the wallet
    reply = await chat.send(BUYER, callback=data_of(await chat.send(BUYER, "/cart"),
                                                      "cartpay:v1:w:"))
    assert "Paid: order" in text(reply)
    assert items(chat) == []
    statuses = [(o.method, o.status) for o in orders_of(chat)]
    assert statuses == [("offline", "settled"), ("telegram", "cancelled"),
                        ("wallet", "settled")]
    assert chat.state()["users"][_handle(chat)]["wallet"] == "0.00"
    assert (await checkout_ok(chat, open_reply))[0] is False
    assert memdb.read(lambda s: s.execute(select(Checkout.status).order_by(
        Checkout.created_at)).scalars().all()) == ["cancelled"]


async def test_sales_paused_shows_no_pay_buttons(memdb):
    chat = await shop_with_cart(memdb)
    await chat.send(OPERATOR, "/pause")
    reply = await chat.send(BUYER, "/cart")
    assert "Sales are paused" in text(reply)
    assert not [b for b in buttons(reply) if b.data and b.data.startswith("cartpay")]
    assert "Sales are paused" in text(await chat.send(BUYER, "/cart pay"))
    assert orders_of(chat) == []


async def test_points_pay_part_of_the_cart_and_the_rest_is_one_invoice(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send(BUYER, "/start")
    await chat.send(OPERATOR, f"/offline {_handle(chat)} RICE 2")  # mints points
    held = chat.state()["users"][_handle(chat)]["points"]
    assert held != "0.000000"
    await chat.send(BUYER, "/cart add TEA")
    await chat.send(BUYER, "/cart add RICE")
    reply = await chat.send(BUYER, callback=data_of(await chat.send(BUYER, "/cart"),
                                                      "cartpay:v1:p:"))
    inv = invoice(reply)
    (order,) = [o for o in orders_of(chat) if o.status == "awaiting_payment"]
    assert order.points_used > 0 and inv.amount == order.cash == 15000 - order.points_value
    assert chat.state()["users"][_handle(chat)]["points"] == "0.000000"  # spent at checkout
    assert items(chat) == [("TEA", 1), ("RICE", 1)]
    await chat.pay(BUYER, reply)
    assert items(chat) == []


async def test_lines_are_named_in_the_buyers_language(memdb):
    from engine import catalogue

    chat = Chat(memdb)
    await chat.send(BUYER, "/start")
    await chat.send("tg:6", "/start", lang="zh")
    service.upsert_product(memdb, sku="TEA", price="100.00", margin="0.30", lock_days=15,
                           scheme="queue", name="龙井茶")
    catalogue.describe(memdb, sku="TEA", field="name_en", text="Longjing tea")
    assert "Added Longjing tea ×1" in text(await chat.send(BUYER, callback="cart:v1:add:TEA"))
    assert "已将 龙井茶 ×1 加入购物车" in text(await chat.send("tg:6", callback="cart:v1:add:TEA"))
    assert "1. Longjing tea (TEA) ×1 — 100.00 CNY" in text(await chat.send(BUYER, "/cart"))
    assert "Longjing tea ×1 100.00 CNY" in invoice(await chat.send(BUYER, "/cart pay")).description


async def test_the_units_a_carts_open_order_holds_still_count_for_that_cart(memdb):
    chat = Chat(memdb)
    await chat.send(BUYER, "/start")
    await chat.send("tg:6", "/start")
    service.upsert_product(memdb, sku="LAST", price="40.00", margin="0.10", lock_days=0,
                           scheme="none", stock=1)
    await chat.send(BUYER, "/cart add LAST")
    first = await chat.send(BUYER, "/cart pay")  # the order takes the last unit
    assert memdb.read(lambda s: s.execute(select(Product.stock).where(
        Product.sku == "LAST")).scalar_one()) == 0
    again = await chat.send(BUYER, "/cart")
    assert "⚠" not in text(again) and data_of(again, "cartpay:v1:c:")
    second = await chat.send(BUYER, "/cart pay")  # replaces the first: its unit comes back
    assert invoice(second).token != invoice(first).token
    assert [o.status for o in orders_of(chat)] == ["cancelled", "awaiting_payment"]
    assert "not enough of that product left" in text(await chat.send("tg:6", "/cart add LAST"))


async def test_the_catalogues_add_to_cart_button_fills_the_cart(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    shown = await chat.send(BUYER, "/shop")
    adds = [b for b in buttons(shown) if b.data and b.data.startswith("cart:v1:add:")]
    assert adds, text(shown)
    for b in adds:
        await chat.send(BUYER, callback=b.data)
    assert sorted(sku for sku, _ in items(chat)) == sorted(
        b.data.rsplit(":", 1)[1] for b in adds)


async def test_a_repeated_tap_after_paying_answers_the_same_order(memdb):
    chat = await shop_with_wallet_cash(memdb)
    await chat.send(BUYER, "/cart add RICE")
    view = await chat.send(BUYER, "/cart")
    wallet, online = data_of(view, "cartpay:v1:w:"), data_of(view, "cartpay:v1:c:")
    first = text(await chat.send(BUYER, callback=wallet))
    again = text(await chat.send(BUYER, callback=wallet))  # the cart is empty by now
    assert first == again and "Paid: order" in first
    assert [o.method for o in orders_of(chat)] == ["offline", "wallet"]

    await chat.send(BUYER, "/cart add TEA")
    invoice_reply = await chat.send(BUYER, callback=online.replace(online[-8:], "tapTAP01"))
    await chat.pay(BUYER, invoice_reply)
    repeat = await chat.send(BUYER, callback=online.replace(online[-8:], "tapTAP01"))
    assert "Paid: order" in text(repeat) and not [
        i for i in repeat.items if type(i).__name__ == "Invoice"]
    assert len(orders_of(chat)) == 3 and items(chat) == []
