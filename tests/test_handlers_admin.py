"""Operator commands: only operators, every action journaled with who did it (SPEC §1, §6)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

import handlers
from handlers.base import Document, Progress, Request
from storage.models import JournalTxn
from tests.handlers_kit import OPERATOR, Chat, buttons, photos, text

NOT_OPERATOR = "Sorry, only the shop's operators can do that."

OPERATOR_REQUESTS = [
    ("/admin", None), ("/product TEA 1.00 0.10 1 queue", None), ("/deposit queue 1.00", None),
    ("/pool", None), ("/release", None), ("/withdrawals", None), ("/approve 1", None),
    ("/reject 1", None), ("/offline tg:5 TEA", None), ("/refund N1", None),
    ("/user tg:5", None), ("/broadcast hello", None), ("/pause", None), ("/resume", None),
    ("/verify", None), ("/export", None), ("管理", None), ("群发 你好", None),
    ("", "wd:v1:a:1"), ("", "wd:v1:r:1"), ("", "bc:v1:abcdef:y"), ("", "cmd:v1:pool"),
    ("", "cmd:v1:release"),
]


def _actor(chat: Chat, key: str) -> str | None:
    return chat.db.read(lambda s: s.execute(select(JournalTxn.actor).where(
        JournalTxn.key == key)).scalar_one())


@pytest.mark.parametrize("line,data", OPERATOR_REQUESTS)
async def test_non_operators_are_refused_every_operator_command_and_nothing_changes(
        memdb, line, data):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send("tg:5", "/start")
    world = chat.world()
    reply = await chat.send("tg:5", line, callback=data)
    assert text(reply) == NOT_OPERATOR
    assert chat.world() == world


async def test_a_job_is_never_run_for_a_non_operator(memdb):
    chat = Chat(memdb)
    seen: list[str] = []
    req = Request(channel="telegram", identity="tg:5", request_id="x")
    assert await handlers.run_job(chat.app, "release", req, seen.append) == NOT_OPERATOR


async def test_product_and_deposit_are_journaled_with_the_operator(memdb):
    chat = Chat(memdb)
    reply = text(await chat.send(OPERATOR, "/product TEA 100.00 0.30 15 queue Green tea"))
    assert reply == ("Product TEA saved: Green tea, 100.00 CNY, margin 30%, lock 15 days, "
                     "scheme queue.")
    # (into the queue pool: a points deposit needs someone holding points, SPEC §4)
    assert text(await chat.send(OPERATOR, "/deposit queue 12.34")) == \
        "Deposited 12.34 CNY into the queue pool; balance now 12.34 CNY."
    actors = memdb.read(lambda s: s.execute(select(JournalTxn.kind, JournalTxn.actor).where(
        JournalTxn.kind.in_(("product", "deposit")))).all())
    assert sorted(actors) == [("deposit", OPERATOR), ("product", OPERATOR)]


async def test_pool_report_shows_exact_figures_and_a_chart(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.pay("tg:5", await chat.send("tg:5", "/buy TEA"))
    reply = await chat.send(OPERATOR, "/pool")
    body = text(reply)
    assert "Queue pool 10006.00 CNY · liability 100.00 CNY · coverage 10006.0%" in body
    assert "Points pool 0.00 CNY · supply 0.000000 · price 1.000000" in body
    assert "Pending withdrawals: 0 (0.00 CNY)" in body
    assert photos(reply) and photos(reply)[0].png.startswith(b"\x89PNG")


async def test_release_runs_as_a_progress_job_and_pays_matured_entries(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send(OPERATOR, "/product FAST 100.00 0.30 0 queue Matures today")
    for who in ("tg:5", "tg:6"):
        await chat.pay(who, await chat.send(who, "/buy FAST"))
    reply = await chat.send(OPERATOR, "/release")
    (item,) = reply.items
    assert isinstance(item, Progress) and item.job == "release"
    pushed: list[str] = []
    req = Request(channel="telegram", identity=OPERATOR, request_id="job1")
    final = await handlers.run_job(chat.app, item.job, req, pushed.append)
    assert final == "Release done: orders settled 0, entries paid 2 (200.00 CNY)."
    assert pushed[-1] == final
    assert chat.state()["users"]["tg:5"]["wallet"] == "100.00"
    assert len(chat.outbox("release_paid")) == 2

    async def async_update(line: str) -> None:
        pushed.append("async:" + line)

    again = await handlers.run_job(chat.app, "release", req, async_update)
    assert again == "Release done: orders settled 0, entries paid 0 (0.00 CNY)."


async def test_withdrawals_are_listed_with_buttons_and_decided_once(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE"))
    await chat.send("tg:5", "/sellpoints all")  # 13.50 to the wallet
    await chat.send("tg:5", "/payout alipay Wang 13800138000")
    await chat.send("tg:5", "/withdraw 10.00")
    await chat.send("tg:5", "/withdraw 3.50")
    listing = await chat.send(OPERATOR, "/withdrawals")
    assert "Waiting for a decision: 2 (13.50 CNY)" in text(listing)
    assert "#1 · tg:5 · 10.00 CNY · Alipay W*** ****8000 · " in text(listing)
    assert [b.data for b in buttons(listing)] == ["wd:v1:a:1", "wd:v1:r:1", "wd:v1:a:2",
                                                  "wd:v1:r:2"]
    assert text(await chat.send(OPERATOR, "", callback="wd:v1:a:1")) == \
        "Withdrawal #1 approved: pay 10.00 CNY to tg:5."
    assert text(await chat.send(OPERATOR, "/reject 2")) == \
        "Withdrawal #2 rejected: 3.50 CNY returned to tg:5's wallet."
    assert text(await chat.send(OPERATOR, "/approve 2")) == "That withdrawal was already decided."
    assert _actor(chat, "withdrawal:1:approved") == OPERATOR
    assert chat.state()["users"]["tg:5"]["wallet"] == "3.50"
    kinds = [o.kind for o in chat.outbox() if o.kind.startswith("withdrawal_")]
    assert kinds == ["withdrawal_approved", "withdrawal_rejected"]
    board = text(await chat.send(OPERATOR, "/withdrawals"))
    assert "Waiting for a decision" not in board
    assert "Paid by hand: 1 (10.00 CNY)" in board and "Rejected: 1 (3.50 CNY)" in board


async def test_offline_sale_and_refund_of_a_pending_order(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send("tg:5", "/start")
    sale = text(await chat.send(OPERATOR, "/offline tg:5 TEA 2"))
    assert sale.startswith("Offline sale recorded for tg:5.\nPaid: order N1 — TEA ×2")
    assert memdb.read(lambda s: s.execute(select(JournalTxn.actor).where(
        JournalTxn.kind == "purchase")).scalar_one()) == OPERATOR
    await chat.send(OPERATOR, "/pause")
    await chat.send(OPERATOR, "/resume")
    from engine import service

    service.configure(memdb, {"store": {"settle_days": "3"}})
    await chat.pay("tg:5", await chat.send("tg:5", "/buy TEA"))
    body = text(await chat.send(OPERATOR, "/refund N2"))
    assert "Order N2 of tg:5 refunded; no rebate will be granted for it." in body
    assert "The cash part, 100.00 CNY (paid by telegram), is yours to refund through the " \
           "payment provider or in person." in body
    assert "The buyer is told." in body
    (note,) = chat.outbox("order_refunded")
    assert json.loads(note.params)["order"] == "N2"
    assert text(await chat.send(OPERATOR, "/refund N2")).startswith(
        "That order cannot be refunded here")
    assert text(await chat.send(OPERATOR, "/refund N1")).startswith(
        "That order cannot be refunded here")  # settled: SPEC §8
    assert _actor(chat, "refund:N2") == OPERATOR


async def test_user_lookup_by_identity_number_or_invite_code(memdb):
    chat = Chat(memdb)
    await chat.send("tg:5", "/start", name="Eve")
    body = text(await chat.send(OPERATOR, "/user tg:5"))
    assert body.startswith("User #1 tg:5 (Eve)\nIdentities: tg:5\nWallet 0.00 CNY")
    code = text(await chat.send("tg:5", "/invite")).split("Your invite code: ")[1].split()[0]
    assert text(await chat.send(OPERATOR, f"/user {code}")) == body
    assert text(await chat.send(OPERATOR, "/user #1")) == body
    assert text(await chat.send(OPERATOR, "/user nobody")).startswith(
        "I don't know the user “nobody”.")


async def test_broadcast_asks_for_confirmation_then_writes_one_outbox_row_per_user(memdb):
    chat = Chat(memdb, operators=(OPERATOR, "tg:2"))
    for who in ("tg:5", "tg:6", "tg:7"):
        await chat.send(who, "/start")
    ask = await chat.send(OPERATOR, "/broadcast Sale tomorrow!  明天促销")
    assert text(ask) == "Send this message to every user?\n\nSale tomorrow!  明天促销"
    yes, no = (b.data for b in buttons(ask))
    assert not chat.outbox("broadcast")
    assert "expired" in text(await chat.send("tg:2", "", callback=yes))  # not theirs
    # five users: the operator, the three above and tg:2, who joined by pressing the button
    assert text(await chat.send(OPERATOR, "", callback=yes)) == "Broadcast queued; recipients: 5."
    rows = chat.outbox("broadcast")
    assert len(rows) == 5 and all(json.loads(r.params)["text"] == "Sale tomorrow!  明天促销"
                                  for r in rows)
    assert "expired" in text(await chat.send(OPERATOR, "", callback=yes))  # used once
    assert len(chat.outbox("broadcast")) == 5
    assert memdb.read(lambda s: s.execute(select(JournalTxn.actor).where(
        JournalTxn.kind == "broadcast")).scalar_one()) == OPERATOR
    ask2 = await chat.send(OPERATOR, "/broadcast second")
    assert text(await chat.send(OPERATOR, "", callback=buttons(ask2)[1].data)) == \
        "Broadcast cancelled."
    assert no and len(chat.outbox("broadcast")) == 5


async def test_pause_and_resume_switch_sales(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    assert text(await chat.send(OPERATOR, "/pause")).startswith("Sales paused.")
    assert text(await chat.send("tg:5", "/buy TEA")).startswith("Sales are paused")
    assert text(await chat.send(OPERATOR, "/resume")) == "Sales resumed."
    assert "waiting for your payment" in text(await chat.send("tg:5", "/buy TEA"))
    kinds = memdb.read(lambda s: s.execute(select(JournalTxn.actor).where(
        JournalTxn.kind == "config")).scalars().all())
    assert kinds == [OPERATOR, OPERATOR]


async def test_verify_and_export_answer_operators(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    body = text(await chat.send(OPERATOR, "/verify"))
    assert body.startswith("Journal verified:\njournal OK: 5 transactions")
    reply = await chat.send(OPERATOR, "/export users jsonl")
    (doc,) = [i for i in reply.items if isinstance(i, Document)]
    assert doc.filename.startswith("users-") and doc.filename.endswith(".jsonl")
    assert json.loads(doc.content.decode().splitlines()[0])["handle"] == OPERATOR
    assert text(await chat.send(OPERATOR, "/export cats")) == (
        "Export what? journal, entries or users; as csv or jsonl.\n"
        "Usage: /export [journal|entries|users] [csv|jsonl]")


async def test_admin_menu_lists_operator_commands_with_buttons(memdb):
    chat = Chat(memdb)
    reply = await chat.send(OPERATOR, "/admin")
    body = text(reply)
    # each command with its words and a usage line
    assert "/broadcast (群发, 广播) — Message every user\n   Usage: /broadcast TEXT" in body
    assert "/pause (暂停) — Pause sales\n   Usage: /pause" in body
    assert "/product (上架) — Add or change a product\n   Usage: /product SKU PRICE" in body
    assert "  —" not in body
    assert "cmd:v1:pool" in [b.data for b in buttons(reply)]
    assert text(await chat.send(OPERATOR, "", callback="cmd:v1:withdrawals")) == \
        "No withdrawals are waiting."


async def test_points_deposit_on_a_new_shop_is_refused_and_says_why(memdb):
    """Issue 13: with nobody holding points the next buyer's few points would own the whole
    deposit (21 points minted, then a forced exit paying 477.00 of a 500.00 deposit)."""
    chat = Chat(memdb, operators=(OPERATOR, "tg:2"))
    await chat.setup_shop()
    await chat.send("tg:2", "/start", lang="zh")
    world = chat.world()
    en = text(await chat.send(OPERATOR, "/deposit points 500"))
    assert en.startswith("Nobody holds points yet, so a deposit into the points pool is "
                         "refused") and "Nothing was changed." in en
    zh = text(await chat.send("tg:2", "/deposit points 500", lang="zh"))
    assert zh.startswith("目前还没有人持有积分，因此拒绝向积分分红池注资") and "未做任何更改" in zh
    assert text(await chat.send("tg:2", "注资 积分 500", lang="zh")) == zh
    assert chat.world() == world  # no journal entry, no pool change, no message owed

    # the attack then goes nowhere: the first buyer's points are worth what was paid in
    await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE"))
    user = chat.state()["users"]["tg:5"]
    assert (user["wallet"], user["points"]) == ("0.00", "10.500000")
    assert chat.state()["pools"]["points"] == "15.00"
    assert text(await chat.send(OPERATOR, "/deposit points 1.50")) == \
        "Deposited 1.50 CNY into the points pool; balance now 16.50 CNY."


async def test_pool_shows_pool_money_that_no_points_stand_for(memdb):
    chat = Chat(memdb, operators=(OPERATOR, "tg:2"))
    await chat.setup_shop()
    await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE"))
    assert "no points stand for" not in text(await chat.send(OPERATOR, "/pool"))
    from engine import service

    service.withdraw_points(memdb, user="tg:5", points="10.5")  # the 10% fee stays behind
    assert chat.state()["points"]["supply"] == "0.000000"
    body = text(await chat.send(OPERATOR, "/pool"))
    assert "Points pool 1.50 CNY · supply 0.000000" in body
    assert ("Points pool money no points stand for: 1.50 CNY (supply is 0; whoever mints "
            "next would own it)") in body
    zh = text(await chat.send("tg:2", "/pool", lang="zh"))
    assert "积分分红池中无积分对应的资金：1.50 CNY" in zh
