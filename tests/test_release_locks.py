"""storage/locks.py: one release at a time across processes and machines.

PostgreSQL advisory lock, SQLite lease row, Redis lock in front of either; a process that
finds the lock held skips and names the holder; a dead holder never blocks for long."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from engine.jobs import run_release
from storage.db import Database
from storage.locks import LeaseLock, LockSet, holder_is_gone, job_lock, make_holder
from storage.models import Lease
from tests.conftest import MakeDb
from tests.release_helpers import MATURED, make_shop, paid_entries


def dead_holder() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{socket.gethostname()}:{child.pid}:dead00"


def test_holder_names_host_and_process() -> None:
    me = make_holder()
    assert me.startswith(f"{socket.gethostname()}:") and not holder_is_gone(me)
    assert holder_is_gone(dead_holder())
    assert not holder_is_gone("some-other-host:1:abc")  # cannot tell: assume alive


def admits_one_holder_at_a_time(first: LockSet, second: LockSet) -> None:
    """While `first` holds the lock `second` is refused and told who holds it; released, the
    lock is `second`'s."""
    assert first.acquire("hostA:1:aa")
    assert not second.acquire("hostB:2:bb")
    assert second.blocked_by == "hostA:1:aa"
    first.release()
    assert second.acquire("hostB:2:bb")
    second.release()


def test_sqlite_lease_admits_one_holder_at_a_time(sqlite_db: Database) -> None:
    first, second = job_lock(sqlite_db, "release"), job_lock(sqlite_db, "release")
    assert first.kinds == ["lease"]
    admits_one_holder_at_a_time(first, second)
    assert sqlite_db.read(lambda s: s.get(Lease, "release")) is None


def test_sqlite_lease_of_a_dead_process_is_taken_over_at_once(sqlite_db: Database) -> None:
    gone = dead_holder()
    far = datetime.now(UTC) + timedelta(hours=1)
    sqlite_db.run(lambda s: s.add(Lease(name="release", holder=gone, expires_at=far)))
    lock = job_lock(sqlite_db, "release")
    assert lock.acquire(make_holder())
    lock.release()


def test_sqlite_lease_of_another_host_waits_for_expiry(sqlite_db: Database) -> None:
    later = datetime.now(UTC) + timedelta(minutes=1)
    sqlite_db.run(lambda s: s.add(Lease(name="release", holder="elsewhere:9:zz",
                                        expires_at=later)))
    lock = job_lock(sqlite_db, "release")
    assert not lock.acquire(make_holder())
    assert lock.blocked_by == "elsewhere:9:zz"
    sqlite_db.run(lambda s: s.execute(update(Lease).values(
        expires_at=datetime.now(UTC) - timedelta(seconds=1))))
    assert lock.acquire(make_holder())
    lock.release()


def test_a_held_lease_is_renewed_and_a_stolen_one_is_noticed(sqlite_db: Database) -> None:
    # The leases' clock moves only when the test moves it: whether the lease expired never
    # depends on how promptly the keeper thread got the CPU.
    now = [datetime(2026, 8, 1, tzinfo=UTC)]

    def expires() -> datetime:
        return sqlite_db.read(lambda s: s.get(Lease, "release").expires_at)

    lock = LockSet([LeaseLock(sqlite_db, "release", ttl=timedelta(seconds=0.6),
                              clock=lambda: now[0])])
    assert lock.acquire("mine:1:a")
    first = expires()
    now[0] += timedelta(seconds=1)  # past the first expiry: only a renewal keeps it
    deadline = time.monotonic() + 120  # ends a hung run only; the keeper renews every 0.2 s
    while expires() <= first:
        assert time.monotonic() < deadline, "the keeper never renewed the lease"
        time.sleep(0.01)
    other = LockSet([LeaseLock(sqlite_db, "release", clock=lambda: now[0])])
    assert not other.acquire("theirs:2:b") and other.blocked_by == "mine:1:a"
    sqlite_db.run(lambda s: s.execute(update(Lease).values(holder="thief:3:c")))
    assert lock.lost.wait(120)  # set at the keeper's next renewal
    lock.release()


def test_run_release_skips_when_the_lock_is_held_and_changes_nothing(
        sqlite_db: Database) -> None:
    make_shop(sqlite_db, entries=3)
    held = job_lock(sqlite_db, "release")
    assert held.acquire("other-host:42:abc")
    try:
        result = run_release(sqlite_db, at=MATURED)
    finally:
        held.release()
    assert result == {"skipped": True, "holder": "other-host:42:abc",
                      "at": MATURED.isoformat()}
    assert {status for _seq, _released, status in paid_entries(sqlite_db)} == {"waiting"}
    done = run_release(sqlite_db, at=MATURED)
    assert (done["skipped"], done["paid"]) == (False, 3)


def test_postgres_advisory_lock_names_its_holder(pg_db: Database) -> None:
    first, second = job_lock(pg_db, "release"), job_lock(pg_db, "release")
    assert first.kinds == ["postgresql"]
    me = make_holder()
    assert first.acquire(me)
    assert not second.acquire(make_holder())
    assert second.blocked_by == me
    first.release()
    assert second.acquire(make_holder())
    second.release()


def test_postgres_locks_of_two_schemas_are_independent(pg_db: Database,
                                                       make_db: MakeDb) -> None:
    a, b = job_lock(pg_db, "release"), job_lock(make_db("postgresql"), "release")
    assert a.acquire(make_holder()) and b.acquire(make_holder())
    a.release()
    b.release()


def test_postgres_lock_goes_with_a_killed_process(pg_db: Database, pg_url: str) -> None:
    code = ("import sys, time\n"
            "from storage.db import Database\n"
            "from storage.locks import job_lock\n"
            "lock = job_lock(Database(sys.argv[1]), 'release')\n"
            "assert lock.acquire('child:1:x')\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, pg_url], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        lock = job_lock(pg_db, "release")
        assert not lock.acquire(make_holder()) and lock.blocked_by == "child:1:x"
        child.kill()
        child.wait()
        deadline = time.monotonic() + 10
        while not lock.acquire(make_holder()):
            assert time.monotonic() < deadline, "the server kept a dead session's lock"
            time.sleep(0.05)
        lock.release()
    finally:
        child.kill()
        child.wait()


def test_redis_lock_is_taken_in_front_of_the_database_lock(sqlite_db: Database,
                                                           redis_url: str) -> None:
    first, second = (job_lock(sqlite_db, "release", redis_url=redis_url) for _ in range(2))
    assert first.kinds == ["redis", "lease"]
    admits_one_holder_at_a_time(first, second)


def test_redis_lock_of_a_dead_process_is_taken_over(sqlite_db: Database,
                                                    redis_url: str) -> None:
    gone = job_lock(sqlite_db, "release", redis_url=redis_url)
    assert gone.locks[0].acquire(dead_holder())  # left behind, as by a killed process
    lock = job_lock(sqlite_db, "release", redis_url=redis_url)
    assert lock.acquire(make_holder())
    lock.release()


def test_unreachable_redis_falls_back_to_the_database_lock(
        sqlite_db: Database, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="storage.locks"):
        lock = job_lock(sqlite_db, "release", redis_url="redis://127.0.0.1:1/0")
    assert lock.kinds == ["lease"]
    assert "using the database lock alone" in caplog.text
    make_shop(sqlite_db, entries=2)
    result = run_release(sqlite_db, at=MATURED, redis_url="redis://127.0.0.1:1/0")
    assert (result["skipped"], result["paid"], result["locks"]) == (False, 2, ["lease"])
