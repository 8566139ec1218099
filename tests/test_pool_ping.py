"""PostgreSQL's pooled connections: pinged before use only when they may have gone stale.

A connection the shop used a moment ago goes straight to work (no `SELECT`-like ping before
the transaction: one round trip less a purchase); one that sat in the pool past the idle
threshold, or that was last used before a lost connection was seen, is pinged first
(storage/db.py `StalePing`). A backend terminated between two purchases never loses or
doubles a payment: on a busy connection the next purchase fails before anything of it can
commit and `Database.run` retries it on a new connection; on an idle one the ping finds it
dead and the pool replaces it before the purchase starts."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, func, select

from engine import service, users
from storage.db import Database
from storage.migrate import migrate
from storage.models import JournalTxn
from tests.conftest import pg_schema
from tests.fault_driver import ACT

pytestmark = pytest.mark.pg

BUYER = "tg:7101"
BUSY_FOR_THE_TEST = 600.0  # an idle threshold no pause in these tests comes near
# A short threshold, and a pause past it; long enough that a loaded machine's stall between
# two back-to-back purchases does not pass for idleness.
SHORT_IDLE, PAUSE = 0.5, 0.6
RETRYING = "retrying a unit of work"


@contextmanager
def shop(pg_admin: str, *, ping_idle_after: float) -> Iterator[tuple[Database, str]]:
    """A migrated shop in a schema of its own, with one product and one buyer, its
    connections named for the terminator; the first purchase is made, so the pool holds a
    connection used just now."""
    name = "ping_" + uuid.uuid4().hex[:8]
    with pg_schema(pg_admin) as url:
        db = Database(f"{url}&application_name={name}", retry_backoff_max=0.02,
                      ping_idle_after=ping_idle_after)
        try:
            yield stocked(db), name
        finally:
            db.dispose()


def stocked(db: Database) -> Database:
    migrate(db)
    service.upsert_product(db, sku="TEA", price="100.00", margin="0.50", lock_days=15,
                           scheme="both", at=ACT - timedelta(days=1))
    users.resolve(db, BUYER, lang="en", at=ACT - timedelta(days=1))
    purchase(db, 0)
    return db


def purchase(db: Database, n: int) -> dict[str, Any]:
    return service.buy(db, user=BUYER, sku="TEA", method="offline",
                       at=ACT + timedelta(minutes=n), key=f"ping:buy:{n}")


def recorded(db: Database, n: int) -> int:
    """How many journal transactions purchase `n` wrote (its key)."""
    return db.read(lambda s: s.execute(select(func.count()).where(
        JournalTxn.key == f"ping:buy:{n}")).scalar_one())


def count_pings(monkeypatch: pytest.MonkeyPatch, db: Database) -> list[bool]:
    """Every ping the pool sends from now on: True if it found the connection alive."""
    dialect = db.engine.dialect
    real = dialect.do_ping
    pings: list[bool] = []

    def ping(dbapi_connection: Any) -> bool:
        try:
            real(dbapi_connection)
        except Exception:
            pings.append(False)
            raise
        pings.append(True)
        return True

    monkeypatch.setattr(dialect, "do_ping", ping)
    return pings


@contextmanager
def protocol_trace(db: Database, path: Path) -> Iterator[list[str]]:
    """libpq's own trace of every message on the connections checked out in the block
    (tracing starts before the pool's checkout work, so a ping is in it too); the lines are
    in the list when the block ends."""
    traced: list[Any] = []
    out = path.open("w")

    def trace(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection not in traced:
            dbapi_connection.pgconn.trace(out.fileno())
            dbapi_connection.pgconn.set_trace_flags(
                psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
            traced.append(dbapi_connection)

    event.listen(db.engine, "checkout", trace, insert=True)
    lines: list[str] = []
    try:
        yield lines
    finally:
        event.remove(db.engine, "checkout", trace)
        for conn in traced:
            if not conn.closed:
                conn.pgconn.untrace()  # flushes libpq's buffer
        out.close()
        lines.extend(path.read_text().splitlines())


def server_answers(lines: list[str]) -> int:
    """Times the server said it is ready for the next query: one per round trip the client
    waited for (a ping, a statement, a pipeline's sync)."""
    return sum(1 for line in lines if "\tReadyForQuery\t" in line)


def ping_queries(lines: list[str]) -> int:
    return sum(1 for line in lines if line.startswith("F\t") and '\tQuery\t ";"' in line)


def terminate(admin_url: str, app_name: str) -> int:
    """Terminates every backend of `app_name` (as a server restart would) and waits until
    they are gone; returns how many there were."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        killed = conn.execute("select count(*) filter (where pg_terminate_backend(pid)) "
                              "from pg_stat_activity where application_name = %s",
                              (app_name,)).fetchone()
        deadline = time.monotonic() + 30
        while conn.execute("select count(*) from pg_stat_activity "
                           "where application_name = %s", (app_name,)).fetchone() != (0,):
            assert time.monotonic() < deadline, "the terminated backends never went away"
            time.sleep(0.01)
    return int(killed[0]) if killed else 0


def retries(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.getMessage().startswith(RETRYING))


# -- no ping on a busy connection ----------------------------------------------------------

def test_a_connection_used_a_moment_ago_is_not_pinged_before_a_purchase(
        pg_admin: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with shop(pg_admin, ping_idle_after=BUSY_FOR_THE_TEST) as (db, _):
        pings = count_pings(monkeypatch, db)
        with protocol_trace(db, tmp_path / "busy.trace") as busy:
            for n in range(1, 11):
                purchase(db, n)
        assert pings == []
        assert ping_queries(busy) == 0
        assert server_answers(busy) > 0  # the trace did see the purchases


def test_a_ping_costs_one_round_trip_a_purchase_and_is_sent_after_the_idle_threshold(
        pg_admin: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same ten purchases on a shop whose threshold is 0 (every checkout pinged): the
    counter and the trace above can see a ping, and it is one round trip each."""
    with shop(pg_admin, ping_idle_after=BUSY_FOR_THE_TEST) as (db, _):
        with protocol_trace(db, tmp_path / "busy.trace") as busy:
            for n in range(1, 11):
                purchase(db, n)
    with shop(pg_admin, ping_idle_after=0.0) as (db, _):
        pings = count_pings(monkeypatch, db)
        with protocol_trace(db, tmp_path / "idle.trace") as idle:
            for n in range(1, 11):
                purchase(db, n)
        assert pings == [True] * 10
        assert ping_queries(idle) == 10
        assert server_answers(idle) == server_answers(busy) + 10


def test_a_connection_idle_past_the_threshold_is_pinged_once(
        pg_admin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with shop(pg_admin, ping_idle_after=SHORT_IDLE) as (db, _):
        pings = count_pings(monkeypatch, db)
        time.sleep(PAUSE)
        purchase(db, 1)  # idle past the threshold: pinged
        purchase(db, 2)  # used just now: not pinged
        assert pings == [True]


# -- a terminated backend ------------------------------------------------------------------

def test_a_backend_terminated_between_two_purchases_on_a_busy_connection_is_retried_once(
        pg_admin: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    with shop(pg_admin, ping_idle_after=BUSY_FOR_THE_TEST) as (db, name):
        pings = count_pings(monkeypatch, db)
        assert terminate(pg_admin, name) == 1
        caplog.set_level(logging.INFO, logger="storage.db")
        first = purchase(db, 1)  # its connection is dead: the first statement finds out
        assert retries(caplog) == 1  # …and the unit of work ran again on a new connection
        assert pings == []  # a busy connection is never pinged, even then
        assert recorded(db, 1) == 1  # applied once
        again = purchase(db, 1)  # the same key again: the first answer, nothing new
        assert again.pop("replayed") is True and again == first
        assert recorded(db, 1) == 1
        purchase(db, 2)
        assert retries(caplog) == 1 and recorded(db, 2) == 1


def test_a_backend_terminated_while_idle_is_replaced_by_the_ping_before_the_purchase(
        pg_admin: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    with shop(pg_admin, ping_idle_after=SHORT_IDLE) as (db, name):
        pings = count_pings(monkeypatch, db)
        assert terminate(pg_admin, name) == 1
        time.sleep(PAUSE)
        caplog.set_level(logging.INFO, logger="storage.db")
        purchase(db, 1)
        assert pings == [False]  # the ping found it dead; the pool made a new connection
        assert retries(caplog) == 0  # so the purchase itself ran once
        assert recorded(db, 1) == 1


def test_after_a_lost_connection_every_pooled_connection_is_pinged_before_use(
        pg_admin: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A restart kills every pooled connection at once: the first purchase to find its
    connection dead is retried, and the retry's connection (used just as recently) is pinged
    first, so one lost connection costs one retry, not one per pooled connection."""
    with shop(pg_admin, ping_idle_after=BUSY_FOR_THE_TEST) as (db, name):
        sessions = [db.transaction() for _ in range(3)]  # three connections in the pool
        for s in sessions:
            s.__enter__().connection()
        for s in reversed(sessions):
            s.__exit__(None, None, None)
        pings = count_pings(monkeypatch, db)
        assert terminate(pg_admin, name) == 3
        caplog.set_level(logging.INFO, logger="storage.db")
        purchase(db, 1)
        assert retries(caplog) == 1
        assert pings == [False]  # the ping failed, and the pool replaced all the old ones
        for n in range(2, 6):
            purchase(db, n)
        assert retries(caplog) == 1 and pings == [False]
        assert [recorded(db, n) for n in range(1, 6)] == [1] * 5


def test_a_read_on_a_terminated_busy_connection_is_read_again(
        pg_admin: str) -> None:
    with shop(pg_admin, ping_idle_after=BUSY_FOR_THE_TEST) as (db, name):
        assert terminate(pg_admin, name) == 1
        assert recorded(db, 0) == 1  # no "busy, try again" for a read either
