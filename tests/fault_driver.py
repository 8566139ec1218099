"""A fork server for the kill-at-every-step tests (tests/test_faults_kill.py).

`python -m tests.fault_driver` reads one JSON command a line on stdin and answers one JSON
line on stdout. Every command runs in a *forked child*: a fresh process that opens its own
database connections, applies one request and exits. A fault armed in the child
(storage/faults.py, e.g. `commit.after:buy:1`) SIGKILLs that real process mid-request, open
transaction, file locks and all; the parent only reports how the child ended. Forking
from a parent that has already imported everything (and never touched a database) makes a
kill-and-retry cycle cost milliseconds instead of an interpreter start.

Commands (`url` is the database, SQLite file or PostgreSQL schema):

    {"op": "setup", "url": U}                      the shop every action starts from
    {"op": "run", "url": U, "action": A, "fault": "commit.before:buy:1" | null,
     "log": PATH, "late": MINUTES}                 apply action A once, with its key
    {"op": "trace", "url": U, "action": A, "log": PATH}
                                                   apply A, listing every fault point hit
    {"op": "quit"}

Answer: `{"exit": 0 | -9 | …, "out": {"ok": result} | {"refused": code} | {"points": […]}}`.
Every action uses fixed times and its own idempotency key, so applying it once, or killing
it anywhere and applying it again, must end in the very same bytes (journal hash included).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, update

import handlers.notify  # noqa: F401 - imported once here, not in every child that delivers
import scheduler
from engine import checkout, jobs, service, users
from engine.errors import Refusal
from engine.state import snapshot
from storage import faults
from storage.db import Database
from storage.migrate import migrate
from storage.models import Checkout, Head, Order, Outbox, User, Withdrawal
from tests import fork_server

SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 8, 1, 10, 0, tzinfo=SHANGHAI)  # first purchases: mature 16 Aug 00:00
T1 = datetime(2026, 8, 2, 10, 0, tzinfo=SHANGHAI)  # second purchases: mature 17 Aug 00:00
SETUP_RELEASE = datetime(2026, 8, 16, 0, 5, tzinfo=SHANGHAI)
ACT = datetime(2026, 8, 16, 12, 0, tzinfo=SHANGHAI)  # when every action happens
RELEASE_AT = datetime(2026, 8, 17, 0, 5, tzinfo=SHANGHAI)
DELIVER_AT = datetime(2026, 8, 16, 13, 0, tzinfo=SHANGHAI)

OPERATOR = "tg:900"
A, B, C, D = "tg:101", "tg:102", "tg:103", "tg:104"  # B was invited by A

# action → the fault point labels its commit(s) carry (docs/reliability.md)
ACTIONS = ("buy", "buy_referred", "confirm_payment", "telegram_paid", "release",
           "withdraw_points", "transfer_points", "request_withdrawal", "approve_withdrawal",
           "deliver")
# Actions that are one transaction: a kill leaves either nothing or all of it.
ATOMIC = ("buy", "buy_referred", "confirm_payment", "telegram_paid", "withdraw_points",
          "transfer_points", "request_withdrawal", "approve_withdrawal")


def setup(db: Database) -> dict[str, Any]:
    """Four users (B invited by A), a funded queue pool, eight purchases of which four are
    released into wallets and four wait (two of them A's, for acceleration), points
    everywhere, a pending withdrawal, a WeChat order and a Telegram checkout awaiting
    payment, and three notifications waiting to be delivered."""
    for sku, price, scheme in (("TEA", "100.00", "both"), ("CUP", "30.00", "points")):
        service.upsert_product(db, sku=sku, price=price, margin="0.50", lock_days=15,
                               scheme=scheme, name=sku.title(), at=T0, actor=OPERATOR)
    users.resolve(db, A, lang="en", at=T0)
    code = users.invite_code(db, users.resolve(db, A)["user_id"])
    users.resolve(db, B, lang="zh", start_payload=code, at=T0)
    users.resolve(db, C, lang="en", at=T0)
    users.resolve(db, D, lang="zh", at=T0)
    service.deposit(db, pool="queue", amount="1000.00", at=T0, actor=OPERATOR,
                    key="setup:deposit")
    for n, (who, when) in enumerate([(A, T0), (C, T0), (D, T0), (C, T0),
                                     (A, T1), (C, T1), (D, T1), (A, T1)], start=1):
        service.buy(db, user=who, sku="TEA", at=when + timedelta(minutes=n), order=f"S{n}",
                    method="offline", actor=OPERATOR, key=f"setup:buy:{n}")
    jobs.run_release(db, at=SETUP_RELEASE)
    db.run(lambda s: s.execute(update(Outbox).values(status="sent", sent_at=SETUP_RELEASE)))
    service.request_withdrawal(db, user=A, amount="50.00", at=ACT - timedelta(hours=2),
                               key="setup:withdrawal")
    checkout.open_checkout(db, user=C, sku="TEA", channel="wechat", method="wechat",
                           key="setup:wx1", at=ACT - timedelta(hours=1))
    checkout.open_checkout(db, user=D, sku="TEA", channel="telegram", method="telegram",
                           key="setup:tg1", at=ACT - timedelta(hours=1))
    for n, (src, dst) in enumerate([(C, A), (C, D), (D, C)], start=1):
        service.transfer_points(db, sender=src, receiver=dst, points="1.000000",
                                at=ACT - timedelta(minutes=30), key=f"setup:transfer:{n}")
    return {"setup": True}


class FileSender:
    """A channel that appends every message it is given to a file (fsync'd before it
    returns, as a chat API's acknowledgement would be)."""

    channel = "tg"

    def __init__(self, path: str) -> None:
        self.path = path

    async def send(self, identity: str, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps([identity, text], ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def deliver(db: Database, log_path: str, late_minutes: int = 0) -> dict[str, Any]:
    at = DELIVER_AT + timedelta(minutes=late_minutes)
    deliverer = scheduler.Deliverer(db, {"tg": FileSender(log_path)}, clock=lambda: at,
                                    batch=2, per_user=0.0)
    return dict(asyncio.run(deliverer.drain()))


def _telegram_token(db: Database) -> str:
    return db.read(lambda s: s.execute(select(Checkout.token).where(
        Checkout.channel == "telegram")).scalar_one())


def _wechat_order(db: Database) -> str:
    return db.read(lambda s: s.execute(select(Checkout.order_ref).where(
        Checkout.channel == "wechat")).scalar_one())


def act(db: Database, action: str, log_path: str = os.devnull,
        late: int = 0) -> dict[str, Any]:
    """Apply one request, keyed as the chat or the channel would key it."""
    if action == "buy":  # C pays from the wallet (SPEC §3, §4: entry, pool share, points)
        return service.buy(db, user=C, sku="TEA", at=ACT, method="wallet", order="K1",
                           key="req:telegram:5001:buy")
    if action == "buy_referred":  # B's purchase accelerates A's waiting entries (SPEC §3)
        return service.buy(db, user=B, sku="TEA", qty=2, at=ACT, method="offline",
                           order="K2", actor=OPERATOR, key="req:telegram:5002:offline")
    if action == "confirm_payment":  # WeChat Pay's notification for C's order
        return checkout.record_payment(db, channel="wechat", order=_wechat_order(db),
                                       charge_id="4200000001", amount=10000, currency="CNY",
                                       buyer=C, operators=(OPERATOR,), at=ACT)
    if action == "telegram_paid":  # Telegram's successful_payment for D's checkout
        return checkout.record_payment(db, channel="telegram", token=_telegram_token(db),
                                       charge_id="tg_charge_0001", amount=10000,
                                       currency="CNY", buyer=D, operators=(OPERATOR,), at=ACT)
    if action == "release":  # entries 5-8 matured: three pages of two
        result = jobs.run_release(db, at=RELEASE_AT, batch=2)
        return {k: result[k] for k in ("skipped", "settled", "paid", "amount", "blocked")}
    if action == "withdraw_points":
        return service.withdraw_points(db, user=C, points="5.000000", at=ACT,
                                       key="req:telegram:5003:sell")
    if action == "transfer_points":
        return service.transfer_points(db, sender=C, receiver=D, points="3.000000", at=ACT,
                                       key="req:telegram:5004:transfer")
    if action == "request_withdrawal":
        return service.request_withdrawal(db, user=C, amount="20.00", at=ACT,
                                          key="req:telegram:5005:withdraw")
    if action == "approve_withdrawal":
        return service.decide_withdrawal(db, withdrawal_id=1, approve=True, actor=OPERATOR,
                                         at=ACT)
    if action == "deliver":
        return deliver(db, log_path, late)
    raise ValueError(f"unknown action {action!r}")


def fingerprint(db: Database) -> dict[str, Any]:
    """Everything a request can change: the state replay prints, the journal's tip (its
    hash covers every transaction before it), every user's money, orders, checkouts,
    withdrawals and the outbox (notifications owed and their delivery status)."""

    def work(s: Any) -> dict[str, Any]:
        head = s.get(Head, 1)
        return {
            "state": snapshot(s),
            "journal": [head.last_txn, head.last_hash],
            "users": [[u.handle, u.wallet, u.held, u.points, u.basis] for u in s.execute(
                select(User).order_by(User.id)).scalars()],
            "orders": [[o.ref, o.status, o.cash, o.points_used, o.entry_seq, o.minted,
                        o.accelerated, o.payment_ref] for o in s.execute(
                select(Order).order_by(Order.no)).scalars()],
            "checkouts": sorted([c.order_ref, c.status, c.amount] for c in s.execute(
                select(Checkout)).scalars()),
            "withdrawals": [[w.id, w.user_id, w.amount, w.status, w.decided_by] for w in
                            s.execute(select(Withdrawal).order_by(Withdrawal.id)).scalars()],
            "outbox": sorted([o.key, o.kind, o.params, o.status] for o in s.execute(
                select(Outbox)).scalars()),
        }

    return db.read(work)


# -- the fork server -------------------------------------------------------------------------

def _child(command: dict[str, Any]) -> dict[str, Any]:
    db = Database(command["url"])
    try:
        if command["op"] == "setup":
            migrate(db)
            return setup(db)
        if command["op"] == "trace":
            hits: Counter[str] = Counter()
            order: list[str] = []
            real = faults.point

            def record(name: str) -> None:
                hits[name] += 1
                order.append(f"{name}:{hits[name]}")
                real(name)

            faults.point = record  # type: ignore[assignment]
            act(db, command["action"], command.get("log") or os.devnull)
            return {"points": order}
        if command.get("fault"):
            faults.arm(command["fault"])
        try:
            result = act(db, command["action"], command.get("log") or os.devnull,
                         int(command.get("late") or 0))
        except Refusal as refusal:
            return {"refused": refusal.code}
        return {"ok": result}
    finally:
        db.dispose()


def _fork(command: dict[str, Any]) -> dict[str, Any]:
    return fork_server.fork(_child, command)


def main(stdin: Any = sys.stdin, stdout: Any = sys.stdout) -> None:
    fork_server.serve(_fork, stdin, stdout)


class Driver(fork_server.Driver):
    """The test side: start the fork server once, send it commands."""

    module = "tests.fault_driver"


if __name__ == "__main__":
    main()
