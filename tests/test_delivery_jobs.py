"""The auto-receive job (scheduler/receive.py) and the Telegram adapter's reading of a
payment's `order_info` (docs/delivery.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.settings import Settings
from bot.telegram import start_telegram, stop_telegram
from engine import delivery, service
from handlers.base import App
from scheduler import build_scheduler, receive
from storage.db import Database
from storage.models import Order, Outbox
from tests.helpers import at, seed_shop
from tests.standins.telegram_api import FakeBotAPI, make_successful_payment_update
from tests.test_telegram_adapter import TOKEN, Script, make_app, settings_for


def _shipped_sofa(db: Database) -> None:
    seed_shop(db, users=("B",), products=(("SOFA", "1000.00", "0.35", 30, "both"),),
              config={"store": {"settle_days": "7", "settle_from": "receipt"}})
    service.buy(db, user="B", sku="SOFA", order="S1", at=at(1))
    delivery.ship(db, order="S1", carrier="SF", tracking="SF1", at=at(2))


def test_the_days_come_from_the_setting_with_10_by_default() -> None:
    assert Settings(_env_file=None).auto_receive_days == 10  # type: ignore[call-arg]
    three = Settings(_env_file=None, STOREFRONT_AUTO_RECEIVE_DAYS="3")  # type: ignore[call-arg]
    assert receive.days_of(three) == 3
    assert receive.days_of(object()) == 10


async def test_the_job_receives_what_is_due_once_and_tells_the_buyer(memdb: Database) -> None:
    _shipped_sofa(memdb)
    assert await receive.auto_receive(memdb, lambda: at(11), 10) == []
    assert await receive.auto_receive(memdb, lambda: at(12), 10) == ["S1"]
    assert await receive.auto_receive(memdb, lambda: at(13), 10) == []
    order = memdb.read(lambda s: s.execute(select(Order).where(Order.ref == "S1")).scalar_one())
    assert order.received_at == at(12) and order.settles_at == at(19, 0)
    rows = memdb.read(lambda s: s.execute(select(Outbox.key).where(
        Outbox.kind == "order_received")).scalars().all())
    assert rows == ["received:S1"]


async def test_a_failing_run_is_logged_and_the_next_one_retries(memdb, monkeypatch, caplog):
    _shipped_sofa(memdb)

    def broken(*args: Any, **kwargs: Any) -> list[str]:
        raise ConnectionError("database went away")

    monkeypatch.setattr(delivery, "auto_receive_due", broken)
    assert await receive.auto_receive(memdb, lambda: at(12), 10) == []
    assert "auto-receive failed" in caplog.text
    monkeypatch.undo()
    assert await receive.auto_receive(memdb, lambda: at(12), 10) == ["S1"]


def test_the_scheduler_runs_auto_receive_hourly_with_the_configured_days(memdb) -> None:
    settings = Settings.model_validate({"STOREFRONT_AUTO_RECEIVE_DAYS": "4", "REDIS_URL": None})
    scheduler = build_scheduler(settings, memdb, {}, clock=lambda: at(1))
    job = scheduler.get_job("auto-receive")
    assert job is not None and job.args[2] == 4
    assert job.trigger.interval == timedelta(hours=1)


# -- Telegram: the invoice's shipping details arrive with the payment -------------------------

@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI(token=TOKEN) as fake:
        yield fake


async def test_a_telegram_payments_order_info_is_handed_over_before_the_payment(api) -> None:
    script, app = Script(), make_app()
    shipping: list[dict[str, Any]] = []

    async def record(app: App, **kw: Any) -> bool:
        assert script.payments == []  # before the payment is recorded
        shipping.append(kw)
        return True

    conv = script.conversations()
    object.__setattr__(conv, "shipping", record)
    application = await start_telegram(settings_for(api), app, poll_timeout=1,
                                       conversations=conv)
    try:
        update = make_successful_payment_update(8, "tok-1", 1000, "charge-1")
        update["message"]["successful_payment"]["order_info"] = {
            "name": "Zhang San", "phone_number": "13800000000",
            "shipping_address": {"country_code": "CN", "state": "Beijing", "city": "Beijing",
                                 "street_line1": "1 Example Road", "street_line2": "",
                                 "post_code": "100000"}}
        api.push_update(update)
        await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == 8, 5.0)
    finally:
        await stop_telegram(application)
    assert shipping == [{"token": "tok-1", "identity": "tg:8", "name": "Zhang San",
                         "phone": "13800000000", "address": {
                             "country_code": "CN", "state": "Beijing", "city": "Beijing",
                             "street_line1": "1 Example Road", "street_line2": "",
                             "post_code": "100000"}}]
    assert len(script.payments) == 1


def test_telegrams_address_fields_become_one_line() -> None:
    from handlers.delivery import one_line_address

    assert one_line_address({"country_code": "CN", "state": "Beijing", "city": "Beijing",
                             "street_line1": "1 Example Road", "street_line2": "",
                             "post_code": "100000"}) == \
        "1 Example Road, Beijing, Beijing, 100000, CN"
