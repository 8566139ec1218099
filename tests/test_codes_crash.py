"""Digital goods and crashes: a process killed between the payment and the delivery of its
code, restarted: the code arrives exactly once, and no code is ever given twice. Real
SIGKILLs of real processes (storage/faults.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from engine import outbox
from storage.db import Database
from storage.models import Code, Outbox
from tests.release_helpers import cli
from tests.standins.telegram_api import FakeBotAPI
from tests.test_codes import codes_of, digital, upload

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "123:ABC"
KILLED = -signal.SIGKILL
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


def receipts(db: Database) -> list[Outbox]:
    return list(db.read(lambda s: s.execute(select(Outbox).where(
        Outbox.kind == "digital_codes")).scalars().all()))


@pytest.mark.parametrize("fault", ["commit.before:buy", "commit.after:buy"])
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
    upload(sqlite_db, "D-1")
    assert buy(sqlite_url).returncode == 0
    with FakeBotAPI() as api:
        env = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": api.base_url}
        killed = cli("outbox", "--db", sqlite_url, "--deliver",
                     env={**env, "STOREFRONT_FAULT": "outbox.claimed:1"})
        assert killed.returncode == KILLED, killed.stderr
        assert [r.status for r in receipts(sqlite_db)] == [outbox.CLAIMED]
        assert api.calls_of("sendMessage") == []
        # the next run finds the claim abandoned once its time is up, and sends it
        sqlite_db.run(lambda s: s.execute(Outbox.__table__.update().values(
            next_at=Outbox.next_at - outbox.SENDING_TIMEOUT)))
        for _ in range(2):
            rerun = cli("outbox", "--db", sqlite_url, "--deliver", env=env)
            assert rerun.returncode == 0, rerun.stderr
        sent = Counter(c.params["text"] for c in api.calls_of("sendMessage") if c.ok)
    assert [r.status for r in receipts(sqlite_db)] == [outbox.SENT]
    (message,) = sent
    assert sent[message] == 1 and "D-1" in message
    assert sqlite_db.read(lambda s: s.execute(select(Code.order_no)).scalars().all()) == [1]
