"""Issue 14, "confusing replies": buttons under an invoice act on its order, the buyer hears
what a purchase earns before paying, and the catalogue is paged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from engine import service
from handlers import shop
from storage.models import Checkout, Order
from tests.handlers_kit import OPERATOR, Chat, buttons, invoice, text


def _orders(chat: Chat) -> dict[str, str]:
    rows = chat.db.read(lambda s: s.execute(select(Order.ref, Order.status)).all())
    return {ref: status for ref, status in rows}


def _order(chat: Chat, ref: str) -> Order:
    return chat.db.read(lambda s: s.execute(select(Order).where(Order.ref == ref)).scalar_one())


async def _with_wallet(chat: Chat, who: str) -> None:
    """`who` buys TEA offline (order N1); the release 16 days later pays 100.00 into their
    wallet."""
    await chat.send(who, "/start")
    await chat.send(OPERATOR, f"/offline {who} TEA")
    service.release(chat.db, at=datetime.now(UTC) + timedelta(days=16))
    assert chat.state()["users"][who]["wallet"] == "100.00"


async def _invite_code(chat: Chat, who: str) -> str:
    line = next(x for x in text(await chat.send(who, "/invite")).splitlines()
                if x.startswith("Your invite code: "))
    return line.removeprefix("Your invite code: ")


# -- a button under an order acts on that order ----------------------------------------------

async def test_pay_with_wallet_under_invoice_n11_pays_n11_and_creates_no_n12(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await _with_wallet(chat, "tg:5")  # N1
    for _ in range(9):  # N2 … N10, invoices left unpaid
        invoice(await chat.send("tg:5", "/buy RICE"))
    reply = await chat.send("tg:5", "/buy TEA")
    inv = invoice(reply)
    assert inv.order == "N11"
    wallet = [b for b in buttons(reply) if b.data.endswith(":w")]
    assert [b.data for b in wallet] == ["pay:v1:N11:w"]
    assert "N11" in wallet[0].label and "100.00 CNY" in wallet[0].label
    paid = text(await chat.send("tg:5", "", callback="pay:v1:N11:w"))
    assert "Paid: order N11 — TEA ×1, total 100.00 CNY." in paid
    assert "Queue entry #2 for 100.00 CNY" in paid
    orders = _orders(chat)
    assert "N12" not in orders and orders["N11"] == "settled"
    assert _order(chat, "N11").method == "wallet"
    assert chat.state()["users"]["tg:5"]["wallet"] == "0.00"
    assert memdb.read(lambda s: s.get(Checkout, inv.token).status) == "paid"
    ok, error = await shop.precheck(chat.app, inv.token, inv.amount, inv.currency, "tg:5")
    assert not ok and "no longer open" in error  # the channel's invoice cannot be paid too
    world = chat.world()
    assert text(await chat.send("tg:5", "", callback="pay:v1:N11:w")) == paid  # double tap
    assert chat.world() == world


async def test_order_buttons_refuse_politely_what_is_not_payable_or_not_yours(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await _with_wallet(chat, "tg:5")
    await chat.send("tg:6", "/start")
    invoice(await chat.send("tg:5", "/buy TEA"))  # N2
    world = chat.world()
    assert text(await chat.send("tg:6", "", callback="pay:v1:N2:w")) == \
        "There is no such order."  # someone else's order is not theirs to learn about
    assert text(await chat.send("tg:6", "", callback="pay:v1:N2:p")) == \
        "There is no such order."
    assert text(await chat.send("tg:5", "", callback="pay:v1:N1:w")) == \
        "That order is no longer waiting for payment; send /orders to see it."
    for forged in ("pay:v1:N2", "pay:v1:N2:x", "pay:v2:N2:w", "pay:v1:N2:w:extra",
                   "pay:v1:N!2:w"):
        assert "no longer valid" in text(await chat.send("tg:5", "", callback=forged))
    assert chat.world() == world
    await chat.send("tg:5", "/buy TEA 1 wallet")  # the wallet is spent elsewhere
    assert text(await chat.send("tg:5", "", callback="pay:v1:N2:w")) == \
        "Your wallet balance is not enough for that."
    assert _orders(chat)["N2"] == "awaiting_payment"


async def test_points_button_under_an_invoice_replaces_that_order(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE"))  # N1: 10.5 points
    first = await chat.send("tg:5", "/buy TEA")
    old = invoice(first)
    assert [b.data for b in buttons(first)] == ["pay:v1:N2:p"]
    replaced = await chat.send("tg:5", "", callback="pay:v1:N2:p")
    new = invoice(replaced)
    assert new.order == "N3" and new.amount == 10000 - 1500  # 10.5 points × 1500/10.5 fen
    assert _orders(chat) == {"N1": "settled", "N2": "cancelled", "N3": "awaiting_payment"}
    assert memdb.read(lambda s: s.get(Checkout, old.token).status) == "cancelled"
    ok, _ = await shop.precheck(chat.app, old.token, old.amount, old.currency, "tg:5")
    assert not ok
    again = await chat.send("tg:5", "", callback="pay:v1:N2:p")  # a double tap
    assert invoice(again).token == new.token and len(_orders(chat)) == 3


# -- what a purchase earns, said before paying -----------------------------------------------

async def test_points_paying_part_of_a_queue_order_says_before_paying_that_no_entry_comes(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE"))  # price now 1.428571
    reply = await chat.send("tg:5", "/buy TEA 1 points 1")
    assert invoice(reply).amount == 10000 - 142
    note = text(reply)
    assert "Before you pay: what this purchase earns" in note
    assert ("No queue entry: the cash part 98.58 CNY is below the 100.00 CNY minimum "
            "(what points pay does not count).") in note
    assert "Points pay 1.42 CNY of it; only the cash part, 98.58 CNY, earns rebates." in note
    assert "A queue entry" not in note
    receipt = text(await chat.pay("tg:5", reply))
    assert "This purchase earns no rebate." in receipt  # as announced, no surprise


async def test_the_invoice_names_the_entry_its_maturity_the_points_and_the_acceleration(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    code = await _invite_code(chat, "tg:5")
    await chat.send("tg:7", "/start", payload=code, name="Bea")
    note = text(await chat.send("tg:7", "/buy SOFA"))
    assert "A queue entry of 1000.00 CNY, released in queue order from " in note
    assert "(lock 30 days)." in note
    assert "About 210.00 green points at today's price 1.00" in note  # SPEC §4: 300 × 0.70
    assert "Your inviter tg:5 gets up to 200.00 CNY at once on their waiting queue entries." \
        in note
    assert "Paying with points" not in note


async def test_the_outlook_speaks_chinese_with_chinese_punctuation(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send("tg:8", "/start", lang="zh")
    note = text(await chat.send("tg:8", "/buy TEA", lang="zh"))
    assert "付款前请了解：本次购买的返利" in note
    assert "• 排队返现 100.00 CNY，自 " in note and "（锁定 15 天）。" in note


async def test_the_outlook_says_no_rebate_and_the_return_window(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send(OPERATOR, "/product PEN 5.00 0.10 0 none Pen")
    assert "No rebate: this product earns no queue entry and no points." in \
        text(await chat.send("tg:5", "/buy PEN"))
    service.configure(memdb, {"store": {"settle_days": "7"}})
    note = text(await chat.send("tg:5", "/buy RICE"))
    assert "Rebates are granted when the 7-day return window closes (" in note


# -- /shop pages -----------------------------------------------------------------------------

async def test_shop_pages_sixty_products_five_at_a_time_and_every_one_is_reachable(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()  # RICE, SOFA, TEA
    await chat.send(OPERATOR, "/product PEN 5.00 0.10 0 none Pen")
    for i in range(56):  # 60 in all, most sorting before the demo products
        service.upsert_product(memdb, sku=f"A{i:02d}", price="9.00", margin="0.10",
                               lock_days=0, scheme="none", name=f"Item {i}")
    reply = await chat.send("tg:5", "/shop")
    assert text(reply).startswith("Products, page 1/12:")
    seen: list[str] = []
    for page in range(1, 13):
        rows = [b.data for b in buttons(reply)]
        buys = [d for d in rows if d.startswith("buy:")]
        nav = [d for d in rows if d.startswith("shop:")]
        assert f"Products, page {page}/12:" in text(reply)
        assert len(buys) == 5  # a card each
        seen += [d.split(":")[2] for d in buys]
        expected_nav = ([f"shop:v1:{page - 2}"] if page > 1 else []) + \
            ([f"shop:v1:{page}"] if page < 12 else [])
        assert nav == expected_nav
        if page < 12:
            reply = await chat.send("tg:5", "", callback=f"shop:v1:{page}")
    assert len(seen) == 60 and seen == sorted(set(seen))  # stable order, each once
    assert {"TEA", "RICE", "SOFA", "PEN"} <= set(seen)
    assert "page 8/12" in text(await chat.send("tg:5", "/shop 8"))
    assert "page 12/12" in text(await chat.send("tg:5", "/shop 99"))  # the last page
    bad = text(await chat.send("tg:5", "/shop 0"))
    assert "“0” is not a page number." in bad and "Usage: /shop [PAGE | WORDS]" in bad
    assert "Nothing in the shop matches “x”" in text(await chat.send("tg:5", "/shop x"))
    assert "no longer valid" in text(await chat.send("tg:5", "", callback="shop:v1:-1"))


async def test_a_short_catalogue_has_one_page_and_no_page_buttons(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    reply = await chat.send("tg:5", "/shop")
    assert "page" not in text(reply) and text(reply).startswith("Products:")
    assert not [b for b in buttons(reply) if b.data.startswith("shop:")]


# -- wording and formatting, in zh and en ---------------------------------------------------

CJK = "[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]"


def test_chinese_catalogue_uses_full_width_punctuation_between_chinese_words():
    import json
    import re
    from pathlib import Path

    zh = json.loads((Path(__file__).parents[1] / "handlers" / "locales" / "zh.json")
                    .read_text("utf-8"))
    ascii_between = re.compile(rf"{CJK}\s*[:,;]\s*{CJK}|{CJK}[:,;] |[:,;] ?{CJK}")
    bad = {k: v for k, v in zh.items() if ascii_between.search(v)}
    assert not bad


async def test_chinese_replies_built_from_parts_keep_full_width_separators(memdb):
    import re

    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send("tg:8", "/start", lang="zh")
    await chat.pay("tg:8", await chat.send("tg:8", "/buy SOFA", lang="zh"))  # entry + points
    body = text(await chat.send("tg:8", "/orders", lang="zh"))
    assert "已结算：排队号 #1" in body and "，210.00 积分" in body
    assert not re.search(rf"{CJK}\s*[:,]\s|[:,] {CJK}", body), body


async def test_lock_periods_say_1_day_2_days_and_from_payment(memdb):
    chat = Chat(memdb)
    assert "lock 1 day, scheme queue." in \
        text(await chat.send(OPERATOR, "/product ONE 100.00 0.30 1 queue One"))
    assert "lock 2 days," in text(await chat.send(OPERATOR, "/product TWO 100.00 0.30 2 queue T"))
    await chat.send(OPERATOR, "/product NOW 100.00 0.30 0 queue Now")
    body = text(await chat.send("tg:5", "/shop"))
    assert "released in queue order from payment." in body
    assert "from 1 day after payment." in body and "from 2 days after payment." in body
    assert "0 days" not in body and "1 days" not in body
    await chat.send("tg:6", "/start", lang="zh")
    zh = text(await chat.send("tg:6", "/shop", lang="zh"))
    assert "付款当天起按排队顺序释放" in zh and "付款 1 天后起按排队顺序释放" in zh
    await chat.send(OPERATOR, "/lang zh")
    assert "锁定 1 天，" in text(await chat.send(OPERATOR, "/product ONE 100.00 0.30 1 queue O"))


async def test_the_invite_rate_reads_as_a_percentage(memdb):
    chat = Chat(memdb)
    body = text(await chat.send("tg:5", "/invite"))
    assert "Acceleration rate: 20% of each qualifying purchase" in body and "0.20" not in body
    service.configure(memdb, {"queue": {"accel_rate": "0.125"}})
    assert "12.5%" in text(await chat.send("tg:5", "/invite"))


async def test_an_oversized_amount_is_too_large_not_malformed(memdb):
    chat = Chat(memdb)
    await chat.send("tg:5", "/start")
    reply = text(await chat.send("tg:5", "/withdraw 1000000000000"))
    assert reply.startswith("“1000000000000” is too large: at most 999999999999.99.")
    assert "not an amount" not in reply
    reply = text(await chat.send("tg:9", "/sellpoints 5000000000000", lang="zh"))
    assert "太大了：最多 999999999999.999999" in reply
    assert "is not an amount" in text(await chat.send("tg:5", "/withdraw 1.234"))


async def test_shoppers_never_read_six_decimal_points_or_prices(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE"))
    for command in ("/shop", "/me", "/points", "/orders", "/history", "/buy TEA"):
        body = text(await chat.send("tg:5", command))
        assert not __import__("re").search(r"\d\.\d{5,}", body), (command, body)


async def test_delivered_notifications_name_the_stores_currency(memdb):
    from handlers.notify import render
    from scheduler import Deliverer

    class Recorder:
        def __init__(self) -> None:
            self.texts: list[str] = []

        async def send(self, identity: str, text: str) -> None:
            self.texts.append(text)

    chat = Chat(memdb)
    await chat.setup_shop()
    service.configure(memdb, {"store": {"currency": "USD"}})
    await _with_wallet(chat, "tg:5")  # a release pays 100.00 to tg:5's wallet
    sender = Recorder()
    later = datetime.now(UTC) + timedelta(days=17)  # the release's row is due then
    await Deliverer(memdb, {"tg": sender}, per_user=0, clock=lambda: later,
                    renderer=render).drain()
    assert "Queue entry #1 released: 100.00 USD paid to your wallet (entry total " \
        "100.00 USD)." in sender.texts
    assert all("CNY" not in t for t in sender.texts) and len(sender.texts) == 2
