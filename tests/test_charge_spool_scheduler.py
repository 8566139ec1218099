"""The charge spool's replay is the scheduler's job (issue 15: periodic jobs live in the
scheduler): the Telegram adapter hands over one round (`bot.telegram.lifecycle.chores`),
`storefront run`'s wiring (bot/app.py) gives it to the scheduler, which runs it every few
seconds from its start until the charge is recorded; the bot alone replays nothing. A round
never drops a charge spooled while it was recording."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot import app as app_module
from bot import charge_spool
from engine import checkout
from handlers.base import App, Channels
from storage.db import Database
from storage.models import JournalTxn
from storage.ratelimit import RateLimiter
from tests.helpers import telegram_checkout
from tests.standins.telegram_api import FakeBotAPI
from tests.test_telegram_adapter import TOKEN, settings_for
from tests.test_telegram_inbox import drained, notices, statuses

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")

ROUND = 0.3  # seconds between rounds here (charge_spool.EVERY, 5 s in service)


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI(token=TOKEN) as fake:
        yield fake


async def until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def charge_keys(db: Database) -> list[str]:
    return list(db.read(lambda s: s.execute(select(JournalTxn.key).where(
        JournalTxn.key.like("telegram:charge:%"))).scalars().all()))


async def test_the_scheduler_replays_the_spool_until_the_charge_is_recorded(
        api: FakeBotAPI, sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    db = sqlite_db
    token = telegram_checkout(db)
    real_paid, attempts = checkout.record_payment, []

    def broken(*args: Any, **kwargs: Any) -> Any:
        attempts.append(kwargs.get("charge_id"))
        raise RuntimeError("a bug in recording")

    monkeypatch.setattr(checkout, "record_payment", broken)
    monkeypatch.setattr(charge_spool, "EVERY", ROUND)
    settings = settings_for(api)
    spool = Path(settings.charge_spool)
    app = App(db=db, operators=frozenset({"tg:1", "tg:2"}), limiter=RateLimiter.disabled(),
              channels=Channels(payments=frozenset({"telegram"})))
    telegram = await app_module.start_telegram(settings, app)  # as `storefront run` does
    assert telegram is not None
    sched = None
    try:
        assert [(c.name, c.every, c.at_start) for c in telegram.chores] == [
            ("telegram-charge-spool", ROUND, True), ("telegram-inbox-prune", 6 * 3600.0, True)]
        api.push_successful_payment(30, token, 2000, "charge-30")
        assert await drained(db) == {1: "spooled"}
        assert [c["charge_id"] for c in charge_spool.pending(spool)] == ["charge-30"]
        assert len(notices(db, "payment_waiting")) == 2  # one per operator
        # the bot alone replays nothing: no task of its own retries the charge
        tried = len(attempts)
        await asyncio.sleep(3 * ROUND)
        assert len(attempts) == tried

        sched = await app_module.start_scheduler(settings, app, telegram)
        job = sched.handle.get_job("telegram-charge-spool")
        assert job is not None and job.trigger.interval == timedelta(seconds=ROUND)
        # rounds come while it still fails: the charge stays, nobody is told twice
        await until("two failing rounds", lambda: len(attempts) >= tried + 2)
        assert [c["charge_id"] for c in charge_spool.pending(spool)] == ["charge-30"]
        assert statuses(db) == {1: "spooled"} and charge_keys(db) == []
        # once recording works, the next round records it: once, its row done, each
        # operator told once that it was recorded late
        monkeypatch.setattr(checkout, "record_payment", real_paid)
        await until("the spool to empty", lambda: charge_spool.pending(spool) == [])
        assert charge_keys(db) == ["telegram:charge:charge-30"]
        assert statuses(db) == {1: "done"}
        assert sorted(p["identity"] for _, p in notices(db, "payment_late")) == ["tg:1", "tg:2"]
        await asyncio.sleep(3 * ROUND)  # later rounds change nothing
        assert charge_keys(db) == ["telegram:charge:charge-30"]
        assert len(notices(db, "payment_late")) == 2
        assert len(notices(db, "payment_waiting")) == 2
    finally:
        await app_module._stop([r for r in (telegram, sched) if r is not None])


async def test_a_charge_spooled_while_a_round_records_stays_in_the_spool(
        tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    for charge in ("a", "c"):
        charge_spool.spool(spool, {"charge_id": charge})
    recorded: list[str] = []

    async def record(item: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        if item["charge_id"] == "a":  # the adapter spools "b" meanwhile; "a" still fails
            charge_spool.spool(spool, {"charge_id": "b", "note": "新"})
            raise RuntimeError("the database is down")
        recorded.append(item["charge_id"])

    assert await charge_spool.replay(spool, record) == 1
    assert recorded == ["c"]
    assert charge_spool.pending(spool) == [{"charge_id": "a"}, {"charge_id": "b", "note": "新"}]

    async def works(item: dict[str, Any]) -> None:
        recorded.append(item["charge_id"])

    assert await charge_spool.replay(spool, works) == 2
    assert recorded == ["c", "a", "b"] and charge_spool.pending(spool) == []
    assert await charge_spool.replay(spool, works) == 0 and spool.read_text() == ""
