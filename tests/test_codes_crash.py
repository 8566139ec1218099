"""Digital goods and crashes: a process killed between the payment and the delivery of its
code, restarted: the code arrives exactly once, and no code is ever given twice. Real
SIGKILLs of real processes (storage/faults.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from telegram import Bot

from bot.senders import TelegramSender
from engine import outbox, users
from handlers.notify import render
from scheduler import Deliverer
from storage.db import Database
from storage.models import Code, Outbox
from tests.release_helpers import cli
from tests.standins.telegram_api import FakeBotAPI
from tests.test_codes import BUYER, codes_of, digital, upload

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "123:ABC"
KILLED = -signal.SIGKILL
pytestmark = pytest.mark.slow  # real processes started and killed: seconds each
# One purchase of one code, keyed as a channel's payment would be: a retry is the same
# purchase (`pay:1`), whatever happened to the first attempt.
BUY = """
import sys
from datetime import datetime, timedelta, timezone
from engine import service
from storage.db import Database
db = Database(sys.argv[1])
r = service.buy(db, user="tg:5", sku="GAME", qty=1, key="pay:1", order="G1", method="cash",
                at=datetime(2026, 8, 2, 10, tzinfo=timezone(timedelta(hours=8))))
print(r["order"], r.get("replayed", False))
"""


def buy(url: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STOREFRONT_FAULT"}
    if fault:
        env["STOREFRONT_FAULT"] = fault
    return subprocess.run([sys.executable, "-c", BUY, url], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


async def drain(db: Database, api: FakeBotAPI) -> None:
    async with Bot(TOKEN, base_url=api.base_url) as bot:
        await Deliverer(db, {"tg": TelegramSender(bot)}, renderer=render).drain()


def receipts(db: Database) -> list[Outbox]:
    return list(db.read(lambda s: s.execute(select(Outbox).where(
        Outbox.kind == "digital_codes")).scalars().all()))


@pytest.mark.parametrize("fault", ["commit.before:buy:1", "commit.after:buy:1"])
def test_killed_at_the_payments_commit_then_retried_gives_one_code_once(
        sqlite_url: str, sqlite_db: Database, fault: str):
    digital(sqlite_db)
    upload(sqlite_db, "C-1", "C-2")
    killed = buy(sqlite_url, fault)
    assert killed.returncode == KILLED, killed.stderr
    committed = fault.startswith("commit.after")
    assert len(receipts(sqlite_db)) == (1 if committed else 0)
    again = buy(sqlite_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["G1", str(committed)]  # after the commit: a replay
    assert codes_of(sqlite_db, "G1") == ["C-1"]
    (row,) = receipts(sqlite_db)
    assert json.loads(row.params)["codes"] == [["GAME", "C-1"]]


def test_delivery_killed_after_its_claim_sends_the_code_once_after_the_restart(
        sqlite_url: str, sqlite_db: Database):
    """The payment is committed with its receipt in the outbox; the deliverer is killed
    after claiming it and before sending: after the restart the code arrives once."""
    digital(sqlite_db)
    users.resolve(sqlite_db, BUYER)  # the buyer's Telegram chat, where the receipt goes
    upload(sqlite_db, "D-1")
    assert buy(sqlite_url).returncode == 0
    with FakeBotAPI() as api:
        killed = cli("outbox", "--db", sqlite_url, "--deliver", env={
            "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": api.base_url,
            "STOREFRONT_FAULT": "outbox.claimed:1"})
        assert killed.returncode == KILLED, killed.stderr
        assert [r.status for r in receipts(sqlite_db)] == [outbox.CLAIMED]
        assert api.calls_of("sendMessage") == []
        # once the claim's time is up, the row is found abandoned and goes out again
        later = datetime.now(UTC) + outbox.SENDING_TIMEOUT
        assert outbox.recover_stale(sqlite_db, now=later) == 0  # claimed, not sent: requeued
        assert [r.status for r in receipts(sqlite_db)] == [outbox.PENDING]
        for _ in range(2):  # the restarted deliverer, then once more: nothing new
            asyncio.run(drain(sqlite_db, api))
        sent = Counter(c.params["text"] for c in api.calls_of("sendMessage") if c.ok)
    assert [r.status for r in receipts(sqlite_db)] == [outbox.SENT]
    (message,) = [text for text in sent if "D-1" in text]
    assert sent[message] == 1 and message.startswith("订单 G1 的卡密：\nGAME：D-1")  # no language: Chinese
    assert sqlite_db.read(lambda s: s.execute(select(Code.order_no)).scalars().all()) == [1]
