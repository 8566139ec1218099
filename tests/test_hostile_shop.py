"""The shop attacked from outside over the Telegram Bot API stand-in (the real
python-telegram-bot Application polling it): forged buttons for another buyer's cart, order
or support thread; junk quantities, stock and texts; photos nobody should download; replayed
and doubled payments of a cart; a cart changed under its open invoice; two checkouts of one
cart at once; a /support flood. Each attack: nothing that should not change changes, the reply
is polite in the user's language (never a stack trace), and the books verify.
(WeChat: tests/test_hostile_shop_wechat.py.)"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from engine import cart, cart_checkout, service
from engine.errors import Refusal
from engine.verify import verify
from storage.models import (
    CartItem,
    JournalTxn,
    Order,
    Outbox,
    ProductPhoto,
    Shipment,
    SupportMessage,
)
from storage.ratelimit import RateLimiter
from tests.helpers import seed_shop
from tests.standins.telegram_api import make_message, make_successful_payment_update, make_user
from tests.test_cart_channels import callback_data, press_many
from tests.test_catalogue_telegram import photo_message, png, push_message
from tests.test_telegram_e2e import OPERATOR, Shop, running_shop

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")

BUYER, THIEF, ZH = 7, 8, 9
TRACE = ("Traceback", "Error", "Exception", "sqlalchemy", "None")


def polite(text: str) -> str:
    assert text and not any(w in text for w in TRACE), text
    return text


def count(s: Shop, model: Any, *where: Any) -> int:
    return int(s.app.db.read(lambda x: x.execute(
        select(func.count()).select_from(model).where(*where)).scalar_one()))


def books_ok(s: Shop) -> None:
    report = verify(s.app.db)
    assert report.ok, report.problems


async def listed(s: Shop) -> None:
    assert "TEA" in await s.say(OPERATOR, "/product TEA 100.00 0.50 15 both Green tea")
    assert "CUP" in await s.say(OPERATOR, "/product CUP 30.00 0.40 0 points Tea cup")
    assert "1000.00" in await s.say(OPERATOR, "/deposit queue 1000.00")
    await s.say(BUYER, "/start")
    await s.say(THIEF, "/start")
    await s.say(ZH, "/start", lang="zh")


async def invoice_of(s: Shop, user: int) -> tuple[str, int]:
    """The buyer's /cart, then its checkout button: the invoice's payload and amount."""
    (view,) = await s.send(user, "/cart")
    sent = await press_many(s, user, callback_data(view, "cartpay:v1:c:"), 2)
    (invoice,) = [c for c in sent if c.is_("sendInvoice")]
    return invoice.params["payload"], int(invoice.params["prices"][0]["amount"])


async def test_forged_buttons_and_junk_input_change_nothing(sqlite_url: str) -> None:
    async with running_shop(sqlite_url, limiter=RateLimiter.disabled()) as s:
        await listed(s)
        await s.press(BUYER, "cart:v1:add:TEA")
        await s.press(BUYER, "cart:v1:add:CUP")
        token, amount = await invoice_of(s, BUYER)
        assert await s.precheck(BUYER, token, amount) == (True, None)
        assert "N1" in await s.pay(BUYER, token, amount, "charge-1")
        assert "marked shipped" in await s.say(OPERATOR, "/ship N1 SF SF1234567890")
        await s.press(BUYER, "cart:v1:add:TEA")  # the buyer's next cart
        thread = await s.say(BUYER, "/support where is my parcel?")
        assert "#1" in thread
        before = s.state()
        carts = s.app.db.read(lambda x: sorted(
            (i.sku, i.qty) for i in x.execute(select(CartItem)).scalars()))
        # The thief forges the buyer's buttons: each acts on the thief's own (empty) cart or
        # is refused; the buyer's order is not received, the thread not answered or closed.
        for data in ("cart:v1:del:TEA", "cart:v1:dec:TEA", "cart:v1:clear", "recv:v1:N1",
                     "sup:v1:reply:1", "sup:v1:close:1", "sup:v1:answer:1", "pay:v1:N1:w",
                     "cartpay:v1:c:AAAAAAAA", "cartpay:v1:w:AAAAAAAA", "cartpay:v1:x:A",
                     "cart:v1:inc:" + "X" * 60, "cart:v1:add:TEA:9", "cart:v1:add:../N1",
                     "recv:v1:N1:x", "recv:v1:" + "9" * 40, "sup:v1:reply:-1",
                     "sup:v1:reply:99999999999999999999", "cart:v2:add:TEA", "\u202ecart"):
            polite(await s.press(THIEF, data))
        assert s.app.db.read(lambda x: x.execute(select(Order.received_at).where(
            Order.ref == "N1")).scalar_one()) is None
        assert "only the shop's operators" in await s.press(THIEF, "sup:v1:reply:1")
        assert "只有商店运营人员" in await s.press(ZH, "sup:v1:close:1")
        # Typed junk: quantities, stock, SKUs, texts.
        for text in ("/cart add TEA -5", "/cart add TEA 0", "/cart add TEA 1e3",
                     "/cart add TEA 99999999999999999999999", "/cart add TEA abc",
                     "/cart add TEA 10001", "/cart add TEA 1.5",
                     "/cart add " + "Z" * 300, "/cart add TEA\x00 1", "/cart pay nonsense",
                     "/receive N1", "/reply 1 stolen answer", "/stock TEA 5",
                     "/cart del NOPE", "/cart add \u202eAET"):
            polite(await s.say(THIEF, text))
        for text in ("/stock CUP -1", "/stock CUP 99999999999999999999999", "/stock CUP 1.5",
                     "/stock NOPE 5", "/stock CUP ∞"):
            polite(await s.say(OPERATOR, text))
        polite(await s.say(ZH, "/cart add TEA -5", lang="zh"))
        after = s.state()
        assert after == before
        assert s.app.db.read(lambda x: sorted(
            (i.sku, i.qty) for i in x.execute(select(CartItem)).scalars())) == carts
        assert count(s, SupportMessage) == 1
        books_ok(s)


async def test_the_51st_line_and_long_or_odd_texts_are_refused_politely(sqlite_url: str) -> None:
    async with running_shop(sqlite_url, limiter=RateLimiter.disabled()) as s:
        await listed(s)
        for n in range(51):
            service.upsert_product(s.app.db, sku=f"P{n:02d}", price="1.00", margin="0.10",
                                   lock_days=0, scheme="none")
        for n in range(50):
            cart.add(s.app.db, user=f"tg:{BUYER}", sku=f"P{n:02d}")
        full = await s.press(BUYER, "cart:v1:add:P50")
        assert "Your cart is full (50 lines at most)" in full, full
        assert count(s, CartItem) == 50
        assert "50" in polite(await s.say(BUYER, "/cart add P50 3"))
        assert count(s, CartItem) == 50
        # 10 kB, control and bidi characters in a support message, an address, a code.
        big = "长" * 10_000
        for text in (f"/support {big}", "/support \x00\x07\x1b[31m red", "/support \u202egnp.exe",
                     f"/codes CUP\n{big}"):
            polite(await s.say(BUYER, text))
        notes = s.app.db.read(lambda x: [m.text for m in x.execute(select(SupportMessage))
                                         .scalars()])
        assert all(len(t) <= 4096 and "\x00" not in t and "\u202e" not in t for t in notes), \
            [t[:40] for t in notes]
        await s.say(OPERATOR, "/kind CUP digital")
        for text in (f"/codes CUP\n{'K' * 10_000}", "/codes CUP\nK\x00EY-1\n\u202eKEY-2",
                     f"/describe TEA en {big}", "/describe TEA en \x00\x1b[2J"):
            polite(await s.say(OPERATOR, text))
        books_ok(s)


async def test_photos_from_strangers_and_huge_photos_are_never_downloaded(
        sqlite_url: str) -> None:
    async with running_shop(sqlite_url, limiter=RateLimiter.disabled()) as s:
        await listed(s)
        (answer,) = await push_message(s, THIEF, photo_message(s, THIEF, png(3), "/photo TEA"))
        polite(answer.text)
        doc = {"file_id": s.api.store_file(b"%PDF-1.4 junk", "doc-thief"),
               "file_unique_id": "u-doc", "file_name": "codes.txt", "file_size": 13}
        (answer,) = await push_message(s, THIEF, make_message(
            THIEF, from_user=make_user(THIEF), message_id=77001, document=doc,
            caption="/codes TEA"))
        polite(answer.text)
        # A 20 MB "photo" from an operator: its claimed size refuses it before any download.
        huge = photo_message(s, OPERATOR, png(5), "/photo TEA")
        huge["photo"][0]["file_size"] = 20 * 1024 * 1024
        (answer,) = await push_message(s, OPERATOR, huge)
        polite(answer.text)
        assert not s.api.calls_of("getFile")
        assert count(s, ProductPhoto) == 0


async def test_a_cart_paid_twice_or_replayed_is_one_order(sqlite_url: str) -> None:
    async with running_shop(sqlite_url, limiter=RateLimiter.disabled()) as s:
        await listed(s)
        await s.press(BUYER, "cart:v1:add:TEA")
        await s.press(BUYER, "cart:v1:add:CUP")
        token, amount = await invoice_of(s, BUYER)
        assert amount == 13000
        assert await s.precheck(BUYER, token, amount) == (True, None)
        first = await s.pay(BUYER, token, amount, "charge-A")
        assert "N1" in first, first
        # Telegram delivering it again, and again under a new update id: recorded once.
        for _ in range(2):
            update = make_successful_payment_update(BUYER, token, amount, "charge-A")
            del update["update_id"]
            s.api.push_update(update)
        await asyncio.sleep(0.5)
        purchases = count(s, JournalTxn, JournalTxn.kind == "purchase")
        assert purchases == 1
        # A second, different charge for the same invoice: no second order; the existing
        # code refunds or flags it.
        flags = count(s, Outbox, Outbox.kind == "payment_flag")
        polite(await s.pay(BUYER, token, amount, "charge-B"))
        assert count(s, Order) == 1
        assert count(s, Outbox, Outbox.kind == "payment_flag") > flags \
            or count(s, JournalTxn, JournalTxn.kind.like("%refund%")) > 0
        assert count(s, CartItem) == 0  # the cart emptied once, by the paid order
        books_ok(s)


async def test_an_invoice_paid_after_its_cart_changed_buys_what_it_showed(
        sqlite_url: str) -> None:
    async with running_shop(sqlite_url, limiter=RateLimiter.disabled()) as s:
        await listed(s)
        await s.press(BUYER, "cart:v1:add:TEA")
        token, amount = await invoice_of(s, BUYER)
        assert amount == 10000
        await s.press(BUYER, "cart:v1:add:CUP")  # after the invoice was opened
        await s.press(BUYER, "cart:v1:inc:TEA")
        assert await s.precheck(BUYER, token, amount) == (True, None)
        polite(await s.pay(BUYER, token, amount, "charge-C"))
        order = s.app.db.read(lambda x: x.execute(select(Order)).scalar_one())
        assert order.total == 10000 and order.status in ("pending", "settled")
        # The invoice's own line left the cart; what was added after it stayed.
        assert s.app.db.read(lambda x: sorted(
            (i.sku, i.qty) for i in x.execute(select(CartItem)).scalars())) == [
            ("CUP", 1), ("TEA", 1)]
        books_ok(s)


async def test_two_checkouts_of_one_cart_at_once_leave_one_payable_invoice(
        db_url: str) -> None:
    async with running_shop(db_url, limiter=RateLimiter.disabled()) as s:
        await listed(s)
        await s.press(BUYER, "cart:v1:add:TEA")
        (view,) = await s.send(BUYER, "/cart")
        data = callback_data(view, "cartpay:v1:c:")
        mark = len(s.api.calls)
        s.api.push_callback(BUYER, data)
        s.api.push_callback(BUYER, data.rsplit(":", 1)[0] + ":BBBBBBBBBBBB")
        await s.replies(BUYER, mark, 2)
        await asyncio.sleep(0.5)
        invoices = [c for c in s.api.calls[mark:] if c.is_("sendInvoice")]
        assert 1 <= len(invoices) <= 2
        payable = s.app.db.read(lambda x: x.execute(select(func.count()).select_from(Order)
                                                    .where(Order.status == "awaiting_payment"))
                                .scalar_one())
        assert payable == 1
        # The same race in the engine itself: two threads checking the cart out at once.
        both = await asyncio.gather(*(asyncio.to_thread(
            cart_checkout.open_checkout, s.app.db, user=f"tg:{BUYER}", channel="telegram",
            method="telegram", key=f"race-{n}") for n in range(4)), return_exceptions=True)
        # each one an order, or the refusal a tap on a replaced invoice gets (polite in chat)
        assert all(isinstance(r, dict) or (isinstance(r, Refusal) and r.code == "not_payable")
                   for r in both), both
        assert any(isinstance(r, dict) for r in both)
        payable = s.app.db.read(lambda x: x.execute(select(func.count()).select_from(Order)
                                                    .where(Order.status == "awaiting_payment"))
                                .scalar_one())
        assert payable == 1
        books_ok(s)


async def test_a_support_flood_is_rate_limited_politely(sqlite_url: str) -> None:
    async with running_shop(sqlite_url, limiter=RateLimiter()) as s:
        await s.say(BUYER, "/start")
        answers = [await s.say(BUYER, f"/support help {n}") for n in range(8)]
        sent = [a for a in answers if "Sent to the shop's staff" in a]
        assert 1 <= len(sent) <= 5, answers
        assert all(polite(a) for a in answers)
        assert "please" in answers[-1].lower()
        assert count(s, SupportMessage) == len(sent)
        assert count(s, Outbox, Outbox.kind == "support_message") == len(sent)
        zh = [await s.say(ZH, f"/support 帮助 {n}", lang="zh") for n in range(8)]
        assert "请" in zh[-1] and "Sent" not in zh[-1], zh[-1]


async def test_a_payment_with_a_hostile_shipping_address_is_recorded_address_refused(
        sqlite_url: str) -> None:
    async with running_shop(sqlite_url, limiter=RateLimiter.disabled()) as s:
        await listed(s)
        await s.press(BUYER, "cart:v1:add:TEA")
        token, amount = await invoice_of(s, BUYER)
        update = make_successful_payment_update(BUYER, token, amount, "charge-addr")
        update["message"]["successful_payment"]["order_info"] = {
            "name": "Zhang\u202e San\x00", "phone_number": "+86 138\x07 0000",
            "shipping_address": {"country_code": "CN", "state": "长" * 10_000, "city": "\x1b[2J",
                                 "street_line1": "<script>x</script>", "street_line2": "",
                                 "post_code": "1" * 5000}}
        del update["update_id"]
        mark = len(s.api.calls)
        s.api.push_update(update)
        (receipt,) = await s.replies(BUYER, mark, 1)
        assert "N1" in polite(receipt.text)
        assert count(s, JournalTxn, JournalTxn.kind == "purchase") == 1  # paid is paid
        ship = s.app.db.read(lambda x: x.get(Shipment, "N1"))
        for value in (ship.name, ship.phone, ship.address) if ship is not None else ():
            assert value is None or (value.isprintable() and len(value) <= 400), value
        books_ok(s)


def test_a_wallet_payment_racing_a_checkout_of_the_cart(db: Any) -> None:
    """The wallet pays the cart while a checkout of it opens: never two paid orders."""
    seed_shop(db, users=("A",), at=None, products=[("LAMP", "50.00", "0.50", 0, "both",
                                                    "Lamp")])
    service.upsert_product(db, sku="CREDIT", price="100.00", margin="0.50", lock_days=0,
                           scheme="queue")
    service.deposit(db, pool="queue", amount="1000.00")
    service.buy(db, user="A", sku="CREDIT", method="offline", key="credit:A")
    service.release(db)
    cart.add(db, user="A", sku="LAMP")
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(cart_checkout.pay_from_wallet, db, user="A", key="w"),
                pool.submit(cart_checkout.open_checkout, db, user="A", channel="telegram",
                            method="telegram", key="c")]
        done = [j.exception() or j.result() for j in jobs]
    assert all(isinstance(r, dict) or isinstance(r, Refusal) for r in done), done
    statuses = db.read(lambda x: x.execute(select(Order.status).where(
        Order.method != "offline")).scalars().all())
    assert statuses.count("settled") + statuses.count("pending") <= 1
    assert "awaiting_payment" not in statuses or "settled" not in statuses, statuses
    report = verify(db)
    assert report.ok, report.problems
