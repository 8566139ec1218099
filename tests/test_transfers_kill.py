"""The transfer follower SIGKILLed in a process of its own (issue 17): the
restarted follower looks the bill up by its `out_bill_no`, WeChat Pay (the loopback
stand-in, in this process) holds one bill, the payee is paid once, and the books verify."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine import transfers
from engine.verify import verify
from tests.standins import wechat as sw
from tests.standins.wechatpay_transfers import BILLS, FakeTransferAPI
from tests.test_transfers import (
    ALICE,
    alice,
    funded,
    later,
    run,
    status_of,
    transfers_client,
    withdraw,
)

ROOT = Path(__file__).resolve().parent.parent

# The child: one follower run against DB at the stand-in, `minutes` from now.
CHILD = """
import asyncio, json, os, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from scheduler.transfers import follow
from storage.db import Database
from tests.standins import wechat as sw
from tests.test_transfers import transfers_client
spec = json.loads(sys.argv[1])
fields = spec["keys"]
for name in ("merchant_private_key_path", "platform_public_key_path"):
    fields[name] = Path(fields[name])
keys = sw.PayKeys(**fields)
api = type("Api", (), {"base_url": spec["base_url"]})()
db = Database(spec["db"])
at = datetime.now(UTC) + timedelta(minutes=spec["minutes"])
print(dict(asyncio.run(follow(db, transfers_client(db, keys, api), clock=lambda: at))))
"""


def follower(spec: dict, minutes: float, fault: str | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("STOREFRONT_FAULT", None)
    if fault:
        env["STOREFRONT_FAULT"] = f"{fault}:1"  # SIGKILL on the first time it is reached
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps({**spec, "minutes": minutes})],
                          env=env, cwd=ROOT, capture_output=True, timeout=30)
    return done.returncode


@pytest.mark.slow
def test_a_follower_killed_after_wechat_pay_acted_pays_once_after_restart(make_db, tmp_path):
    """SIGKILL once WeChat Pay made the bill and before anything was recorded (the worst
    moment; tests/test_transfers.py raises at every other step in-process)."""
    keys = sw.generate_pay_keys(tmp_path / "keys")
    db = make_db("sqlite")
    funded(db)
    wid = withdraw(db)
    no = transfers.out_bill_no(wid)
    with FakeTransferAPI(keys) as api:
        key_fields = {k: str(v) for k, v in dataclasses.asdict(keys).items()}
        spec = {"keys": key_fields, "base_url": api.base_url, "db": str(db.engine.url)}
        assert follower(spec, 0, "transfer.after_call") == -signal.SIGKILL
        assert api.bills[no]["state"] == "WAIT_USER_CONFIRM"  # made, and we never heard
        assert alice(db) == {"wallet": "200.00", "held": "100.00"}
        assert verify(db).ok
        assert follower(spec, 3) == 0  # restarted: looked up by out_bill_no, not re-created
        assert len(api.bills) == 1 and len(api.calls_of(BILLS, "POST")) == 1
        api.confirm(no)
        assert run(db, transfers_client(db, keys, api), later(30)) == {"success": 1}
        assert api.paid_to(ALICE) == 10000 and status_of(db, wid) == "paid"
        assert alice(db) == {"wallet": "200.00", "held": "0.00"}
        assert verify(db).ok
