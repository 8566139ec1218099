"""Forged and replayed Telegram updates on the webhook, over real sockets: the real
python-telegram-bot Application behind `POST /telegram` of the shop's HTTP server.

A successful payment claimed without Telegram's secret token is refused before it is read;
one delivered twice (or re-sent under a new update id) is recorded once; one carrying
another user's invoice payload credits nobody and is flagged to the operators. (The secret
check itself: tests/test_telegram_e2e.py; wrong amounts and expired invoices:
tests/test_handlers_shop.py.)"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.settings import Settings
from bot.telegram import start_telegram, stop_telegram
from bot.telegram.webhook import SECRET_HEADER
from engine import service
from handlers.base import App, Channels
from storage.db import Database
from storage.models import JournalTxn, Order, Outbox
from storage.ratelimit import RateLimiter
from tests.standins import wechat as sw
from tests.standins.telegram_api import (
    FakeBotAPI,
    make_pre_checkout_update,
    make_successful_payment_update,
    make_text_update,
)
from tests.wechat_harness import open_shop

TOKEN = "4343:HOSTILE-TOKEN"
OPERATOR = 1
BUYER, THIEF = 7, 8


class Webhook:
    def __init__(self, shop: Any, api: FakeBotAPI, db: Database, secret: str) -> None:
        self.shop, self.api, self.db, self.secret = shop, api, db, secret

    async def post(self, update: dict[str, Any],
                   headers: dict[str, str] | None = None) -> int:
        """POST as Telegram would (with the secret), or with the `headers` given."""
        sent = {SECRET_HEADER: self.secret} if headers is None else headers
        r = await self.shop.http.post("/telegram", json=update, headers=sent)
        return r.status_code

    def purchases(self) -> int:
        return self.db.read(lambda s: s.execute(select(func.count()).where(
            JournalTxn.kind == "purchase")).scalar_one())

    def flags(self) -> int:
        return self.db.read(lambda s: s.execute(select(func.count()).where(
            Outbox.kind == "payment_flag")).scalar_one())


@pytest.fixture
async def hook(sqlite_db: Database, sqlite_url: str, tmp_path: Path) -> AsyncIterator[Webhook]:
    service.upsert_product(sqlite_db, sku="TEA", price="100.00", margin="0.50", lock_days=15,
                                  scheme="both")
    app = App(db=sqlite_db, operators=frozenset({f"tg:{OPERATOR}"}), currency="CNY",
              limiter=RateLimiter.disabled(), channels=Channels(payments=frozenset({"telegram"})))
    api = FakeBotAPI(token=TOKEN).start()
    settings = Settings(_env_file=None, TELEGRAM_BOT_TOKEN=TOKEN,  # type: ignore[call-arg]
                        TELEGRAM_API_BASE_URL=api.base_url,
                        TELEGRAM_PAYMENT_PROVIDER_TOKEN="provider-test")
    application = await start_telegram(settings, app, poll_timeout=1)
    secret = secrets.token_urlsafe(24)
    try:
        async with open_shop(sqlite_url, sw.generate_pay_keys(tmp_path / "k"), app=app,
                             telegram_application=application,
                             TELEGRAM_WEBHOOK_SECRET=secret) as shop:
            yield Webhook(shop, api, sqlite_db, secret)
    finally:
        await stop_telegram(application)
        await asyncio.to_thread(api.stop)


async def test_forged_and_replayed_payment_updates_credit_once_and_only_the_payer(
        hook: Webhook) -> None:
    api = hook.api
    mark = len(api.calls)
    assert await hook.post(make_text_update(BUYER, "/buy TEA")) == 200
    invoice = await api.wait_for("sendInvoice", timeout=10, since=mark)
    payload, amount = invoice.params["payload"], 10000
    assert await hook.post(make_pre_checkout_update(BUYER, payload, amount)) == 200
    await api.wait_for("answerPreCheckoutQuery", timeout=10, since=mark)

    # Forged: no secret, a wrong one, an empty one. Refused before the body is read.
    paid = make_successful_payment_update(BUYER, payload, amount, "charge-A")
    for forged in ({}, {SECRET_HEADER: "wrong"}, {SECRET_HEADER: ""},
                   {SECRET_HEADER: hook.secret[:-1]}, {SECRET_HEADER: hook.secret + "x"}):
        assert await hook.post(paid, headers=forged) == 403
    await asyncio.sleep(0.2)
    assert hook.purchases() == 0

    # Genuine, then delivered again, then re-sent by someone under a new update id.
    assert await hook.post(paid) == 200
    await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == BUYER
                       and "TEA" in (c.text or ""), timeout=10, since=mark)
    assert await hook.post(paid) == 200
    again = make_successful_payment_update(BUYER, payload, amount, "charge-A")
    assert await hook.post(again) == 200
    await asyncio.sleep(0.5)
    assert hook.purchases() == 1
    assert hook.db.read(lambda s: s.execute(select(Order.status).where(
        Order.ref == s.execute(select(Order.ref).order_by(Order.no.desc()).limit(1))
        .scalar_one())).scalar_one()) == "settled"

    # Another user presenting the buyer's invoice payload with a charge of their own:
    # precheck says no, and a claimed payment credits nobody and is flagged.
    thief_mark = len(api.calls)
    assert await hook.post(make_pre_checkout_update(THIEF, payload, amount)) == 200
    answer = await api.wait_for("answerPreCheckoutQuery", timeout=10, since=thief_mark)
    assert answer.params.get("ok") in (False, "false", "False")
    flags = hook.flags()
    stolen = make_successful_payment_update(THIEF, payload, amount, "charge-B")
    assert await hook.post(stolen) == 200
    await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == THIEF,
                       timeout=10, since=thief_mark)
    assert hook.purchases() == 1
    assert hook.flags() > flags  # the operators are told a charge could not be matched
