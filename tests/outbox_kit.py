"""The outbox delivered through the real python-telegram-bot `Bot` to the loopback Bot API
stand-in, shared by the delivery tests (tests/test_outbox_delivery.py,
tests/test_loose_outbox_operators.py): their SQLite database and stand-in fixtures, the
clock, and one drain. A test module takes the fixtures `db` and `api` by importing their
functions (`sqlite_only_db`, `stand_in_api`): pytest finds them by name in the module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from telegram import Bot

from bot.senders import TelegramSender
from scheduler import Deliverer
from storage.db import Database
from tests.standins.telegram_api import FakeBotAPI

TOKEN = "123:ABC"


@pytest.fixture(name="db")
def sqlite_only_db(sqlite_db: Database) -> Database:
    """These tests run on SQLite only (the conftest `db` runs on both)."""
    return sqlite_db


@pytest.fixture(name="api")
async def stand_in_api() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI() as stand_in:
        yield stand_in


def now() -> datetime:
    return datetime.now(UTC)


async def drain(db: Database, api: FakeBotAPI, **options: Any) -> Any:
    """One `Deliverer.drain` sending Telegram's rows to the stand-in; `options` are the
    deliverer's own (`renderer`, `buttons`, `clock`, …). Returns its counts."""
    async with Bot(TOKEN, base_url=api.base_url) as bot:
        return await Deliverer(db, {"tg": TelegramSender(bot)}, **options).drain()
