"""The Telegram inbox in process (bot/telegram/inbox.py, engine/inbox.py): pending rows are
resumed on start, one user's in order while others overtake; a stale pre-checkout query is
set aside; a payment the engine did not record is spooled and shown to operators (an outbox
message each, /pool, `storefront inbox`) until the spool records it, and they are told when
it is recorded late; old finished rows are pruned. The kill tests
against the running service are in tests/test_telegram_inbox_kill.py."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.routing import Route
from telegram.ext import Application

from bot import charge_spool
from bot.cli import main as cli
from bot.settings import Settings
from bot.telegram import start_telegram, stop_telegram, telegram_webhook_route
from bot.telegram.application import adapter_of
from bot.telegram.inbox import item_of, spool_notices
from engine import checkout, inbox, report, service, users
from handlers.base import App, Channels
from handlers.notify import render
from storage.db import Database, DatabaseUnavailable
from storage.models import InboxUpdate, JournalTxn, Outbox
from storage.ratelimit import RateLimiter
from tests.handlers_kit import Chat, text
from tests.helpers import telegram_checkout
from tests.standins.telegram_api import (
    FakeBotAPI,
    make_pre_checkout_update,
    make_successful_payment_update,
    make_text_update,
)
from tests.test_telegram_adapter import TOKEN, Script, settings_for

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI(token=TOKEN) as fake:
        yield fake


@asynccontextmanager
async def telegram_running(settings: Settings, app: App,
                           **kw: Any) -> AsyncIterator[Application]:
    """The bot started (`start_telegram`), and stopped however the block ends."""
    application = await start_telegram(settings, app, **kw)
    try:
        yield application
    finally:
        await stop_telegram(application)


def database_down(*args: Any, **kwargs: Any) -> int:
    raise DatabaseUnavailable("the database is down")


@pytest.fixture
def sdb(sqlite_db: Database) -> Database:
    """The adapter tests' database: a SQLite file (the engine tests below use conftest's
    `db`, SQLite and PostgreSQL)."""
    return sqlite_db


def stored(db: Database, raw: list[dict[str, Any]], at: datetime | None = None) -> None:
    from telegram import Update

    inbox.receive(db, [item_of(Update.de_json(u, None), u) for u in raw], at=at)


def statuses(db: Database) -> dict[int, str]:
    return dict(db.read(lambda s: s.execute(select(InboxUpdate.update_id,
                                                   InboxUpdate.status)).all()))


def notices(db: Database, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """The outbox rows of `kind`: (lang, params), in the order written."""
    rows = db.read(lambda s: s.execute(select(Outbox.lang, Outbox.params).where(
        Outbox.kind == kind).order_by(Outbox.id)).all())
    return [(lang, json.loads(params)) for lang, params in rows]


async def pool_text(db: Database, operator: str = "tg:1") -> str:
    """What an operator's /pool says."""
    return text(await Chat(db, operators=(operator,)).send(operator, "/pool"))


async def drained(db: Database, rows: int = 1, timeout: float = 10.0) -> dict[int, str]:
    """The inbox's statuses once it holds `rows` rows or more and none is pending."""
    async def wait() -> dict[int, str]:
        while "pending" in (now := statuses(db)).values() or len(now) < rows:
            await asyncio.sleep(0.02)
        return now

    return await asyncio.wait_for(wait(), timeout)


async def test_pending_rows_resume_on_start_each_user_in_order_others_overtake(
        api: FakeBotAPI, sdb: Database) -> None:
    db = sdb
    script = Script()
    gate = threading.Event()
    conversations = script.held_back(gate, 5)
    order = script.order
    # A previous run stored these and died before handling them.
    stored(db, [make_text_update(20, "/me slow", update_id=1, message_id=1),
                make_text_update(20, "/me second", update_id=2, message_id=2),
                make_text_update(21, "/me other", update_id=3, message_id=3)])
    stored(db, [make_pre_checkout_update(22, "tok", 100, query_id="q1", update_id=4)],
           at=datetime.now(UTC) - timedelta(minutes=1))
    async with telegram_running(settings_for(api), App(db=db, operators=frozenset()),
                                poll_timeout=1, conversations=conversations):
        await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == 21)
        assert order == ["tg:21 /me other"]  # user 20 is still on its first update
        gate.set()
        assert await drained(db, 4) == {1: "done", 2: "done", 3: "done", 4: "expired"}
        assert order == ["tg:21 /me other", "tg:20 /me slow", "tg:20 /me second"]
        # Telegram no longer waits for that pre-checkout answer: it was not asked again
        assert script.prechecks == [] and api.calls_of("answerPreCheckoutQuery") == []
        # ... and a new update comes in through getUpdates, stored before it is confirmed
        mark = len(api.calls)
        api.push_update(make_text_update(21, "/me again", update_id=5, message_id=5))
        await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == 21, since=mark)
        assert (await drained(db, 5))[5] == "done" and order[-1] == "tg:21 /me again"


async def test_an_unrecorded_payment_is_spooled_shown_to_operators_then_recorded(
        api: FakeBotAPI, sdb: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = sdb
    token = telegram_checkout(db)
    real_paid = checkout.record_payment

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in recording")  # not the database being down

    monkeypatch.setattr(checkout, "record_payment", broken)
    settings = settings_for(api)
    spool = Path(settings.charge_spool)
    users.resolve(db, "tg:1", lang="en")  # an operator with a shop account (English)
    app = App(db=db, operators=frozenset({"tg:1", "tg:2"}), limiter=RateLimiter.disabled(),
              channels=Channels(payments=frozenset({"telegram"})))
    async with telegram_running(settings, app, poll_timeout=1) as application:
        assert "waiting to be recorded" not in await pool_text(db)
        api.push_successful_payment(30, token, 2000, "charge-30")
        assert await drained(db) == {1: "spooled"}
        # the charge is in the durable spool, with its inbox row
        (line,) = charge_spool.pending(spool)
        assert (line["charge_id"], line["amount"], line["update_id"]) == ("charge-30", 2000, 1)
        # every operator is owed a message, written with the row's `spooled`
        waiting = notices(db, "payment_waiting")
        assert [(lang, p["identity"]) for lang, p in waiting] == [("en", "tg:1"), ("zh", "tg:2")]
        order = waiting[0][1]["order"]
        assert render("payment_waiting", waiting[0][1], "en") == (
            f"PAYMENT NOT RECORDED YET: telegram charge charge-30 of 20.00 CNY by tg:30 for "
            f"order {order} was taken but could not be recorded. It waits in the charge spool "
            f"and is retried; you will be told when it is recorded. storefront inbox lists it.")
        assert render("payment_waiting", waiting[1][1], "zh").startswith(
            f"付款尚未入账：telegram 渠道 tg:30 为订单 {order} 支付的 20.00 CNY（交易 charge-30）")
        # /pool says so, and so does `storefront inbox`
        assert report.pool_report(db, datetime.now(UTC))["payments_waiting"] == 1
        assert "Payments waiting to be recorded: 1" in await pool_text(db)
        assert cli(["inbox", "--db", str(db.engine.url), "--spool", str(spool)]) == 1
        out = capsys.readouterr().out
        assert "spooled 1" in out and "UNRECORDED PAYMENT: inbox update 1 from tg:30" in out
        assert "UNRECORDED CHARGE: telegram charge charge-30 2000 CNY from tg:30" in out
        # a replay round that still cannot record it tells nobody twice
        told = spool_notices(db, app.operators)
        assert await charge_spool.replay(spool, adapter_of(application).record_spooled,
                                         told) == 0
        assert len(notices(db, "payment_waiting")) == 2 and notices(db, "payment_late") == []

        # once recording works, the spool's replay records it and the row is done
        monkeypatch.setattr(checkout, "record_payment", real_paid)
        adapter = adapter_of(application)
        assert await charge_spool.replay(spool, adapter.record_spooled, told) == 1
        assert statuses(db) == {1: "done"} and charge_spool.pending(spool) == []
        late = notices(db, "payment_late")
        assert [p["identity"] for _, p in late] == ["tg:1", "tg:2"]
        assert render("payment_late", late[0][1], "en") == (
            f"Payment recorded late: telegram charge charge-30 of 20.00 CNY by tg:30 for order "
            f"{order} was recorded late from the charge spool. Nothing is lost; the buyer's "
            f"order is paid.")
        assert render("payment_late", late[1][1], "zh").startswith("付款已补记入账：")
        assert "waiting to be recorded" not in await pool_text(db)
        assert cli(["inbox", "--db", str(db.engine.url), "--spool", str(spool)]) == 0
        assert "spooled 0" in capsys.readouterr().out
        keys = db.read(lambda s: s.execute(select(JournalTxn.key).where(
            JournalTxn.key.like("telegram:charge:%"))).scalars().all())
        assert keys == ["telegram:charge:charge-30"]
        assert await charge_spool.replay(spool, adapter.record_spooled, told) == 0
        assert len(notices(db, "payment_late")) == 2  # once per operator, whatever the rounds


def test_a_payment_marks_its_row_done_in_its_own_transaction_and_only_once(
        db: Database) -> None:
    service.upsert_product(db, sku="TEA", price="20.00", margin="0.30", lock_days=15,
                           scheme="both", name="Tea", actor="test")
    users.resolve(db, "tg:40", lang="en")
    token = checkout.open_checkout(db, user="tg:40", sku="TEA", channel="telegram",
                                   method="telegram", key="open:40")["token"]
    stored(db, [make_successful_payment_update(40, token, 2000, "c40", update_id=7)])
    assert inbox.receive(db, [inbox.Item(7, "payment", "{}")]) == 0  # a duplicate: ignored
    first = checkout.record_payment(db, channel="telegram", token=token, charge_id="c40",
                                    amount=2000, currency="CNY", buyer="tg:40", inbox_update=7)
    assert first["ok"] and statuses(db) == {7: "done"}
    # processed again (a crash after the commit, before anyone knew): nothing moves twice
    db.run(lambda s: s.execute(update(InboxUpdate).values(status="pending")))
    again = checkout.record_payment(db, channel="telegram", token=token, charge_id="c40",
                                    amount=2000, currency="CNY", buyer="tg:40", inbox_update=7)
    assert again["ok"] and again.get("replayed") and statuses(db) == {7: "done"}
    assert db.read(lambda s: s.execute(select(JournalTxn.key).where(
        JournalTxn.key.like("telegram:charge:%"))).scalars().all()) == ["telegram:charge:c40"]
    # a charge the shop refuses is flagged to operators, the row done with the flag
    stored(db, [make_successful_payment_update(40, "no-such", 2000, "c41", update_id=8)])
    refused = checkout.record_payment(db, channel="telegram", token="no-such", charge_id="c41",
                                      amount=2000, currency="CNY", buyer="tg:40",
                                      operators=("tg:1",), inbox_update=8)
    assert not refused["ok"] and statuses(db)[8] == "done"


async def test_the_spool_tells_operators_once_the_database_takes_writes_again(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A charge in the spool (the database was down when it came): no message can be
    written while the database is down; the first round after it takes writes again owes
    each operator one `payment_waiting` message (if the charge still cannot be recorded),
    and one `payment_late` once it is recorded."""
    service.upsert_product(db, sku="TEA", price="20.00", margin="0.30", lock_days=15,
                           scheme="both", name="Tea", actor="test")
    users.resolve(db, "tg:45", lang="en")
    token = checkout.open_checkout(db, user="tg:45", sku="TEA", channel="telegram",
                                   method="telegram", key="open:45")["token"]
    spool = tmp_path / "spool.jsonl"
    charge_spool.spool(spool, {"channel": "telegram", "token": token, "amount": 2000,
                               "currency": "CNY", "charge_id": "c45", "identity": "tg:45",
                               "update_id": 45})
    operators = frozenset({"tg:1", "wx:op"})
    told = spool_notices(db, operators)
    recording = {"works": False}

    async def record(item: dict[str, Any]) -> None:
        if not recording["works"]:
            raise RuntimeError("cannot record it yet")
        await asyncio.to_thread(
            checkout.record_payment, db, channel="telegram", token=item["token"],
            charge_id=item["charge_id"], amount=item["amount"], currency=item["currency"],
            buyer=item["identity"])

    real_run = db.run

    def down(*args: Any, **kwargs: Any) -> Any:
        raise DatabaseUnavailable("the database is down")

    monkeypatch.setattr(db, "run", down)
    assert await charge_spool.replay(spool, record, told) == 0
    monkeypatch.setattr(db, "run", real_run)
    assert notices(db, "payment_waiting") == [] and len(charge_spool.pending(spool)) == 1
    for _ in range(2):  # the database is back; the charge still cannot be recorded
        assert await charge_spool.replay(spool, record, told) == 0
    waiting = notices(db, "payment_waiting")
    assert sorted(p["identity"] for _, p in waiting) == ["tg:1", "wx:op"]
    assert {(p["charge"], p["amount"], p["buyer"], p["update"]) for _, p in waiting} == {
        ("c45", 2000, "tg:45", 45)}
    recording["works"] = True
    assert await charge_spool.replay(spool, record, told) == 1
    assert charge_spool.pending(spool) == []
    assert sorted(p["identity"] for _, p in notices(db, "payment_late")) == ["tg:1", "wx:op"]
    assert len(notices(db, "payment_waiting")) == 2
    # a charge the shop refuses is flagged (payment_flag), never called "recorded late"
    charge_spool.spool(spool, {"channel": "telegram", "token": "no-such", "amount": 2000,
                               "currency": "CNY", "charge_id": "c46", "identity": "tg:45"})
    assert await charge_spool.replay(spool, record, told) == 1
    assert len(notices(db, "payment_late")) == 2


def test_an_update_set_aside_as_failed_is_told_to_operators_once(db: Database) -> None:
    stored(db, [make_text_update(55, "/me", update_id=5, message_id=5)])
    assert inbox.set_aside(db, 5, inbox.FAILED, error="RuntimeError: boom",
                           operators=("tg:1", "tg:2"))
    assert not inbox.set_aside(db, 5, inbox.FAILED, error="again", operators=("tg:1",))
    assert statuses(db) == {5: "failed"}
    (lang, params), _ = notices(db, "update_failed")
    assert render("update_failed", params, "en") == (
        "A chat update could not be handled and was set aside: update 5 (message) from "
        "tg:55, last error: RuntimeError: boom. storefront inbox lists it.")
    assert render("update_failed", params, "zh").startswith("一条聊天消息无法处理，已搁置")


def test_finished_rows_are_pruned_after_the_retention_pending_and_spooled_stay(
        db: Database) -> None:
    stored(db, [make_text_update(50, f"/me {n}", update_id=n, message_id=n)
                for n in range(1, 5)])
    assert inbox.finish(db, 1) and not inbox.finish(db, 1)  # finished once
    assert not inbox.finish(db, 99)  # never stored
    inbox.finish(db, 2, inbox.EXPIRED)
    inbox.finish(db, 3, inbox.SPOOLED)
    later = datetime.now(UTC) + inbox.KEEP - timedelta(hours=1)
    assert inbox.prune(db, at=later) == 0
    assert inbox.prune(db, at=later + timedelta(hours=2)) == 2
    assert statuses(db) == {3: "spooled", 4: "pending"}
    body = json.loads(db.read(lambda s: s.get(InboxUpdate, 4)).body)  # the raw update
    assert body["message"]["text"] == "/me 4"


async def test_polling_confirms_nothing_the_inbox_could_not_store(
        api: FakeBotAPI, sdb: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    db = sdb
    real_receive = inbox.receive
    monkeypatch.setattr(inbox, "receive", database_down)
    script = Script()
    async with telegram_running(settings_for(api), App(db=db, operators=frozenset()),
                                poll_timeout=1, conversations=script.conversations()):
        mark = len(api.calls)
        api.push_update(make_text_update(60, "/me", update_id=70, message_id=70))
        for _ in range(2):  # asked again and again, never with an offset past it
            mark = api.calls.index(await api.wait_for("getUpdates", since=mark)) + 1
        assert all(int(c.params.get("offset") or 0) <= 70 for c in api.calls_of("getUpdates"))
        assert [u["update_id"] for u in api.pending_updates()] == [70]
        assert script.requests == [] and statuses(db) == {}

        monkeypatch.setattr(inbox, "receive", real_receive)
        await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == 60)
        assert await drained(db) == {70: "done"}
        await api.wait_for(lambda c: c.is_("getUpdates") and c.params.get("offset") == 71)
        assert api.pending_updates() == [] and len(script.requests) == 1


async def test_the_webhook_answers_503_until_the_update_is_stored(
        api: FakeBotAPI, sdb: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    db = sdb
    real_receive = inbox.receive
    script = Script()
    settings = settings_for(api, TELEGRAM_WEBHOOK_URL="https://shop.example/telegram",
                            TELEGRAM_WEBHOOK_SECRET="hook-secret")
    update = make_text_update(61, "/me", update_id=80, message_id=80)
    async with telegram_running(settings, App(db=db, operators=frozenset()), poll_timeout=1,
                                conversations=script.conversations()) as application:
        route = Starlette(routes=[Route("/telegram", telegram_webhook_route(
            application, "hook-secret"), methods=["POST"])])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=route),
                                     base_url="http://shop") as client:
            async def post() -> int:
                r = await client.post("/telegram", json=update, headers={
                    "X-Telegram-Bot-Api-Secret-Token": "hook-secret"})
                return r.status_code

            monkeypatch.setattr(inbox, "receive", database_down)
            assert await post() == 503  # not stored: Telegram sends it again
            assert statuses(db) == {} and script.requests == []
            monkeypatch.setattr(inbox, "receive", real_receive)
            assert await post() == 200
            assert 80 in statuses(db)  # stored before the 200
            assert await drained(db) == {80: "done"}
            assert await post() == 200  # sent again: stored once, handled once
            assert await drained(db) == {80: "done"} and len(script.requests) == 1


def blink_while_marking(monkeypatch: pytest.MonkeyPatch, update_id: int) -> list[int]:
    """The database blinks (once) while the row of `update_id` is marked done; the list
    returned holds that id once it has."""
    real_finish = inbox.finish_many
    failed: list[int] = []

    def finish_once(db: Database, update_ids: list[int], *args: Any, **kwargs: Any) -> int:
        if update_id in update_ids and not failed:
            failed.append(update_id)
            raise DatabaseUnavailable("blink")
        return real_finish(db, update_ids, *args, **kwargs)

    monkeypatch.setattr(inbox, "finish_many", finish_once)
    return failed


async def test_a_row_that_fails_holds_back_its_users_later_rows(
        api: FakeBotAPI, sdb: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    db = sdb
    failed = blink_while_marking(monkeypatch, 1)
    stored(db, [make_text_update(90, "/me one", update_id=1, message_id=1),
                make_text_update(90, "/me two", update_id=2, message_id=2),
                make_text_update(91, "/me other", update_id=3, message_id=3)])
    script = Script()
    async with telegram_running(settings_for(api), App(db=db, operators=frozenset()),
                                poll_timeout=1, conversations=script.conversations()):
        assert await drained(db, 3) == {1: "done", 2: "done", 3: "done"}
        seen = [(r.identity, r.text) for r in script.requests]
        # row 1 ran again after the failure (at least once), and row 2 only after it
        assert [t for i, t in seen if i == "tg:90"] == ["/me one", "/me one", "/me two"]
        assert ("tg:91", "/me other") in seen and failed == [1]
