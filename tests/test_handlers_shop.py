"""Browsing, buying and paying through the conversations (SPEC §3, §4, §8)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from engine import checkout, service
from handlers import shop
from storage.models import Checkout, JournalTxn, Order, User
from storage.ratelimit import RateLimiter
from tests.handlers_kit import OPERATOR, Chat, buttons, invoice, text


def _order(chat: Chat, ref: str) -> Order:
    return chat.db.read(lambda s: s.execute(select(Order).where(Order.ref == ref)).scalar_one())


def _purchases(chat: Chat) -> int:
    return chat.db.read(lambda s: s.execute(select(func.count()).select_from(JournalTxn)
                                            .where(JournalTxn.kind == "purchase")).scalar_one())


async def _with_wallet(chat: Chat, who: str) -> None:
    """`who` buys TEA (a sale recorded by staff) and the release 16 days later pays 100.00
    into their wallet."""
    await chat.send(who, "/start")
    assert "Offline sale recorded" in text(await chat.send(OPERATOR, f"/offline {who} TEA"))
    service.release(chat.db, at=datetime.now(UTC) + timedelta(days=16))
    assert chat.state()["users"][who]["wallet"] == "100.00"


async def test_shop_lists_each_product_with_price_rebate_in_plain_words_and_a_buy_button(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    reply = await chat.send("tg:5", "/shop")
    body = text(reply)
    assert "• Green tea (TEA) — 100.00 CNY" in body
    assert "the full 100.00 CNY comes back to your wallet" in body and "15 days" in body
    assert "about 10.50 points at today's price 1.00" in body  # RICE, SPEC §4 (shown: 2 places)
    assert [b.data for b in buttons(reply)] == [  # on each product's card
        "buy:v1:RICE:1", "cart:v1:add:RICE", "buy:v1:SOFA:1", "cart:v1:add:SOFA",
        "buy:v1:TEA:1", "cart:v1:add:TEA"]


async def test_buy_opens_an_order_awaiting_payment_with_an_unguessable_expiring_token(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send("tg:5", "/start")
    before = chat.state()
    reply = await chat.send("tg:5", "/buy TEA 2")
    inv = invoice(reply)
    assert (inv.amount, inv.currency, inv.order) == (20000, "CNY", "N1")
    assert len(inv.token) >= 22  # ≥ 128 random bits, URL-safe base64
    row = memdb.read(lambda s: s.get(Checkout, inv.token))
    assert row.order_ref == "N1" and row.status == "open" and row.amount == 20000
    assert timedelta(minutes=29) < row.expires_at - row.created_at <= timedelta(minutes=30)
    assert _order(chat, "N1").status == "awaiting_payment"
    assert chat.state() == before  # nothing is granted before the money arrives
    assert "waiting for your payment of 200.00 CNY" in text(reply)
    other = await chat.send("tg:5", "/buy TEA 2")
    assert invoice(other).token != inv.token


async def test_payment_is_recorded_exactly_once_per_charge_with_a_receipt(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    reply = await chat.send("tg:5", "/buy TEA")
    first = await chat.pay("tg:5", reply, charge="tg-charge-1")
    receipt = text(first)
    assert "Paid: order N1 — TEA ×1, total 100.00 CNY." in receipt
    assert "Queue entry #1 for 100.00 CNY: released in queue order from" in receipt
    again = await shop.paid(chat.app, invoice(reply).token, 10000, "CNY", "tg-charge-1",
                            "telegram", "tg:5")
    assert text(again) == receipt
    assert _purchases(chat) == 1
    assert len(chat.state()["entries"]) == 1
    assert chat.state()["pools"]["queue"] == "10006.00"  # ceil(100 × 0.30 × 0.20) in
    row = memdb.read(lambda s: s.get(Checkout, invoice(reply).token))
    assert row.status == "paid"


async def test_precheck_refuses_expired_mismatched_foreign_or_unknown_invoices(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    inv = invoice(await chat.send("tg:5", "/buy TEA"))
    await chat.send("tg:6", "/start")
    assert await shop.precheck(chat.app, inv.token, 10000, "CNY", "tg:5") == (True, None)
    cases = [((inv.token, 9999, "CNY", "tg:5"), "amount does not match"),
             ((inv.token, 10000, "USD", "tg:5"), "amount does not match"),
             ((inv.token, 10000, "CNY", "tg:6"), "belongs to someone else"),
             (("nope", 10000, "CNY", "tg:5"), "not known"),
             (("x" * 500, 10000, "CNY", "tg:5"), "not known")]
    for args, expected in cases:
        ok, error = await shop.precheck(chat.app, *args)
        assert not ok and expected in error, (args, error)
    later = datetime.now(UTC) + timedelta(minutes=31)
    assert checkout.precheck(memdb, token=inv.token, amount=10000, currency="CNY",
                             identity="tg:5", at=later) == "expired"


async def test_mismatched_payment_is_refused_and_flagged_to_every_operator(memdb):
    chat = Chat(memdb, operators=(OPERATOR, "wx:boss"))
    await chat.setup_shop()
    reply = await chat.send("tg:5", "/buy TEA")
    before = chat.state()
    inv = invoice(reply)
    answer = await shop.paid(chat.app, inv.token, 5000, "CNY", "tg-charge-9", "telegram",
                             "tg:5")
    assert "could not match it to order N1" in text(answer)
    assert chat.state() == before and _purchases(chat) == 0
    assert _order(chat, "N1").status == "awaiting_payment"
    flags = [json.loads(f.params) for f in chat.outbox("payment_flag")]
    assert {f["identity"] for f in flags} == {OPERATOR, "wx:boss"}
    assert all(f["code"] == "payment_mismatch" and f["order"] == "N1" and f["amount"] == 5000
               and f["charge"] == "tg-charge-9" and f["buyer"] == "tg:5" for f in flags)
    # the same charge reported again flags nobody twice
    await shop.paid(chat.app, inv.token, 5000, "CNY", "tg-charge-9", "telegram", "tg:5")
    assert len(chat.outbox("payment_flag")) == 2


async def test_receipt_inside_a_return_window_says_when_rebates_start(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    service.configure(memdb, {"store": {"settle_days": "7"}})
    receipt = text(await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE")))
    assert "Your rebates start on" in receipt and "return window closes" in receipt
    assert "Green points received" not in receipt
    orders = text(await chat.send("tg:5", "/orders"))
    assert "N1 · RICE ×1 · 50.00 CNY — paid; the return window closes and rebates start" in \
        orders


async def test_points_scheme_receipt_names_the_points_minted(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    receipt = text(await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE")))
    assert "Green points received: 10.50." in receipt


async def test_wallet_purchase_is_recorded_at_once(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await _with_wallet(chat, "tg:5")
    reply = await chat.send("tg:5", "/buy TEA 1 wallet")
    assert "Paid: order N2 — TEA ×1, total 100.00 CNY." in text(reply)
    assert chat.state()["users"]["tg:5"]["wallet"] == "0.00"
    assert _order(chat, "N2").method == "wallet"
    refused = await chat.send("tg:5", "/buy TEA 1 wallet")
    assert text(refused) == "Your wallet balance is not enough for that."


async def test_points_pay_part_and_the_invoice_is_for_the_rest(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE"))  # 10.5 points, price 1.428571
    reply = await chat.send("tg:5", "/buy TEA 1 points 5")
    inv = invoice(reply)
    assert inv.amount == 10000 - 714  # 5 points × 1500/10.5 fen, rounded down
    assert chat.state()["users"]["tg:5"]["points"] == "5.500000"  # spent at checkout
    receipt = text(await chat.pay("tg:5", reply))
    assert "Points used: 5.00 (worth 7.14 CNY); cash paid 92.86 CNY." in receipt


async def test_points_covering_the_whole_total_complete_the_purchase_without_invoice(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send(OPERATOR, "/product PEN 5.00 0.10 0 none Pen")
    await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE"))
    reply = await chat.send("tg:5", "", callback="buy:v1:PEN:1:p:nonce123")
    assert not [i for i in reply.items if i.__class__.__name__ == "Invoice"]
    assert "Paid: order N2 — PEN ×1, total 5.00 CNY." in text(reply)
    assert _order(chat, "N2").status == "settled" and _order(chat, "N2").cash == 0


async def test_channel_without_payments_offers_wallet_and_points_and_opens_no_order(memdb):
    chat = Chat(memdb, payments=False)
    await chat.setup_shop()
    await _with_wallet(chat, "tg:5")
    reply = await chat.send("tg:5", "/buy TEA")
    assert "Online payment is not available here" in text(reply)
    # the offer says what the purchase earns
    assert "A queue entry of 100.00 CNY, released in queue order from " in text(reply)
    assert [b.data.rsplit(":", 1)[0] for b in buttons(reply)] == ["buy:v1:TEA:1:w"]
    assert memdb.read(lambda s: s.execute(select(func.count()).select_from(Order))
                      .scalar_one()) == 1  # only the earlier one
    paid = await chat.send("tg:5", "", callback=buttons(reply)[0].data)
    assert "Paid: order N2" in text(paid)


async def test_invoice_offers_wallet_and_points_buttons_when_the_buyer_can_use_them(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await _with_wallet(chat, "tg:5")
    await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE"))
    reply = await chat.send("tg:5", "/buy TEA")
    data = [b.data for b in buttons(reply)]
    # buttons under an invoice act on its order (N3), never on a new one
    assert data == ["pay:v1:N3:w", "pay:v1:N3:p"]
    assert all(len(d.encode()) <= 64 for d in data)


async def test_a_double_tap_on_the_wallet_button_buys_once(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await _with_wallet(chat, "tg:5")
    await chat.send(OPERATOR, "/product PEN 5.00 0.10 0 none Pen")
    wallet = [b.data for b in buttons(await chat.send("tg:5", "/buy PEN"))
              if b.data.endswith(":w")][0]
    assert wallet == "pay:v1:N2:w"
    first = text(await chat.send("tg:5", "", callback=wallet))
    second = text(await chat.send("tg:5", "", callback=wallet))
    assert first == second and "Paid: order N2 — PEN ×1, total 5.00 CNY." in first
    assert chat.state()["users"]["tg:5"]["wallet"] == "95.00"
    other = [b.data for b in buttons(await chat.send("tg:5", "/buy PEN"))
             if b.data.endswith(":w")][0]
    assert other != wallet and "order N3" in text(await chat.send("tg:5", "", callback=other))


async def test_forged_or_stale_buy_buttons_change_nothing(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send("tg:5", "/start")
    world = chat.world()
    for data in ("buy:v1:TEA", "buy:v1:TEA:0", "buy:v1:TEA:1:x", "buy:v2:TEA:1",
                 "buy:v1:TEA:99999", "buy:v1:T!A:1", "zzz:v1:a", "buy:v1:TEA:1:w",
                 "buy:v1:TEA:1:w:abc", "buy:v1:TEA:1:x:abcdefgh", "buy:v1:TEA:1:w:n1234567:x"):
        reply = await chat.send("tg:5", "", callback=data)
        assert text(reply) == "This button is no longer valid. Please send the command again."
    assert text(await chat.send("tg:5", "", callback="buy:v1:NOPE:1")) == \
        "There is no such product. Send /shop to see the catalogue."
    assert chat.world() == world


async def test_unpaid_checkout_expires_and_spent_points_come_back_as_their_value(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE"))
    inv = invoice(await chat.send("tg:5", "/buy TEA 1 points 5"))
    assert checkout.expire_due(memdb, at=datetime.now(UTC) + timedelta(minutes=35)) == 0
    assert checkout.expire_due(memdb, at=datetime.now(UTC) + timedelta(minutes=41)) == 1
    assert _order(chat, inv.order).status == "cancelled"
    assert chat.state()["users"]["tg:5"]["wallet"] == "7.14"
    ok, error = await shop.precheck(chat.app, inv.token, inv.amount, "CNY", "tg:5")
    assert not ok and "no longer open" in error


async def test_paused_sales_refuse_buying_politely(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send(OPERATOR, "/pause")
    await chat.send("tg:5", "/start")
    world = chat.world()
    reply = await chat.send("tg:5", "/buy TEA")
    assert text(reply) == "Sales are paused for the moment. Please try again later."
    assert "Sales are paused" in text(await chat.send("tg:5", "/shop"))
    assert chat.world()[0] == world[0]


async def test_purchases_are_rate_limited_per_user(memdb):
    chat = Chat(memdb, limiter=RateLimiter())
    await chat.setup_shop()
    replies = [text(await chat.send("tg:5", "/buy TEA")) for _ in range(6)]
    assert all("waiting for your payment" in r for r in replies[:5])
    assert replies[5] == ("That is a lot of purchases in a short time; please wait a minute "
                          "and try again.")
    assert "waiting for your payment" in text(await chat.send("tg:6", "/buy TEA"))


async def test_concurrent_reports_of_one_charge_record_one_payment(db):
    chat = Chat(db)
    await chat.setup_shop()
    inv = invoice(await chat.send("tg:5", "/buy TEA"))
    replies = await asyncio.gather(*(shop.paid(chat.app, inv.token, 10000, "CNY", "same",
                                               "telegram", "tg:5") for _ in range(4)))
    assert all("Paid: order N1" in text(r) for r in replies)
    assert _purchases(chat) == 1
    user = db.read(lambda s: s.execute(select(User).where(User.handle == "tg:5")).scalar_one())
    assert user.wallet == 0 and len(chat.state()["entries"]) == 1


async def test_pause_stops_open_checkouts_and_flags_money_that_arrives_anyway(db):
    """Issue 13: `/buy`, then the operator pauses. Pre-checkout now says no with a reason and
    records nothing; a charge the channel took before the pause is recorded (the money is
    real), earns its rebates, and is flagged in the journal and to every operator."""
    chat = Chat(db, operators=(OPERATOR, "tg:2"))
    await chat.setup_shop()
    await chat.send("tg:5", "/start")
    inv = invoice(await chat.send("tg:5", "/buy TEA"))
    assert await shop.precheck(chat.app, inv.token, inv.amount, "CNY", "tg:5") == (True, None)
    assert text(await chat.send(OPERATOR, "/pause")).startswith("Sales paused.")
    world = chat.world()
    ok, why = await shop.precheck(chat.app, inv.token, inv.amount, "CNY", "tg:5")
    assert (ok, why) == (False, "Sales are paused, so this payment cannot be taken now. "
                                "Nothing was charged; please try again when the shop reopens.")
    assert chat.world() == world

    receipt = text(await shop.paid(chat.app, inv.token, inv.amount, "CNY", "before-pause",
                                   "telegram", "tg:5"))
    assert inv.order in receipt and "queue" in receipt.lower()
    assert _order(chat, inv.order).status == "settled"
    assert chat.state()["entries"][0]["user"] == "tg:5"
    body = json.loads(db.read(lambda s: s.execute(select(JournalTxn.body).where(
        JournalTxn.key == "telegram:charge:before-pause")).scalar_one()))
    assert body["paid_while_paused"] is True
    flags = chat.outbox("paused_payment")
    assert sorted(json.loads(f.params)["identity"] for f in flags) == [OPERATOR, "tg:2"]
    from handlers.notify import render

    note = render("paused_payment", json.loads(flags[0].params), "en", currency="CNY")
    assert note.startswith("Paid while sales were paused: telegram charge before-pause of "
                           "100.00 CNY by tg:5 for order " + inv.order)
