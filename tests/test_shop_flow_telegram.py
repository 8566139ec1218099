"""The whole shop over the Telegram stand-in (docs/shop.md): the real python-telegram-bot
Application polling the loopback Bot API, the real conversations, engine and outbox sender.

An operator lists a photo product in a category and a second one, a buyer who came through a
referrer's invite browses the category, fills the cart with buttons, pays ONE invoice that asks
for the shipping details; the operator ships, the buyer confirms with the button under the
shipping notice, and the order settles from its receipt with exact rebates per line. A digital
product's code is delivered once; refusals along the way are polite in both languages."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bot.senders import TelegramSender
from engine import service
from engine.verify import verify
from handlers.notify import buttons, render
from scheduler import Deliverer
from storage.models import Order, OrderLine, Shipment
from storage.ratelimit import RateLimiter
from tests.chat_transcript import Tape, picture, save_transcript
from tests.standins.telegram_api import Call, make_successful_payment_update
from tests.test_cart_channels import callback_data, press_many
from tests.test_catalogue_telegram import photo_message, push_message
from tests.test_telegram_e2e import LINK, OPERATOR, Shop, buy_and_pay, running_shop

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")

REFERRER, BUYER = 3, 2
SHANGHAI = ZoneInfo("Asia/Shanghai")
ORDER_INFO = {"name": "Zhang San", "phone_number": "+86 138 0000 0000",
              "shipping_address": {"country_code": "CN", "state": "Beijing", "city": "Beijing",
                                   "street_line1": "1 Example Road", "street_line2": "",
                                   "post_code": "100000"}}


async def deliver(s: Shop, at: datetime | None = None) -> list[Call]:
    """Run the outbox once through the real `TelegramSender` (its clock at `at`, for what
    happens days later); the messages it sent."""
    mark = len(s.api.calls)
    clock = {"clock": lambda: at} if at is not None else {}
    await Deliverer(s.app.db, {"tg": TelegramSender(s.application.bot)}, renderer=render,
                    buttons=buttons, per_user=0.0, **clock).drain()
    return [c for c in s.api.calls[mark:] if c.is_("sendMessage")]


def keys_of(call: Call) -> list[str]:
    markup = call.params.get("reply_markup") or {}
    return [b.get("callback_data", "") for row in markup.get("inline_keyboard", []) for b in row]


def order_row(s: Shop, ref: str) -> Order:
    return s.app.db.read(lambda x: x.execute(select(Order).where(Order.ref == ref)).scalar_one())


def line_rows(s: Shop, ref: str) -> list[tuple[Any, ...]]:
    no = order_row(s, ref).no
    return s.app.db.read(lambda x: [
        (r.sku, r.qty, r.total, r.cash, r.entry_seq, r.minted, r.accelerated)
        for r in x.execute(select(OrderLine).where(OrderLine.order_no == no)
                           .order_by(OrderLine.line_no)).scalars()])


async def pay_with_order_info(s: Shop, user: int, token: str, amount: int, charge: str) -> str:
    update = make_successful_payment_update(user, token, amount, charge,
                                            first_name=f"User{user}")
    update["message"]["successful_payment"]["order_info"] = ORDER_INFO
    del update["update_id"]  # the stand-in numbers it after the updates before it
    mark = len(s.api.calls)
    s.api.push_update(update)
    (call,) = await s.replies(user, mark, 1)
    return str(call.params["text"])


async def list_the_shop(s: Shop) -> None:
    """The operator's part: a photo product in a category, a second product beside it, the
    queue pool seeded, and the return window counted from receipt."""
    (saved,) = await push_message(s, OPERATOR, photo_message(
        s, OPERATOR, picture(1), "/product TEA 100.00 0.50 15 both 绿茶"))
    assert "Product TEA saved" in saved.text and "Photo 1 added to TEA" in saved.text
    assert "CUP" in await s.say(OPERATOR, "/product CUP 30.00 0.40 0 points 茶杯")
    for line in ("/describe TEA name_en Green tea", "/describe TEA category Tea",
                 "/describe TEA en Spring leaves, picked by hand.",
                 "/describe CUP name_en Tea cup", "/describe CUP category Tea"):
        assert "TEA" in (text := await s.say(OPERATOR, line)) or "CUP" in text, text
    assert "1000.00" in await s.say(OPERATOR, "/deposit queue 1000.00")


async def test_a_parcel_from_listing_to_settled_rebates_over_telegram(sqlite_url: str) -> None:
    async with running_shop(sqlite_url, limiter=RateLimiter.disabled()) as s:
        tape = Tape(s.api)  # what the users sent, for the chat transcripts (docs/shop.md)
        await list_the_shop(s)
        # The referrer bought TEA before the window was set: settled at once, entry #1.
        invite = await s.send(REFERRER, "/invite", expect=2)
        code = LINK.search(invite[0].params["text"]).group(1)  # type: ignore[union-attr]
        assert "N1" in await buy_and_pay(s, REFERRER, "charge-ref-1")
        changed = await s.say(OPERATOR, "/settings store.settle_days 7 store.settle_from receipt")
        assert "7" in changed and "receipt" in changed, changed

        # The buyer arrives through the invite, browses the Tea category, fills the cart.
        await s.say(BUYER, f"/start {code}")
        (menu,) = await s.send(BUYER, "/shop")
        tea = [k for k in keys_of(menu) if k.startswith("cat:")][0]
        head, *cards, foot = await press_many(s, BUYER, tea, 4)
        assert head.text == "Tea:" and foot.is_("sendMessage")
        cup, tea_card = cards  # by SKU; TEA has its photo
        assert (cup.method, tea_card.method) == ("sendMessage", "sendPhoto")
        assert "Green tea (TEA) — 100.00 CNY" in tea_card.text
        assert keys_of(cup) == ["buy:v1:CUP:1", "cart:v1:add:CUP"]
        assert "Added Green tea ×1" in await s.press(BUYER, "cart:v1:add:TEA")
        await s.press(BUYER, "cart:v1:inc:TEA")
        assert "Added Tea cup ×1" in await s.press(BUYER, "cart:v1:add:CUP")
        (view,) = await s.send(BUYER, "/cart")
        assert "Total: 230.00 CNY" in view.text

        # One invoice for the cart, asking for the shipping details; paid with them.
        sent = await press_many(s, BUYER, callback_data(view, "cartpay:v1:c:"), 2)
        (invoice,) = [c for c in sent if c.is_("sendInvoice")]
        p = invoice.params
        assert [int(x["amount"]) for x in p["prices"]] == [23000]
        assert p["need_name"] and p["need_phone_number"] and p["need_shipping_address"]
        assert await s.precheck(BUYER, p["payload"], 23000) == (True, None)
        receipt = await pay_with_order_info(s, BUYER, p["payload"], 23000, "charge-cart-1")
        assert "order N2 — 2 lines, total 230.00 CNY" in receipt, receipt
        assert receipt.endswith("Your rebates start when the return window after delivery "
                                "closes: confirm receipt in /orders when the order arrives.")
        order = order_row(s, "N2")
        assert order.status == "pending" and order.settles_at is None  # waits for receipt
        ship = s.app.db.read(lambda x: x.get(Shipment, "N2"))
        assert (ship.name, ship.phone) == ("Zhang San", "+86 138 0000 0000")

        # The operator lists what to ship and ships it; the buyer's notice has the button.
        listed = await s.say(OPERATOR, "/orders ship")
        assert "Orders to ship: 2" in listed and "1 Example Road" in listed  # N1: the referrer's
        assert "marked shipped: SF SF1234567890" in \
            await s.say(OPERATOR, "/ship N2 SF SF1234567890")
        (notice,) = [c for c in await deliver(s) if c.chat_id == BUYER]
        assert notice.text.startswith("Your order N2 has shipped: SF SF1234567890.")
        assert keys_of(notice) == ["recv:v1:N2"]
        assert "Thank you! Order N2 is marked received." in await s.press(BUYER, "recv:v1:N2")

        # It settles at 00:00 Shanghai on the receipt date + 7 days, not a second before.
        order = order_row(s, "N2")
        local = order.received_at.astimezone(SHANGHAI).date() + timedelta(days=7)
        due = datetime.combine(local, time(0), SHANGHAI)
        assert order.settles_at == due
        service.settle(s.app.db, at=due - timedelta(seconds=1))
        assert order_row(s, "N2").status == "pending"
        service.settle(s.app.db, at=due)
        assert order_row(s, "N2").status == "settled"

        # Rebates per line (SPEC §3, §4, §9). TEA ×2: cash 200.00, pool + ceil(20000×0.5×0.2),
        # entry #2 of 200.00, the referrer's entry #1 accelerated floor(20000×0.2) = 40.00,
        # points: c = 60.00, v = 42.00 at the price 30.00/21 → 29.4 points. CUP: c = 9.00,
        # v = 6.30 at the price 90.00/50.4 → 3.528 points.
        assert line_rows(s, "N2") == [("TEA", 2, 20000, 20000, 2, 29_400_000, 4000),
                                      ("CUP", 1, 3000, 3000, None, 3_528_000, 0)]
        state = s.state()
        assert state["pools"] == {"queue": "990.00", "points": "99.00"}
        assert state["points"]["supply"] == "53.928000"
        users = state["users"]
        assert users["tg:2"]["points"] == "32.928000" and users["tg:2"]["basis"] == "230.00"
        assert users["tg:3"]["wallet"] == "40.00"
        assert [(e["seq"], e["user"], e["amount"], e["released"]) for e in state["entries"]] == [
            (1, "tg:3", "100.00", "40.00"), (2, "tg:2", "200.00", "0.00")]
        told = {c.chat_id: c.text for c in await deliver(s, at=due)}
        matures = order_row(s, "N2").matures_at.astimezone(SHANGHAI)  # payment date + 15 days
        assert matures.time() == time(0)
        assert told[BUYER].startswith(  # the release date as the buyer reads it (store-local)
            "Order N2 settled: its rebates are granted.\nQueue entry #2 for 200.00 CNY: released "
            f"in queue order from {matures:%Y-%m-%d} 00:00.")
        assert "Green points received: 32.92" in told[BUYER]
        assert "40.00" in told[REFERRER]
        report = verify(s.app.db)
        assert report.ok, report.problems
        # docs/img: the screenshots of docs/shop.md are these parts (messages by number)
        for chat, who, parts in (
                (BUYER, "buyer", {"browse": slice(2, 10), "checkout": slice(15, 23),
                                  "receipt": slice(22, 26)}),
                (OPERATOR, "operator", {"listing": slice(0, 10), "shipping": slice(18, 22)})):
            save_transcript(s.api.calls, tape, f"shop_{who}", chat=chat, files=s.api.files_by_id,
                            title=f"Rebate shop — the {who}'s chat", parts=parts)


async def test_a_digital_code_is_delivered_once_over_telegram(sqlite_url: str) -> None:
    async with running_shop(sqlite_url, limiter=RateLimiter.disabled()) as s:
        tape = Tape(s.api)
        assert "GAME" in await s.say(OPERATOR, "/product GAME 30.00 0.20 0 none Game key")
        assert "digital" in await s.say(OPERATOR, "/kind GAME digital")
        assert "GAME: 2 new codes added" in await s.say(OPERATOR, "/codes GAME\nKEY-AAAA-1\nKEY-BBBB-2")
        token, amount = await s.buy(BUYER, "GAME")
        assert amount == 3000 and await s.precheck(BUYER, token, amount) == (True, None)
        assert "N1" in await s.pay(BUYER, token, amount, "charge-game-1")
        await s.pay(BUYER, token, amount, "charge-game-1")  # Telegram delivering it again
        codes, settled = [c.text for c in await deliver(s) if c.chat_id == BUYER]
        assert codes == ("Your codes for order N1:\nGAME: KEY-AAAA-1\n"
                         "Keep them safe; /mycodes shows them again.")
        assert settled == "Order N1 settled: its rebates are granted."
        assert [c for c in await deliver(s) if c.chat_id == BUYER] == []  # once
        assert "Order N1, GAME: KEY-AAAA-1" in await s.say(BUYER, "/mycodes")
        assert "GAME Game key: 1 / 1 / 0, stock 1" in await s.say(OPERATOR, "/codes")
        save_transcript(s.api.calls, tape, "shop_digital", chat=BUYER, files=s.api.files_by_id,
                        title="Rebate shop — a digital code")
        report = verify(s.app.db)
        assert report.ok, report.problems


ZH_BUYER, EN_BUYER = 8, 9


async def test_refusals_along_the_way_are_polite_in_both_languages(sqlite_url: str) -> None:
    async with running_shop(sqlite_url, limiter=RateLimiter.disabled()) as s:
        await list_the_shop(s)
        assert await s.say(OPERATOR, "/stock CUP 1") == (
            "CUP (茶杯): 1 left to sell. A cart or order asking for more is told it is out of "
            "stock.")
        for user, lang in ((EN_BUYER, "en"), (ZH_BUYER, "zh")):
            await s.say(user, "/start", lang=lang)
        # Setting stock is for operators, with a number; a digital product's stock is its codes
        assert await s.say(EN_BUYER, "/stock CUP 100") == \
            "Sorry, only the shop's operators can do that."
        assert "is not a stock count" in await s.say(OPERATOR, "/stock CUP lots")
        await s.say(OPERATOR, "/product GAME 30.00 0.20 0 none Game key")
        await s.say(OPERATOR, "/kind GAME digital")
        assert "its stock is its unused codes" in await s.say(OPERATOR, "/stock GAME 5")
        before = s.state()
        # More cups in a cart than the shop has
        assert "Added Tea cup ×1" in await s.say(EN_BUYER, "/cart add CUP")
        more = await s.say(EN_BUYER, "/cart add CUP")
        assert "Sorry, there are not enough of that product left for this order." in more, more
        zh = await s.say(ZH_BUYER, "/cart add CUP 2", lang="zh")
        assert "抱歉，该商品库存不足，无法下单。" in zh, zh
        # A product taken off sale
        assert "TEA" in await s.say(OPERATOR, "/offsale TEA")
        assert "That product is not on sale at the moment." in \
            await s.press(EN_BUYER, "cart:v1:add:TEA")
        assert "该商品暂未销售。" in await s.say(ZH_BUYER, "/cart add TEA", lang="zh")
        # Shipping is for operators
        assert await s.say(EN_BUYER, "/ship N1 SF 123") == \
            "Sorry, only the shop's operators can do that."
        assert await s.say(ZH_BUYER, "/ship N1 SF 123", lang="zh") == \
            "抱歉，只有商店运营人员可以执行此操作。"
        after = s.state()
        assert after == before  # nothing refused moved anything


def test_the_shipping_notice_carries_the_receipt_button_in_the_buyers_language() -> None:
    assert buttons("order_shipped", {"order": "N7"}, "en") == ((("✅ N7 received", "recv:v1:N7"),),)
    assert buttons("order_shipped", {"order": "N7"}, "zh") == ((("✅ N7 已收货", "recv:v1:N7"),),)
    for junk in (None, 7, "N 7", "x" * 70):  # never a button from a malformed row
        assert buttons("order_shipped", {"order": junk}, "en") == ()
