"""Issue 13, point 5 — pause does not stop open checkouts — played against the running shop:
the real python-telegram-bot application (updates POSTed to the server's /telegram webhook)
and WeChat with WeChat Pay, one HTTP server and one database, an operator who pauses sales
from WeChat while orders are open.

While sales are paused, Telegram's pre-checkout question is answered no with the reason in
the buyer's language and the WeChat Pay page starts no payment (no JSAPI or Native order is
made). Money that arrives anyway, from a payment the channel accepted before the pause, is
recorded as usual (it is real and the order earns its rebates), marked `paid_while_paused` in
the journal, and every operator is owed a message about it."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from engine.verify import verify
from handlers import i18n
from storage.models import JournalTxn, Outbox
from tests.standins import telegram_api as tg
from tests.standins import wechat as sw
from tests.wechat_harness import (
    OPERATOR,
    checkout_path,
    keys,  # noqa: F401 - the module-scoped fixture, by name
    open_both_channels,
    telegram,
)
from tests.wechat_harness import TG_BUYER as BUYER

ALICE = "oAlice_000000000000000000001"
WECHAT_UA = "Mozilla/5.0 MicroMessenger/8.0.47"
OPERATORS = frozenset({f"wx:{OPERATOR}", "tg:1"})


@pytest.fixture
async def both(sqlite_url, keys):  # noqa: F811 - the module-scoped keys fixture
    async with open_both_channels(sqlite_url, keys, operators=OPERATORS) as shop_and_bot_api:
        yield shop_and_bot_api


async def invoice(shop, bot_api, sku: str = "TEA") -> tuple[str, int]:
    sent = await telegram(shop, bot_api, tg.make_text_update(BUYER, f"/buy {sku}"),
                          "sendInvoice")
    return sent.params["payload"], sent.params["prices"][0]["amount"]


async def precheck(shop, bot_api, token: str, amount: int, lang: str = "en"
                   ) -> tuple[bool, str | None]:
    update = tg.make_pre_checkout_update(BUYER, token, amount, language_code=lang)
    await telegram(shop, bot_api, update, "answerPreCheckoutQuery")
    query = update["pre_checkout_query"]["id"]
    ((_, ok, error),) = [a for a in bot_api.answers_to_pre_checkout() if a[0] == query]
    return ok, error


async def operator(shop, words: str) -> str:
    return (await shop.say(OPERATOR, words))["Content"]


def paused_flags(shop) -> list[dict]:
    rows = shop.db.read(lambda s: s.execute(select(Outbox).where(
        Outbox.kind == "paused_payment").order_by(Outbox.id)).scalars().all())
    return [json.loads(r.params) for r in rows]


def purchase_body(shop, key: str) -> dict:
    return json.loads(shop.db.read(lambda s: s.execute(select(JournalTxn.body).where(
        JournalTxn.key == key)).scalar_one()))


async def test_telegram_pre_checkout_says_no_while_paused_and_a_payment_taken_before_counts(
        both):
    shop, bot_api = both
    await shop.say(OPERATOR, "我的")  # the operator's first contact (language zh)
    token, amount = await invoice(shop, bot_api)
    assert await precheck(shop, bot_api, token, amount) == (True, None)

    assert "已暂停销售" in await operator(shop, "暂停")
    order = shop.last_order_of(f"tg:{BUYER}")
    size = shop.journal_size()
    # asked again while paused (Telegram asks before every charge): no, and why
    assert await precheck(shop, bot_api, token, amount) == (
        False, i18n.t("en", "checkout.paused"))
    assert shop.order(order.ref).status == "awaiting_payment"
    assert shop.journal_size() == size

    # the charge Telegram made on the answer given before the pause arrives now
    receipt = await telegram(shop, bot_api, tg.make_successful_payment_update(
        BUYER, token, amount, "tg-charge-before-pause"))
    paid = shop.order(order.ref)
    assert paid.status == "settled" and paid.entry_seq == 1 and paid.minted > 0
    assert order.ref in receipt.text  # the buyer gets the ordinary receipt
    body = purchase_body(shop, "telegram:charge:tg-charge-before-pause")
    assert body["paid_while_paused"] is True and body["order"] == order.ref
    flags = paused_flags(shop)
    assert sorted(f["identity"] for f in flags) == sorted(OPERATORS)
    assert {(f["order"], f["amount"], f["charge"], f["channel"]) for f in flags} == {
        (order.ref, 12000, "tg-charge-before-pause", "telegram")}

    # Telegram delivering the same payment again records and flags nothing more
    size, rows = shop.journal_size(), len(paused_flags(shop))
    await telegram(shop, bot_api, tg.make_successful_payment_update(
        BUYER, token, amount, "tg-charge-before-pause"))
    assert (shop.journal_size(), len(paused_flags(shop))) == (size, rows)

    # after /resume a new order is asked and answered as usual, and not flagged
    assert await operator(shop, "恢复") == i18n.t("zh", "resume.done")
    token2, amount2 = await invoice(shop, bot_api)
    assert await precheck(shop, bot_api, token2, amount2, lang="zh") == (True, None)
    await telegram(shop, bot_api, tg.make_successful_payment_update(
        BUYER, token2, amount2, "tg-charge-after-resume"))
    assert "paid_while_paused" not in purchase_body(shop, "telegram:charge:tg-charge-after-resume")
    assert len(paused_flags(shop)) == rows
    report = verify(shop.db)
    assert report.ok, report.problems


async def test_pre_checkout_reason_is_in_the_buyers_language(both):
    shop, bot_api = both
    await telegram(shop, bot_api, tg.make_text_update(BUYER, "/start", language_code="zh"))
    token, amount = await invoice(shop, bot_api)
    await operator(shop, "暂停")
    ok, error = await precheck(shop, bot_api, token, amount, lang="zh")
    assert (ok, error) == (False, i18n.t("zh", "checkout.paused"))
    assert error.startswith("商店暂停销售中")


async def test_the_wechat_pay_page_starts_no_payment_while_paused(both):
    shop, _ = both
    early = await shop.say(ALICE, "购买 TEA")  # its page opened before the pause (prepaid)
    page = await shop.http.get(checkout_path(early["Content"]), headers={"User-Agent": WECHAT_UA})
    assert page.status_code == 200
    early_ref = shop.last_order_of(f"wx:{ALICE}").ref
    late = await shop.say(ALICE, "购买 CUP")  # opened, its page not yet
    late_ref = shop.last_order_of(f"wx:{ALICE}").ref

    await operator(shop, "暂停")
    for ua in (WECHAT_UA, "Mozilla/5.0 (X11; Linux x86_64)"):  # JSAPI inside, Native outside
        page = await shop.http.get(checkout_path(late["Content"]), headers={"User-Agent": ua})
        assert page.status_code == 503
        assert "暂停销售" in page.text and "Sales are paused" in page.text
    assert late_ref not in shop.pay_api.orders  # no prepay was asked of WeChat Pay
    assert shop.order(late_ref).status == "awaiting_payment"

    # the buyer who had the payment screen open before the pause pays now: recorded, flagged
    headers, body = sw.signed_pay_notification(
        shop.keys, out_trade_no=early_ref, transaction_id="4200000009202601010000000021",
        total_fen=12000, payer_openid=ALICE)
    assert (await shop.notify(headers, body)).status_code == 204
    paid = shop.order(early_ref)
    assert paid.status == "settled" and paid.entry_seq == 1
    assert purchase_body(shop, "wx:txn:4200000009202601010000000021")["paid_while_paused"]
    flags = paused_flags(shop)
    assert sorted(f["identity"] for f in flags) == sorted(OPERATORS)
    assert {(f["order"], f["channel"], f["buyer"]) for f in flags} == {
        (early_ref, "wechat", f"wx:{ALICE}")}
    # WeChat Pay retrying the notification adds nothing
    assert (await shop.notify(headers, body)).status_code == 204
    assert len(paused_flags(shop)) == len(flags)

    await operator(shop, "恢复")
    page = await shop.http.get(checkout_path(late["Content"]), headers={"User-Agent": WECHAT_UA})
    assert page.status_code == 200 and late_ref in shop.pay_api.orders
    report = verify(shop.db)
    assert report.ok, report.problems
