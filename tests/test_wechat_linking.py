"""One person on both channels: Telegram (the real python-telegram-bot application, updates
POSTed to the same server's /telegram webhook) and WeChat, joined by a one-time code, buy on
each channel and see one balance everywhere."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from sqlalchemy import select

from engine.verify import verify
from storage.models import Entry
from tests.standins import telegram_api as tg
from tests.standins import wechat as sw
from tests.wechat_harness import TG_BUYER as TG_ID
from tests.wechat_harness import checkout_path, open_both_channels, telegram

ALICE = "oAlice_000000000000000000001"
WECHAT_UA = "Mozilla/5.0 MicroMessenger/8.0.47"


@pytest.fixture
async def both(sqlite_url, keys):
    """The shop on both channels behind one HTTP server and one database."""
    async with open_both_channels(sqlite_url, keys, operators=frozenset()) as shop_and_bot_api:
        yield shop_and_bot_api


def numbers(text: str) -> list[Decimal]:
    return [Decimal(x) for x in re.findall(r"\d+\.\d{2,6}", text)]


async def pay_in_wechat(shop, openid: str, sku: str, txn: str) -> str:
    """购买 in WeChat, open the pay link inside WeChat, pay: a signed notification."""
    reply = await shop.say(openid, f"购买 {sku}")
    await shop.http.get(checkout_path(reply["Content"]), headers={"User-Agent": WECHAT_UA})
    order = shop.last_order_of(f"wx:{openid}")
    headers, body = sw.signed_pay_notification(shop.keys, out_trade_no=order.ref,
                                               transaction_id=txn, total_fen=order.cash,
                                               payer_openid=openid)
    assert (await shop.notify(headers, body)).status_code == 204
    return order.ref


async def buy_in_telegram(shop, bot_api, sku: str, amount: int, charge: str) -> str:
    """/buy in Telegram, then Telegram Payments' pre-checkout and successful payment."""
    invoice = await telegram(shop, bot_api, tg.make_text_update(TG_ID, f"/buy {sku}"),
                             "sendInvoice")
    token = invoice.params["payload"]
    assert invoice.params["prices"][0]["amount"] == amount
    await telegram(shop, bot_api, tg.make_pre_checkout_update(TG_ID, token, amount),
                   "answerPreCheckoutQuery")
    await telegram(shop, bot_api, tg.make_successful_payment_update(TG_ID, token, amount,
                                                                    charge))
    return shop.last_order_of("tg:4242").ref


async def link_code_from_telegram(shop, bot_api) -> str:
    asked = await telegram(shop, bot_api, tg.make_text_update(TG_ID, "/link"))
    code = re.search(r"\b([2-9A-HJ-NP-Z]{8})\b", asked.text).group(1)
    assert f"绑定 {code}" in asked.text  # it tells what to send in WeChat
    return code


async def test_linked_account_sees_one_balance_after_a_purchase_on_each_channel(both):
    shop, bot_api = both
    forged = await shop.http.post("/telegram", json=tg.make_text_update(TG_ID, "/start"),
                                  headers={"X-Telegram-Bot-Api-Secret-Token": "guess"})
    assert forged.status_code == 403  # the webhook shares the server, not its trust
    await telegram(shop, bot_api, tg.make_text_update(TG_ID, "/start"))
    await shop.say(ALICE, "我的")
    code = await link_code_from_telegram(shop, bot_api)
    linked = await shop.say(ALICE, f"绑定 {code}")
    assert "tg:4242" in linked["Content"] and f"wx:{ALICE}" in linked["Content"]

    wx_ref = await pay_in_wechat(shop, ALICE, "TEA", "4200000009202601010000000001")
    tg_ref = await buy_in_telegram(shop, bot_api, "CUP", 3000, "tg-charge-1")
    assert wx_ref != tg_ref
    assert shop.order(wx_ref).status == shop.order(tg_ref).status == "settled"
    assert shop.order(wx_ref).user_id == shop.order(tg_ref).user_id

    # one account: both identities, both orders, one set of balances
    user = shop.user_of(f"wx:{ALICE}")
    assert shop.user_of("tg:4242").id == user.id
    assert user.points > 0 and user.basis == 15000  # 120.00 + 30.00 of consumption
    on_telegram = (await telegram(shop, bot_api, tg.make_text_update(TG_ID, "/me"))).text
    on_wechat = (await shop.say(ALICE, "我的"))["Content"]
    assert numbers(on_telegram) == numbers(on_wechat)
    assert f"{Decimal(user.points // 10_000) / 100:.2f}" in on_wechat  # shown: 2 places
    report = verify(shop.db)
    assert report.ok, report.problems


async def test_linking_two_funded_accounts_is_refused_and_says_why(both):
    shop, bot_api = both
    await telegram(shop, bot_api, tg.make_text_update(TG_ID, "/start"))
    await pay_in_wechat(shop, ALICE, "CUP", "4200000009202601010000000002")
    await buy_in_telegram(shop, bot_api, "CUP", 3000, "tg-charge-2")
    code = await link_code_from_telegram(shop, bot_api)
    refused = await shop.say(ALICE, f"绑定 {code}")
    assert "两个账户都已有资金" in refused["Content"]
    assert shop.user_of("tg:4242").id != shop.user_of(f"wx:{ALICE}").id
    report = verify(shop.db)
    assert report.ok, report.problems


async def test_link_codes_in_wechat_words(both):
    shop, _bot_api = both
    asked = (await shop.say(ALICE, "绑定"))["Content"]
    code = re.search(r"\b([2-9A-HJ-NP-Z]{8})\b", asked).group(1)
    assert f"/link {code}" in asked and "10" in asked  # what to send in Telegram, and for how long
    other = "oOther_00000000000000000009"
    same_app = await shop.say(other, f"绑定 {code[:4].lower()} {code[4:]}")
    assert "另一个 App" in same_app["Content"]  # two WeChat identities never join
    assert "不是有效的绑定码" in (await shop.say(other, "绑定 hello!"))["Content"]
    assert "无效、已使用或已过期" in (await shop.say(other, "绑定 ABCD2345"))["Content"]
    assert shop.user_of(f"wx:{other}").id != shop.user_of(f"wx:{ALICE}").id


XAVIER = "oXavier_00000000000000000002"


async def test_a_referral_loop_through_linking_is_closed_on_the_running_shop(both):
    """Issue 13, point 3, as played on both channels: Alice (WeChat, no referrer) invites
    Xavier by her QR code; Alice's Telegram identity starts with Xavier's invite code; she
    links the two. Her account gains no referrer, and acceleration only flows X → Alice."""
    shop, bot_api = both
    await shop.say(ALICE, "我的")  # first contact, no referrer
    alice = shop.user_of(f"wx:{ALICE}")
    await shop.event(XAVIER, "subscribe", key=f"qrscene_{alice.invite_code}")
    xavier = shop.user_of(f"wx:{XAVIER}")
    assert xavier.referrer_id == alice.id
    await telegram(shop, bot_api, tg.make_text_update(TG_ID, f"/start {xavier.invite_code}"))
    assert shop.user_of("tg:4242").referrer_id == xavier.id  # the loop, before the link

    code = await link_code_from_telegram(shop, bot_api)
    linked = await shop.say(ALICE, f"绑定 {code}")
    assert "tg:4242" in linked["Content"]
    merged = shop.user_of(f"wx:{ALICE}")
    assert shop.user_of("tg:4242").id == merged.id
    assert merged.referrer_id is None  # Alice's first contact had none
    assert shop.user_of(f"wx:{XAVIER}").referrer_id == merged.id  # she did invite Xavier

    # Alice buys on WeChat, Xavier buys on WeChat (accelerates Alice), Alice buys on
    # Telegram: nothing flows back to Xavier.
    await pay_in_wechat(shop, ALICE, "TEA", "4200000009202601010000000011")
    await pay_in_wechat(shop, XAVIER, "TEA", "4200000009202601010000000012")
    await buy_in_telegram(shop, bot_api, "TEA", 12000, "tg-charge-loop")
    entries = shop.db.read(lambda s: [(e.user_id, e.released) for e in s.execute(
        select(Entry).order_by(Entry.seq)).scalars()])
    # pool after two purchases: 2 × 12.00; Xavier's acceleration 24.00 pays Alice's entry
    assert entries == [(merged.id, 2400), (xavier.id, 0), (merged.id, 0)]
    report = verify(shop.db)
    assert report.ok, report.problems
