"""The shop attacked from outside over signed WeChat callbacks and WeChat Pay notifications:
a cart's payment replayed, charged twice, or paid after the cart changed; another user's menu
link ids; a /support flood; payout details carrying injection attempts; a payout method
naming someone else's WeChat identity. Nothing that should not change changes, the reply is
polite in the user's language, and the books verify. (Telegram: tests/test_hostile_shop.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select

from engine.verify import verify
from storage.models import (
    CartItem,
    JournalTxn,
    Order,
    Outbox,
    PayoutMethod,
    ProductPhoto,
    SupportMessage,
)
from tests.standins import wechat as sw
from tests.test_cart_channels import WECHAT_UA, cart_rows
from tests.wechat_harness import Shop, checkout_path

ALICE = "oAlice_000000000000000000001"
BOB = "oBob_0000000000000000000000002"
TRACE = ("Traceback", "Exception", "sqlalchemy", "None")


def polite(reply: dict[str, Any]) -> str:
    text = str(reply.get("Content", ""))
    assert text and not any(w in text for w in TRACE), reply
    return text


def count(s: Shop, model: Any, *where: Any) -> int:
    return int(s.db.read(lambda x: x.execute(
        select(func.count()).select_from(model).where(*where)).scalar_one()))


def books_ok(s: Shop) -> None:
    report = verify(s.db)
    assert report.ok, report.problems


async def test_a_cart_paid_replayed_twice_charged_and_changed_is_one_order(shop: Shop) -> None:
    await shop.say(ALICE, "购物车 add TEA")
    reply = await shop.say(ALICE, "购物车 pay")
    page = await shop.http.get(checkout_path(polite(reply)), headers={"User-Agent": WECHAT_UA})
    assert page.status_code == 200
    order = shop.last_order_of(f"wx:{ALICE}")
    assert order.cash == 12000
    await shop.say(ALICE, "购物车 add CUP")  # the cart changes after its pay link was opened
    # A notification for the wrong amount, or from a forged signature: refused, nothing moves.
    journal = shop.journal_size()
    wrong, body = sw.signed_pay_notification(shop.keys, out_trade_no=order.ref,
                                             transaction_id="4200000001202601010000000101",
                                             total_fen=1, payer_openid=ALICE)
    assert (await shop.notify(wrong, body)).status_code != 204
    forged, body = sw.signed_pay_notification(shop.keys, out_trade_no=order.ref,
                                              transaction_id="4200000001202601010000000102",
                                              total_fen=12000, payer_openid=ALICE,
                                              wrong_signature=True)
    assert (await shop.notify(forged, body)).status_code != 204
    assert shop.journal_size() == journal and shop.order(order.ref).status == "awaiting_payment"
    # Paid, then the same notification replayed at once: recorded once.
    headers, body = sw.signed_pay_notification(shop.keys, out_trade_no=order.ref,
                                               transaction_id="4200000001202601010000000103",
                                               total_fen=12000, payer_openid=ALICE)
    got = await asyncio.gather(*(shop.notify(headers, body) for _ in range(3)))
    assert [r.status_code for r in got] == [204] * 3
    assert count(shop, JournalTxn, JournalTxn.kind == "purchase") == 1
    assert shop.order(order.ref).total == 12000  # what the pay link showed, not the new cart
    assert cart_rows(shop.db) == [("CUP", 1)]  # its own line left; the one added after stays
    # A second charge of the same order (another transaction): no second order, refunded
    # or flagged as the existing code does.
    flags = count(shop, Outbox, Outbox.kind == "payment_flag")
    again, body = sw.signed_pay_notification(shop.keys, out_trade_no=order.ref,
                                             transaction_id="4200000001202601010000000104",
                                             total_fen=12000, payer_openid=ALICE)
    assert (await shop.notify(again, body)).status_code == 400  # refused: flagged
    assert count(shop, Order) == 1
    assert count(shop, JournalTxn, JournalTxn.kind == "purchase") == 1
    flagged = count(shop, Outbox, Outbox.kind == "payment_flag")
    assert flagged > flags
    assert (await shop.notify(again, body)).status_code == 400  # WeChat Pay retrying it
    assert count(shop, Outbox, Outbox.kind == "payment_flag") == flagged  # told once
    books_ok(shop)


async def test_menu_ids_of_another_user_and_junk_change_nothing(shop: Shop) -> None:
    await shop.say(ALICE, "购物车 add TEA 2")
    polite(await shop.say(BOB, "/start"))
    before = shop.db.read(lambda x: sorted((i.sku, i.qty) for i in x.execute(
        select(CartItem)).scalars()))
    journal = shop.journal_size()
    # Bob taps menu ids he was never sent (Alice's, or made up): plain text, no button.
    for menu in ("1", "2", "99999999999", "abc"):
        polite(await shop.say(BOB, "✖", extra={"bizmsgmenuid": menu}))
    for text in ("购物车 add TEA -1", "购物车 add TEA 99999999999999999999", "购物车 add TEA abc",
                 "购物车 add TEA 10001", "购物车 del TEA", "/receive N1", "/reply 1 hi",
                 "库存 TEA 0", "/ship N1 SF SF123456", "购物车 add " + "长" * 600,
                 "确认收货 N1", "购物车 pay wallet"):
        polite(await shop.say(BOB, text))
    assert shop.db.read(lambda x: sorted((i.sku, i.qty) for i in x.execute(
        select(CartItem)).scalars())) == before
    assert shop.journal_size() == journal
    books_ok(shop)


async def test_a_support_flood_on_wechat_is_limited_and_texts_cleaned(shop: Shop) -> None:
    answers = [polite(await shop.say(ALICE, f"客服 你好 {n} \u202e反转")) for n in range(7)]
    sent = [a for a in answers if "#1" in a]
    assert 1 <= len(sent) <= 5 and "请稍等" in answers[-1], answers
    assert count(shop, SupportMessage) == len(sent)
    texts = shop.db.read(lambda x: [m.text for m in x.execute(select(SupportMessage)).scalars()])
    assert all("\u202e" not in t for t in texts)
    # A long message is refused or kept short, politely.
    polite(await shop.say(BOB, "客服 " + "长" * 5000))
    assert all(len(t) <= 4096 for t in shop.db.read(
        lambda x: [m.text for m in x.execute(select(SupportMessage)).scalars()]))


async def test_payout_details_with_injection_and_someone_elses_openid(shop: Shop) -> None:
    polite(await shop.say(ALICE, "/start"))
    for text in ("收款方式 alipay 张三 x'+OR+1=1--@evil.com",
                 "收款方式 alipay <a href=\"http://evil\">Z</a> 13800008000",
                 "收款方式 bank Robert');DROP TABLE users;-- 6222020200001234567",
                 "收款方式 bank 张三 6222 0202 0000 1234 5678 9999",
                 "收款方式 alipay 张三 " + "1" * 600, "收款方式 alipay 张\u202e三 13800008000",
                 f"收款方式 wechat {ALICE}x{'y' * 40}", "收款方式 paypal me@x.com",
                 "/payoutinfo 1", "/approve 1", "提现 -5", "提现 99999999999999999999"):
        polite(await shop.say(BOB, text))
    row = shop.db.read(lambda x: x.execute(select(PayoutMethod)).scalars().all())
    assert all("<" not in (r.name or "") and "\u202e" not in (r.name or "") for r in row)
    # Bob naming Alice's openid as a "real name": the transfer would still go to Bob's own.
    polite(await shop.say(BOB, f"收款方式 wechat {ALICE[:20]}"))
    bob = shop.user_of(f"wx:{BOB}")
    assert bob is not None
    method = shop.db.read(lambda x: x.get(PayoutMethod, bob.id))
    assert method is not None and method.kind == "wechat" and method.account == BOB
    assert ALICE not in polite(await shop.say(BOB, "收款方式"))
    assert count(shop, Outbox, Outbox.kind.like("withdraw%")) == 0
    books_ok(shop)


async def test_images_from_strangers_are_never_fetched_and_huge_ones_are_refused(
        shop: Shop) -> None:
    from tests.test_catalogue_telegram import png
    from tests.wechat_harness import GH_ID, OPERATOR, next_msg_id

    async def image(openid: str, content: bytes) -> str:
        media_id = shop.api.store_media(content, "image/png")
        xml = sw.message_xml(GH_ID, openid, "image", {"PicUrl": "http://x/y.jpg",
                                                      "MediaId": media_id}, msg_id=next_msg_id())
        reply = shop.reply_of(await shop.post(xml))
        await shop.server.wechat.drain()
        return polite(reply)

    polite(await shop.say(BOB, "图片 TEA"))
    await image(BOB, png(1))
    assert shop.api.calls_of("/cgi-bin/media/get") == []  # a stranger's image: never fetched
    polite(await shop.say(OPERATOR, "图片 TEA"))
    huge = png(2) + b"\x00" * (20 * 1024 * 1024)  # a 20 MB "photo"
    assert "图片" in await image(OPERATOR, huge)  # refused in the operator's language
    assert len(shop.api.calls_of("/cgi-bin/media/get")) == 1  # only the operator's
    assert count(shop, ProductPhoto) == 0
    books_ok(shop)
