"""The database going away mid-request: SQLite locked by another writer past the busy
timeout, a PostgreSQL backend terminated (`pg_terminate_backend`) in the middle of a
transaction, a PostgreSQL server that does not answer at all.

Each time the user gets a polite "busy, try again" reply, nothing half-written remains, and
the next request (or the same message delivered again) works and applies exactly once."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select

from engine import checkout, service, users
from handlers import dispatch, i18n
from handlers.base import App, Channels, Reply, Request, Text
from storage import faults
from storage.db import Database
from storage.migrate import migrate
from storage.models import JournalTxn
from storage.ratelimit import RateLimiter
from tests.fault_driver import ACT, fingerprint

BUYER = "tg:7001"
BUSY = i18n.t("en", "error.busy")
# The pause between retries capped at 20 ms rather than 0.5 s: every request still makes all
# of its attempts (storage/db.py `run`) before it says "busy", in a fraction of the time.
FAST_RETRIES = 0.02


def stock(db: Database) -> None:
    """A buyer holding points (from an offline purchase) and a funded queue pool."""
    service.upsert_product(db, sku="TEA", price="100.00", margin="0.50", lock_days=15,
                           scheme="both", at=ACT - timedelta(days=1))
    users.resolve(db, BUYER, lang="en", at=ACT - timedelta(days=1))
    service.buy(db, user=BUYER, sku="TEA", method="offline", at=ACT - timedelta(hours=1),
                order="P1", key="setup:buy")


def app_for(db: Database) -> App:
    return App(db=db, operators=frozenset(), currency="CNY", limiter=RateLimiter.disabled())


def sell(message_id: str, amount: str = "1") -> Request:
    return Request(channel="telegram", identity=BUYER, request_id=f"tg:msg:7001:{message_id}",
                   command="sellpoints", args=(amount,), text=f"/sellpoints {amount}",
                   lang="en")


def text_of(reply: Reply) -> str:
    return "\n".join(item.text for item in reply.items if isinstance(item, Text))


def sells(db: Database) -> int:
    return db.read(lambda s: s.execute(select(func.count()).where(
        JournalTxn.kind == "withdraw_points")).scalar_one())


async def test_sqlite_locked_past_the_busy_timeout_says_try_again_and_changes_nothing(
        tmp_path: Any) -> None:
    path = tmp_path / "shop.db"
    setup = Database(f"sqlite:///{path}")
    migrate(setup)
    stock(setup)
    setup.dispose()
    db = Database(f"sqlite:///{path}", busy_timeout=0.05, retry_backoff_max=FAST_RETRIES)
    app = app_for(db)
    try:
        before = fingerprint(db)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock…
        try:
            reply = await dispatch(app, sell("1"))
        finally:
            other.execute("ROLLBACK")  # …and lets it go
            other.close()
        assert text_of(reply) == BUSY
        assert fingerprint(db) == before

        # Telegram delivers the same message again, then the user sends another one.
        again = await dispatch(app, sell("1"))
        assert "Sold 1.00 points" in text_of(again) and BUSY not in text_of(again), text_of(again)
        assert text_of(await dispatch(app, sell("1"))) == text_of(again)  # keyed: once
        assert sells(db) == 1
        assert "Sold 1.00 points" in text_of(await dispatch(app, sell("2")))
        assert sells(db) == 2
    finally:
        db.dispose()


# -- PostgreSQL ------------------------------------------------------------------------------

@contextmanager
def terminator(admin_url: str, app_name: str, *, idle_ms: int = 30) -> Iterator[list[int]]:
    """Terminates every backend of `app_name` that sits idle inside a transaction for more
    than `idle_ms` (a request stopped at its commit point), until the block ends."""
    killed: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            while not stop.is_set():
                rows = conn.execute(
                    "select pid, pg_terminate_backend(pid) from pg_stat_activity "
                    "where application_name = %s and state = 'idle in transaction' "
                    "and now() - state_change > make_interval(secs => %s)",
                    (app_name, idle_ms / 1000)).fetchall()
                killed.extend(pid for pid, ok in rows if ok)
                stop.wait(0.01)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield killed
    finally:
        stop.set()
        thread.join(5)


def held_until_killed(monkeypatch: pytest.MonkeyPatch, killed: list[int], *,
                      attempts: int) -> None:
    """The first `attempts` commits of a points sale wait at their commit point until the
    terminator has killed their connection: the kill is certain, not a race against a sleep."""
    real = faults.point
    hits = [0]

    def point(name: str) -> None:
        if name != "commit.before:withdraw_points" or hits[0] >= attempts:
            return real(name)
        hits[0] += 1
        deadline = time.monotonic() + 120  # ends a hung run only
        while len(killed) < hits[0]:
            assert time.monotonic() < deadline, "the terminator never killed the backend"
            time.sleep(0.005)

    monkeypatch.setattr(faults, "point", point)


@pytest.fixture
def pg_shop(pg_url: str) -> Iterator[tuple[Database, str]]:
    name = "victim_" + uuid.uuid4().hex[:8]
    db = Database(f"{pg_url}&application_name={name}", retry_backoff_max=FAST_RETRIES)
    migrate(db)
    stock(db)
    yield db, name
    faults.disarm()
    db.dispose()


@pytest.mark.pg
async def test_postgres_backend_terminated_mid_request_is_retried_and_applied_once(
        pg_shop: tuple[Database, str], pg_admin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db, name = pg_shop
    app = app_for(db)
    before = users.account(db, BUYER)["points"]
    with terminator(pg_admin, name, idle_ms=200) as killed:
        held_until_killed(monkeypatch, killed, attempts=1)  # the first attempt waits there
        reply = await dispatch(app, sell("1"))
    assert killed  # its connection was terminated before it could commit…
    assert "Sold 1.00 points" in text_of(reply), text_of(reply)  # …and the retry went through
    assert users.account(db, BUYER)["points"] == before - 1_000_000
    assert sells(db) == 1


@pytest.mark.pg
async def test_postgres_backend_terminated_on_every_attempt_says_try_again(
        pg_shop: tuple[Database, str], pg_admin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db, name = pg_shop
    app = app_for(db)
    before = fingerprint(db)
    with terminator(pg_admin, name, idle_ms=20) as killed:
        held_until_killed(monkeypatch, killed, attempts=10**6)  # every attempt
        reply = await dispatch(app, sell("1"))
    monkeypatch.undo()
    assert text_of(reply) == BUSY
    assert len(killed) >= 2  # every attempt lost its connection
    assert fingerprint(db) == before  # nothing half-written
    assert "Sold 1.00 points" in text_of(await dispatch(app, sell("1")))  # the same message, later
    assert sells(db) == 1


@pytest.mark.pg
async def test_postgres_that_does_not_answer_says_try_again() -> None:
    db = Database("postgresql://postgres@127.0.0.1:9/test?connect_timeout=2",  # discard port
                  retry_backoff_max=FAST_RETRIES)
    try:
        reply = await dispatch(app_for(db), sell("1"))
    finally:
        db.dispose()
    assert text_of(reply) == BUSY


# -- WeChat: the Official Account and WeChat Pay, through the running server -----------------

WX_BUYER = "oLocked_00000000000000000001"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.standins import wechat as sw

    return sw.generate_pay_keys(tmp_path_factory.mktemp("paykeys"))


async def test_wechat_message_and_payment_while_sqlite_is_locked(tmp_path: Any,
                                                                 keys: Any) -> None:
    """A message gets "busy, try again" as its passive reply; a WeChat Pay notification
    gets 503, so WeChat Pay sends it again later, and then it is recorded once."""
    from tests.standins import wechat as sw
    from tests.wechat_harness import open_shop
    from tests.wechat_harness import stock as wx_stock

    path = tmp_path / "shop.db"
    db = Database(f"sqlite:///{path}", busy_timeout=0.05, retry_backoff_max=FAST_RETRIES)
    migrate(db)
    app = App(db=db, operators=frozenset(), currency="CNY", limiter=RateLimiter.disabled(),
              channels=Channels(payments=frozenset({"wechat"})))
    async with open_shop(f"sqlite:///{path}", keys, app=app) as shop:
        wx_stock(db)
        users.resolve(db, f"wx:{WX_BUYER}", lang="zh")
        ref = checkout.open_checkout(db, user=f"wx:{WX_BUYER}", sku="TEA", channel="wechat",
                                     method="wechat", key="checkout:WXL1")["order"]
        headers, body = sw.signed_pay_notification(
            keys, out_trade_no=ref, transaction_id="4200000000000000000000000001",
            total_fen=12000, payer_openid=WX_BUYER)
        before = fingerprint(db)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            reply = await shop.say(WX_BUYER, "我的")
            paid = await shop.notify(headers, body)
        finally:
            other.execute("ROLLBACK")
            other.close()
        busy = i18n.t("zh", "error.busy")
        assert busy in str(reply.get("Content", "")), reply
        assert paid.status_code == 503, paid.text
        assert fingerprint(db) == before

        for _ in range(2):  # WeChat Pay retries; the second delivery is a duplicate
            assert (await shop.notify(headers, body)).status_code == 204
        assert shop.order(ref).status == "settled"
        assert db.read(lambda s: s.execute(select(func.count()).where(
            JournalTxn.key == "wx:txn:4200000000000000000000000001")).scalar_one()) == 1
        after = await shop.say(WX_BUYER, "我的")
        assert busy not in str(after.get("Content", "")) and after.get("Content"), after
