"""A fork server for the transfer kill-at-every-step tests (tests/test_transfers_kill.py).

`python -m tests.transfer_kill_driver` imports the follower, the wechatpayv3 client and the
notification endpoint once, then reads one JSON command a line on stdin and answers one JSON
line on stdout. Every command runs in a *forked child* with its own database connections and
its own HTTP client to the loopback stand-in (which lives in the test process). A fault armed
in the child (storage/faults.py, the same `name:count[:action]` items `STOREFRONT_FAULT`
takes) SIGKILLs that real process: open transaction, row locks, half-read HTTP answer and all.
The parent never opens a database, so a fork costs milliseconds, not an interpreter start.

Commands (`db`: the database URL; `pay`: {"keys": PayKeys fields, "base_url": the stand-in}):

    {"op": "follow", "db": U, "pay": P, "minutes": M, "fault": "transfer.after_call:1" | null}
        one follower run (scheduler.transfers.follow) at now + M minutes
    {"op": "notify", "db": U, "pay": P, "headers": {…}, "body": "…", "fault": … | null}
        WeChat Pay's transfer notification handed to the endpoint (its HTTP status back)
    {"op": "cli", "argv": ["verify", "--db", U]}
        the real `storefront` command line (bot/cli.py main), its exit code and output
    {"op": "quit"}

Answer: `{"exit": 0 | -9 | …, "out": {...} | null}` (`out` is null when the child was killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bot.cli
from bot.wechatpay.transfers import WeChatTransfers
from scheduler.transfers import follow
from storage import faults
from storage.db import Database
from tests import fork_server
from tests.standins import wechat as sw
from tests.test_transfers import OPERATOR, transfers_client

CONFIRM_HOURS = 24.0


def pay_spec(keys: sw.PayKeys, base_url: str) -> dict[str, Any]:
    """What a child needs to reach the stand-in as the shop would (JSON-able)."""
    fields = {f.name: getattr(keys, f.name) for f in dataclasses.fields(keys)}
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}
    return {"keys": fields, "base_url": base_url}


_CLIENTS: dict[str, WeChatTransfers] = {}  # by key material, made in the parent


def _warm(command: dict[str, Any]) -> None:
    """Load the merchant's keys once, in the parent (an RSA private key takes ~0.1 s to
    load, more than a whole follower run): every child inherits the client."""
    pay = command.get("pay")
    if pay is None:
        return
    which = json.dumps(pay["keys"], sort_keys=True)
    if which not in _CLIENTS:
        fields = dict(pay["keys"])
        for name in ("merchant_private_key_path", "platform_public_key_path"):
            fields[name] = Path(fields[name])
        stand_in = type("StandIn", (), {"base_url": pay["base_url"]})()
        _CLIENTS[which] = transfers_client(None, sw.PayKeys(**fields),  # type: ignore[arg-type]
                                           stand_in)  # type: ignore[arg-type]


def _client(db: Database, pay: dict[str, Any]) -> WeChatTransfers:
    """The warmed client, pointed at this database and this stand-in (in the child)."""
    wt = _CLIENTS[json.dumps(pay["keys"], sort_keys=True)]
    wt.db = db
    wt.client._core._gate_way = pay["base_url"].rstrip("/")
    return wt


def _child(command: dict[str, Any]) -> dict[str, Any]:
    if command["op"] == "cli":
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = bot.cli.main(command["argv"])
        return {"code": code, "stdout": out.getvalue()}
    db = Database(command["db"])
    try:
        wt = _client(db, command["pay"])
        if command.get("fault"):
            faults.arm(command["fault"])
        if command["op"] == "follow":
            at = datetime.now(UTC) + timedelta(minutes=float(command["minutes"]))
            done = asyncio.run(follow(db, wt, clock=lambda: at, confirm_hours=CONFIRM_HOURS,
                                      operators=frozenset({OPERATOR})))
            return {"done": dict(done)}
        if command["op"] == "notify":
            answer = asyncio.run(wt.notification(command["headers"],
                                                 command["body"].encode()))
            return {"status": answer.status}
        raise ValueError(f"unknown op {command['op']!r}")
    finally:
        faults.disarm()
        db.dispose()


def _fork(command: dict[str, Any]) -> dict[str, Any]:
    return fork_server.fork(_child, command, quiet=True)


def main(stdin: Any = sys.stdin, stdout: Any = sys.stdout) -> None:
    fork_server.serve(_fork, stdin, stdout, before=_warm)


class Driver(fork_server.Driver):
    """The test side: start the fork server once (no fault in its environment), send it
    commands, get the answers."""

    module = "tests.transfer_kill_driver"
    drop = ("DATABASE_URL",)


if __name__ == "__main__":
    main()
