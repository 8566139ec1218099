"""Cross-process locks for jobs that must run one at a time (the release, SPEC §3).

APScheduler 3 runs a job in every process that starts a scheduler, and operators can start a
release from the CLI or chat as well; these locks make all but one of them skip.

- PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) on a dedicated connection held
  for the whole run. The server drops it the moment that connection dies, so a killed process
  never leaves it behind. Its holder is found through `pg_stat_activity.application_name`.
- SQLite: a row in `leases` with an expiry, renewed while the run lasts. A holder is
  `host:pid:nonce`; a lease whose holder process is gone on this host is taken over at once
  (SQLite lives on one host), otherwise only after it expires.
- Redis (when `REDIS_URL` is set): redis-py's `Lock` with a timeout and the holder as token,
  taken *in front of* the database lock, not instead of it: a process that cannot reach Redis
  still takes the database lock, so an outage never lets two runs overlap.

Correctness never rests on the lock alone: every release payment is keyed by its entry and
made under row locks, so two overlapping runs would still pay each entry once. The lock keeps
the work, the progress and the notifications to one process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, delete, select, text, update
from sqlalchemy.engine import Connection, make_url

from .db import Database
from .models import Lease

log = logging.getLogger(__name__)


def make_holder() -> str:
    """`host:pid:nonce`: who holds a lock, and enough to tell whether it is still alive."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def holder_is_gone(holder: str | None) -> bool:
    """True only when `holder` names a process on this host that no longer exists."""
    if not holder:
        return False
    host, _, rest = holder.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lock(Protocol):
    kind: str
    renews: bool  # needs `renew()` calls while held

    def acquire(self, holder: str) -> bool: ...
    def renew(self) -> bool: ...
    def release(self) -> None: ...
    def holder(self) -> str | None: ...


class NoLock:
    """An in-memory SQLite database belongs to one process: nothing to exclude."""

    kind = "none"
    renews = False

    def acquire(self, holder: str) -> bool:
        return True

    def renew(self) -> bool:
        return True

    def release(self) -> None:
        return None

    def holder(self) -> str | None:
        return None


class PgAdvisoryLock:
    """`pg_try_advisory_lock` on a connection of its own, kept open while held."""

    kind = "postgresql"
    renews = False
    _APP = "storefront:"

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self._conn: Connection | None = None
        self._key: int | None = None

    def _lock_key(self, conn: Connection) -> int:
        # Advisory locks are per database; the schema is part of the name so that shops (and
        # test schemas) sharing one database never block each other.
        schema = conn.execute(text("select current_schema()")).scalar_one()
        digest = hashlib.sha256(f"{schema}:{self.name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def acquire(self, holder: str) -> bool:
        conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            key = self._lock_key(conn)
            conn.execute(text("select set_config('application_name', :n, false)"),
                         {"n": (self._APP + holder)[:63]})
            got = bool(conn.execute(text("select pg_try_advisory_lock(:k)"), {"k": key})
                       .scalar_one())
        except Exception:
            conn.invalidate()
            conn.close()
            raise
        if not got:
            self._key = key
            conn.invalidate()  # its application_name must not linger in the pool
            conn.close()
            return False
        self._conn, self._key = conn, key
        return True

    def renew(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("select 1"))
        except Exception:  # noqa: BLE001 - a dead connection means the lock is gone
            return False
        return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("select pg_advisory_unlock(:k)"), {"k": self._key})
        except Exception as exc:  # noqa: BLE001 - closing the connection drops it anyway
            log.warning("advisory unlock failed (%s); dropping the connection", exc)
        finally:
            conn.invalidate()
            conn.close()

    def holder(self) -> str | None:
        with self.db.engine.connect() as conn:
            key = self._key if self._key is not None else self._lock_key(conn)
            unsigned = key & 0xFFFFFFFFFFFFFFFF
            row = conn.execute(text(
                "select a.application_name, a.pid from pg_locks l "
                "join pg_stat_activity a on a.pid = l.pid "
                "where l.locktype = 'advisory' and l.granted and l.objsubid = 1 "
                "and l.database = (select oid from pg_database where datname = current_database()) "
                "and l.classid::bigint = :hi and l.objid::bigint = :lo"),
                {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}).first()
            conn.rollback()
        if row is None:
            return None
        name = row[0] or ""
        return name[len(self._APP):] if name.startswith(self._APP) else f"pid {row[1]}"


class LeaseLock:
    """A `leases` row with an expiry (SQLite); renewed while held."""

    kind = "lease"
    renews = True

    def __init__(self, db: Database, name: str, *, ttl: timedelta = timedelta(minutes=5),
                 clock: Callable[[], datetime] | None = None) -> None:
        self.db = db
        self.name = name
        self.ttl = ttl
        self.clock = clock or (lambda: datetime.now(UTC))
        self._holder: str | None = None

    def acquire(self, holder: str) -> bool:
        def work(session: Any) -> bool:
            now = self.clock()
            row = session.get(Lease, self.name)
            if row is None:
                session.add(Lease(name=self.name, holder=holder, expires_at=now + self.ttl))
                return True
            if row.holder != holder and row.expires_at > now:
                if not holder_is_gone(row.holder):
                    return False
                log.warning("lock %s: holder %s is gone; taking it over", self.name, row.holder)
            row.holder, row.expires_at = holder, now + self.ttl
            return True

        got = self.db.run(work)
        self._holder = holder if got else None
        return got

    def renew(self) -> bool:
        if self._holder is None:
            return False
        expires = self.clock() + self.ttl
        statement = (update(Lease).where(Lease.name == self.name, Lease.holder == self._holder)
                     .values(expires_at=expires))
        done = self.db.run(lambda s: cast(CursorResult[Any], s.execute(statement)).rowcount)
        return bool(done)

    def release(self) -> None:
        holder, self._holder = self._holder, None
        if holder is not None:
            self.db.run(lambda s: s.execute(
                delete(Lease).where(Lease.name == self.name, Lease.holder == holder)))

    def holder(self) -> str | None:
        row = self.db.read(lambda s: s.execute(
            select(Lease.holder, Lease.expires_at).where(Lease.name == self.name)).first())
        if row is None or row[1] <= self.clock():
            return None
        return str(row[0])


_COMPARE_AND_DELETE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisLock:
    """redis-py's `Lock` (token = holder, with a timeout), renewed while held."""

    kind = "redis"
    renews = True

    def __init__(self, client: Any, key: str, *, ttl: timedelta = timedelta(minutes=2)) -> None:
        self.client = client
        self.key = key
        self.ttl = ttl
        self._lock: Any = None

    def acquire(self, holder: str) -> bool:
        lock = self.client.lock(self.key, timeout=self.ttl.total_seconds(), blocking=False,
                                thread_local=False)
        got = lock.acquire(blocking=False, token=holder)
        if not got:
            current = self.holder()
            if holder_is_gone(current):
                log.warning("lock %s: holder %s is gone; taking it over", self.key, current)
                self.client.eval(_COMPARE_AND_DELETE, 1, self.key, current)
                got = lock.acquire(blocking=False, token=holder)
        self._lock = lock if got else None
        return bool(got)

    def renew(self) -> bool:
        if self._lock is None:
            return False
        try:
            self._lock.reacquire()
        except Exception as exc:  # noqa: BLE001 - LockNotOwnedError or Redis unreachable
            log.warning("lock %s: renewal failed: %s", self.key, exc)
            return False
        return True

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is None:
            return
        try:
            lock.release()
        except Exception as exc:  # noqa: BLE001 - expired or Redis gone: nothing left to free
            log.warning("lock %s: release failed: %s", self.key, exc)

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)


class LockSet:
    """Several locks taken in order and held together; renewed by a keeper thread.

    `lost` becomes set when a renewal fails: the holder should stop at its next safe point."""

    def __init__(self, locks: list[Lock]) -> None:
        self.locks = locks
        self.lost = threading.Event()
        self.blocked_by: str | None = None
        self._held: list[Lock] = []
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    @property
    def kinds(self) -> list[str]:
        return [lock.kind for lock in self.locks]

    def acquire(self, holder: str) -> bool:
        for lock in self.locks:
            if not lock.acquire(holder):
                self.blocked_by = lock.holder() or "unknown"
                self.release()
                return False
            self._held.append(lock)
        renewing = [lock for lock in self._held if lock.renews]
        if renewing:
            period = min(_ttl_seconds(lock) for lock in renewing) / 3
            self._stop.clear()
            self._keeper = threading.Thread(target=self._keep, args=(renewing, period),
                                            name="lock-keeper", daemon=True)
            self._keeper.start()
        return True

    def _keep(self, locks: list[Lock], period: float) -> None:
        while not self._stop.wait(period):
            for lock in locks:
                if not lock.renew():
                    log.error("lost the %s lock; the run will stop at its next page", lock.kind)
                    self.lost.set()
                    return

    def release(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(timeout=30)
            self._keeper = None
        while self._held:
            self._held.pop().release()

    @contextlib.contextmanager
    def held(self, holder: str) -> Iterator[bool]:
        got = self.acquire(holder)
        try:
            yield got
        finally:
            if got:
                self.release()


def _ttl_seconds(lock: Lock) -> float:
    ttl = getattr(lock, "ttl", None)
    return ttl.total_seconds() if isinstance(ttl, timedelta) else 60.0


def _redis_key(db: Database, name: str) -> str:
    """One key per database, so shops sharing a Redis never block each other."""
    where = make_url(db.url).render_as_string(hide_password=True)
    return f"storefront:lock:{name}:{hashlib.sha256(where.encode()).hexdigest()[:16]}"


def job_lock(db: Database, name: str, *, redis_url: str | None = None,
             lease_ttl: timedelta = timedelta(minutes=5)) -> LockSet:
    """The lock(s) for job `name` on this database, chosen by configuration (see above)."""
    locks: list[Lock] = []
    if redis_url:
        try:
            import redis

            client = redis.Redis.from_url(redis_url, socket_connect_timeout=2,
                                          socket_timeout=5)
            client.ping()
            locks.append(RedisLock(client, _redis_key(db, name)))
        except Exception as exc:  # noqa: BLE001 - any failure: fall back to the database
            log.warning("Redis at REDIS_URL is unavailable (%s); using the database lock alone",
                        exc)
    if db.is_postgres:
        locks.append(PgAdvisoryLock(db, name))
    elif db.memory:
        locks.append(NoLock())
    else:
        locks.append(LeaseLock(db, name, ttl=lease_ttl))
    return LockSet(locks)
