"""Operators: every operator command, under every name it has (Chinese included), refused to
a non-operator on both channels with nothing changed; and every operator action journaled
with who did it (SPEC §1, §6).

The command list comes from the registry itself, so a command added later is covered
without touching this file. (Telegram's real Application is covered end to end by
tests/test_telegram_e2e.py; WeChat's running server is covered here.)"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from engine import service
from handlers import i18n
from handlers.registry import commands
from storage.db import Database
from storage.models import JournalTxn
from tests.handlers_kit import OPERATOR, Chat, buttons, text

STRANGER = "tg:5"
OPERATOR_WORDS = sorted({w for c in commands(operator=True) for w in (c.name, *c.aliases)})
OPERATOR_BUTTONS = ["wd:v1:a:1", "wd:v1:r:1", "bc:v1:abcdef:y", "bc:v1:abcdef:n",
                    "set:v1:sd:7", "sale:v1:TEA:0", "sale:v1:TEA:1"] + [
    f"cmd:v1:{c.name}" for c in commands(operator=True)]
REFUSED = {lang: i18n.t(lang, "operator_only") for lang in i18n.LANGS}


def test_the_table_covers_every_operator_command() -> None:
    names = {c.name for c in commands(operator=True)}
    assert {"product", "deposit", "release", "approve", "reject", "offline", "refund",
            "broadcast", "pause", "resume", "verify", "export", "pool", "user",
            "withdrawals"} <= names
    assert any(not w.isascii() for w in OPERATOR_WORDS)  # the Chinese words too


@pytest.mark.parametrize("channel", ["telegram", "wechat"])
async def test_every_operator_word_and_button_is_refused_to_anyone_else(
        memdb: Database, channel: str) -> None:
    chat = Chat(memdb)
    await chat.setup_shop()
    stranger = STRANGER if channel == "telegram" else "wx:oStranger000000000000000001"
    other = Chat(memdb, channel=channel)
    await other.send(stranger, "/start")
    await other.send(stranger, "/withdraw 1.00")  # something an approve could act on
    world = chat.world()
    for word in OPERATOR_WORDS:
        for line in (f"/{word}", f"/{word} 1 2 3", f"{word} TEA 1.00"):
            reply = await other.send(stranger, line)
            assert text(reply) in REFUSED.values(), (channel, line, text(reply))
    for data in OPERATOR_BUTTONS:
        reply = await other.send(stranger, callback=data)
        assert text(reply) in REFUSED.values(), (channel, data, text(reply))
    assert chat.world() == world


async def test_every_operator_word_is_refused_through_the_wechat_server(
        sqlite_url: str, tmp_path: Any) -> None:
    from handlers.base import App, Channels
    from storage.ratelimit import RateLimiter
    from tests.standins import wechat as sw
    from tests.wechat_harness import OPERATOR as WX_OPERATOR
    from tests.wechat_harness import open_shop, stock

    keys = sw.generate_pay_keys(tmp_path / "keys")
    app = App(db=Database(sqlite_url), operators=frozenset({f"wx:{WX_OPERATOR}"}),
              currency="CNY", limiter=RateLimiter.disabled(),  # many words, one stranger
              channels=Channels(payments=frozenset({"wechat"})))
    async with open_shop(sqlite_url, keys, app=app) as shop:
        stock(shop.db)
        before = shop.journal_size()
        await shop.say("oStranger_00000000000000001", "/start")
        joined = shop.journal_size()
        assert joined == before + 1
        for word in OPERATOR_WORDS:
            reply = await shop.say("oStranger_00000000000000001", f"{word} 1")
            assert reply.get("Content") in REFUSED.values(), (word, reply)
        assert shop.journal_size() == joined


# -- the audit trail ---------------------------------------------------------------------------

def _new_txns(db: Database, after: int) -> list[tuple[str, str | None]]:
    return db.read(lambda s: s.execute(select(JournalTxn.kind, JournalTxn.actor).where(
        JournalTxn.id > after).order_by(JournalTxn.id)).all())


def _tip(db: Database) -> int:
    return db.read(lambda s: s.execute(select(JournalTxn.id).order_by(
        JournalTxn.id.desc()).limit(1)).scalar_one_or_none() or 0)


async def test_every_operator_action_is_journaled_with_the_operator(
        memdb: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    chat = Chat(memdb)
    await chat.send(OPERATOR, "/start")
    await chat.setup_shop()
    service.configure(memdb, {"store": {"settle_days": "3"}})  # refundable orders
    await chat.send("tg:5", "/start")
    bought = datetime.now(UTC) - timedelta(days=40)
    service.upsert_product(memdb, sku="OLD", price="100.00", margin="0.30", lock_days=15,
                           scheme="queue", at=bought)
    service.buy(memdb, user="tg:5", sku="OLD", method="offline", at=bought, order="M1")
    actions: list[tuple[str, str | None]] = [
        ("/product TEA 120.00 0.30 15 queue Green tea", None),
        ("/deposit queue 10.00", None),  # points: refused while nobody holds any (SPEC §4)
        ("/offline tg:5 TEA", None),
        ("/release", None),
        ("/pause", None),
        ("/resume", None),
        ("/settings store.settle_days 5 queue.min_order 50.00", None),
        ("", "set:v1:sd:7"),
        ("/product RICE off", None),
        ("", "sale:v1:RICE:1"),
    ]
    audited: dict[str, list[tuple[str, str | None]]] = {}
    for line, data in actions:
        tip = _tip(memdb)
        reply = await chat.send(OPERATOR, line, callback=data)
        if line == "/release":  # a Progress item: the adapter runs the job
            import handlers
            from handlers.base import Request

            await handlers.run_job(chat.app, "release", Request(
                channel="telegram", identity=OPERATOR, request_id="job"), lambda _t: None)
        audited[line or str(data)] = _new_txns(memdb, tip)
        assert audited[line or str(data)], (line, data, text(reply))
    # refund (the offline sale is pending in its return window), withdrawals, broadcast
    order = memdb.read(lambda s: s.execute(select(JournalTxn.body).where(
        JournalTxn.kind == "purchase", JournalTxn.actor == OPERATOR)
        .order_by(JournalTxn.id.desc()).limit(1)).scalar_one())
    ref = __import__("json").loads(order)["order"]
    for line in (f"/refund {ref}",):
        tip = _tip(memdb)
        await chat.send(OPERATOR, line)
        audited[line] = _new_txns(memdb, tip)
    await chat.send("tg:5", "/payout bank Wang 6222020200112233445")
    await chat.send("tg:5", "/withdraw 10.00")
    await chat.send("tg:5", "/withdraw 20.00")
    for line in ("/approve 1", "/reject 2"):
        tip = _tip(memdb)
        await chat.send(OPERATOR, line)
        audited[line] = _new_txns(memdb, tip)
    tip = _tip(memdb)
    confirm = await chat.send(OPERATOR, "/broadcast sale today")
    send = buttons(confirm)[0]
    assert send.data and send.data.endswith(":y")
    await chat.send(OPERATOR, callback=send.data)
    audited["/broadcast"] = _new_txns(memdb, tip)

    for line, txns in audited.items():
        assert txns, f"{line} left no journal transaction"
        # The release's own entry payments are the rules at work; the run is journaled
        # with the operator who started it.
        own = [t for t in txns if t[0] not in ("release", "settle")]
        assert own and all(actor == OPERATOR for _kind, actor in own), (line, txns)
    # read-only commands leave no journal transaction but are logged with who asked
    tip = _tip(memdb)
    for line in ("/pool", "/withdrawals", "/user tg:5", "/verify", "/export users"):
        await chat.send(OPERATOR, line)
        assert any(OPERATOR in r.getMessage() and line.split()[0][1:] in r.getMessage()
                   for r in caplog.records), line
    assert _tip(memdb) == tip
