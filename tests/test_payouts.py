"""Payout methods, withdrawal limits and the operators' view of withdrawals in chat (issue 17).

Payout details are shown masked and never logged; `/withdraw` asks where to pay first; the
limits refuse politely and change nothing; `/withdrawals` and `storefront report` show what
is held, being paid and paid out."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from bot.cli_reports import format_report
from engine import report, service, users
from engine.errors import Refusal
from engine.verify import verify
from storage.db import Database
from storage.models import JournalTxn
from tests.handlers_kit import OPERATOR, Chat, buttons, text

CARD = "6222020200112233445"
WX = "wx:oBob_0000000000000000000001"


async def funded_chat(db: Database, who: str = "tg:5", channel: str = "telegram") -> Chat:
    """A shop where `who` has 13.50 in the wallet (RICE bought, its points sold)."""
    chat = Chat(db, channel=channel)
    operator = Chat(db)
    await operator.setup_shop()
    await chat.pay(who, await chat.send(who, "/buy RICE"))
    await chat.send(who, "/sellpoints all")
    assert chat.state()["users"][who]["wallet"] == "13.50"
    return chat


async def test_withdraw_asks_where_to_pay_first_and_holds_nothing(memdb):
    chat = await funded_chat(memdb)
    world = chat.world()
    reply = await chat.send("tg:5", "/withdraw 5.00")
    assert text(reply).startswith("Where should we pay you?")
    assert "/payout alipay NAME ACCOUNT" in text(reply)
    assert buttons(reply) == []  # no WeChat identity: no WeChat-balance button
    assert chat.world() == world


async def test_a_wechat_user_picks_their_balance_with_one_button(memdb):
    chat = await funded_chat(memdb, WX, channel="wechat")
    reply = await chat.send(WX, "/withdraw 5.00")
    [button] = buttons(reply)
    assert button.data == "po:v1:wx"
    assert text(await chat.send(WX, callback="po:v1:wx")).startswith(
        "Saved. Your withdrawals will be paid to: WeChat balance")
    done = text(await chat.send(WX, "/withdraw 5.00"))
    assert done == ("Withdrawal #1 of 5.00 CNY to WeChat balance requested; the amount is "
                    "held until an operator approves it.")
    approved = text(await chat.send(OPERATOR, "/approve 1"))
    assert approved == ("Withdrawal #1 approved: 5.00 CNY is being paid to "
                        f"{WX}'s WeChat balance by WeChat Pay.")
    board = text(await Chat(memdb).send(OPERATOR, "/withdrawals"))
    assert "Being paid by WeChat Pay: 1 (5.00 CNY)" in board and " NEW" in board
    assert chat.state()["users"][WX]["wallet"] == "8.50"
    assert verify(memdb).ok


async def test_payout_details_are_shown_masked_and_never_logged(memdb, caplog):
    caplog.set_level(logging.DEBUG)
    chat = await funded_chat(memdb)
    grouped = " ".join(CARD[i:i + 4] for i in range(0, len(CARD), 4))
    reply = text(await chat.send("tg:5", f"/payout bank 王小明 {grouped}"))
    assert reply == "Saved. Your withdrawals will be paid to: Bank card 王** ****3445"
    assert text(await chat.send("tg:5", "/payout")).startswith(
        "Your withdrawals are paid to: Bank card 王** ****3445")
    await chat.send("tg:5", "/withdraw 5.00")
    board = text(await chat.send(OPERATOR, "/withdrawals"))
    assert "Bank card 王** ****3445" in board
    assert CARD not in board and "王小明" not in board
    # the one place the full account appears: the operator's manual-payout look-up
    info = text(await chat.send(OPERATOR, "/payoutinfo 1"))
    assert CARD in info and "王小明" in info
    assert text(await chat.send("tg:5", "/payoutinfo 1")) == \
        "Sorry, only the shop's operators can do that."
    assert text(await chat.send(OPERATOR, "/approve 1 SLIP-778")).startswith(
        "Withdrawal #1 approved: pay 5.00 CNY")
    body = memdb.read(lambda s: s.execute(select(JournalTxn.body).where(
        JournalTxn.key == "withdrawal:1:approved")).scalar_one())
    assert json.loads(body)["reference"] == "SLIP-778"
    assert all(CARD not in r.getMessage() and "王小明" not in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("line", ["/payout alipay", "/payout alipay Wang notanaccount",
                                  "/payout bank Wang 12345", "/payout paypal Wang x",
                                  "/payout wechat"])
async def test_bad_payout_details_get_a_polite_refusal_and_change_nothing(memdb, line):
    chat = await funded_chat(memdb)
    world = chat.world()
    reply = text(await chat.send("tg:5", line))
    assert "Traceback" not in reply and reply
    assert any(w in reply for w in ("Usage", "not a payout method", "do not look right",
                                    "not available in this shop"))
    assert chat.world() == world
    assert users.resolve(memdb, "tg:5") and text(await chat.send("tg:5", "/payout")) \
        .startswith("Your withdrawals are paid to: not set")


async def test_limits_refuse_politely_and_hold_nothing(memdb):
    chat = await funded_chat(memdb)
    await chat.send("tg:5", "/payout alipay Wang 13800138000")
    assert text(await chat.send(OPERATOR, "/payoutlimits min 2.00 daily 6.00 shop 4.00")) == \
        ("Withdrawal limits — minimum: 2.00 CNY; per user per day: 6.00 CNY; "
         "shop total per day: 4.00 CNY")
    world = chat.world()
    assert text(await chat.send("tg:5", "/withdraw 1.00")) == \
        "That is below the minimum withdrawal. Nothing was held."
    assert chat.world() == world
    assert "Withdrawal #1" in text(await chat.send("tg:5", "/withdraw 5.00"))
    assert "daily withdrawal limit" in text(await chat.send("tg:5", "/withdraw 2.00"))
    assert "shop's payout total" in text(await chat.send(OPERATOR, "/approve 1"))
    await chat.send(OPERATOR, "/payoutlimits shop 0")
    assert "approved" in text(await chat.send(OPERATOR, "/approve 1"))
    assert text(await chat.send(OPERATOR, "/payoutlimits")).endswith("shop total per day: none")
    assert verify(memdb).ok


def test_a_withdrawal_to_wechat_from_2000_needs_a_real_name(memdb):
    users.resolve(memdb, WX)
    service.upsert_product(memdb, sku="TEA", price="100.00", margin="0.50", lock_days=0,
                           scheme="queue")
    service.deposit(memdb, pool="queue", amount="6000.00")
    service.buy(memdb, user=WX, sku="TEA", qty=25, key="b")
    service.release(memdb)
    service.set_payout_method(memdb, user=WX, kind="wechat")
    with pytest.raises(Refusal) as refused:
        service.request_withdrawal(memdb, user=WX, amount="2000.00")
    assert refused.value.code == "real_name_required"
    assert service.request_withdrawal(memdb, user=WX, amount="1999.99")["method"] == "wechat"


async def test_the_report_shows_money_held_and_paid_out_per_day(memdb):
    chat = await funded_chat(memdb)
    await chat.send("tg:5", "/payout alipay Wang 13800138000")
    await chat.send("tg:5", "/withdraw 5.00")
    await chat.send("tg:5", "/withdraw 3.00")
    await chat.send(OPERATOR, "/approve 1")
    now = datetime.now(UTC)
    pool = report.pool_report(memdb, now)
    figures = pool["payouts"]
    assert figures["held"] == 300 and figures["in_transfer"] == 0
    today = pool["at"].date().isoformat()  # store-local
    assert figures["paid_out"][0] == (today, 500) and len(figures["paid_out"]) == 7
    text_report = format_report(report.pool_report(memdb, now))
    assert "Held for withdrawals 提现冻结: 3.00 CNY" in text_report
    assert f"Paid out 已打款: {today} 5.00" in text_report


async def test_linking_accounts_keeps_a_payout_method_and_the_hold(memdb):
    from engine.linking import link_accounts, link_code

    chat = await funded_chat(memdb)
    await chat.send("tg:5", "/payout alipay Wang 13800138000")
    await chat.send("tg:5", "/withdraw 5.00")
    users.resolve(memdb, WX)  # the same person on WeChat, a newer account
    now = datetime.now(UTC)
    link_code(memdb, identity="tg:5", code="ABCD2345", at=now)
    link_accounts(memdb, code="ABCD2345", identity=WX, at=now)
    wechat = Chat(memdb, channel="wechat")
    assert text(await wechat.send(WX, "/payout")).startswith(
        "Your withdrawals are paid to: Alipay W*** ****8000")
    assert "approved" in text(await chat.send(OPERATOR, "/approve 1"))
    assert verify(memdb).ok


async def test_the_wechat_balance_is_offered_only_where_wechat_pay_pays_it(memdb):
    await funded_chat(memdb, WX, channel="wechat")
    no_pay = Chat(memdb, channel="wechat", payments=False)
    reply = await no_pay.send(WX, "/withdraw 5.00")
    assert buttons(reply) == [] and "WeChat balance" not in text(reply)
    assert text(await no_pay.send(WX, "/payout wechat")).startswith(
        "WeChat balance payouts are not available in this shop")
    assert text(await no_pay.send(WX, "/payout")).startswith(
        "Your withdrawals are paid to: not set")


def test_the_wechat_balance_needs_a_wechat_identity(memdb):
    users.resolve(memdb, "tg:9")
    with pytest.raises(Refusal) as refused:
        service.set_payout_method(memdb, user="tg:9", kind="wechat")
    assert refused.value.code == "no_wechat_identity"
