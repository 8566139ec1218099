"""Connections and units of work.

SQLite: a file under `var/` by default, WAL, `synchronous=FULL` (a commit is on disk before
anyone is told), and `BEGIN IMMEDIATE` for every writer so two writers never both read and
then both try to upgrade. PostgreSQL: READ COMMITTED plus explicit row locks
(`SELECT … FOR UPDATE`); serialization failures and deadlocks are retried, and so is a unit of
work whose connection was lost. A pooled connection is pinged before use only when it may
have gone stale (`StalePing`), not before every transaction.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, InvalidatePoolError, OperationalError
from sqlalchemy.orm import Session, configure_mappers, sessionmaker
from sqlalchemy.pool import StaticPool

# faults: named crash points, inert unless a test arms them (a leaf module); unit: the fast
# rows' unit of work (storage/unit.py), flushed just before each commit.
from . import faults, unit

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_URL = "sqlite:///var/storefront.db"
_RETRYABLE_PG = {"40001", "40P01", "55P03"}
# A PostgreSQL connection back in the pool for longer than this (seconds) is pinged before its
# next use (`StalePing`): a busy shop reuses its connections within milliseconds and pays no
# ping; one idle longer may have been closed by an idle timeout or a restart nobody saw.
PING_IDLE_AFTER = 1.0


class DatabaseUnavailable(Exception):
    """The database could not finish a unit of work after retries; nothing was written."""


def normalise_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        code = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "diag", None),
                                                           "sqlstate", None)
        if code in _RETRYABLE_PG:
            return True
        if isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig):
            return True
        if exc.connection_invalidated:
            return True
    return False


class Database:
    """One database: an engine, a session factory and the unit-of-work helpers."""

    def __init__(self, url: str | None = None, *, echo: bool = False,
                 busy_timeout: float = 30.0, retry_backoff_max: float = 0.5,
                 ping_idle_after: float = PING_IDLE_AFTER) -> None:
        # `run`'s pause between retries doubles from 5 ms up to this many seconds: with the
        # default, a lock held throughout costs 12 attempts over ~4 s before "busy".
        self.retry_backoff_max = retry_backoff_max
        self.url = normalise_url(url or DEFAULT_URL)
        u = make_url(self.url)
        self.dialect = u.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            self.memory = u.database in (None, "", ":memory:")
            if self.memory:
                kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
            else:
                Path(u.database or "").parent.mkdir(parents=True, exist_ok=True)
                kwargs.update(connect_args={"timeout": busy_timeout,
                                            "check_same_thread": False})
        else:
            self.memory = False
            # No `pool_pre_ping`: it cost a round trip before every transaction (StalePing).
            kwargs.update(pool_size=10, max_overflow=20)
        self.engine: Engine = create_engine(self.url, **kwargs)
        self.ping: StalePing | None = None
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine, wal=not self.memory,
                              busy_ms=max(0, int(busy_timeout * 1000)))
        else:
            self.ping = StalePing(self.engine, idle_after=ping_idle_after)
        # The ORM's one-time setup of every mapper, here rather than in whatever ORM statement
        # comes first (a release's lock: 60-100 ms of a fresh process's first release).
        configure_mappers()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._idle = threading.local()  # `writer`, `reader`: this thread's idle sessions
        self._reader = self.engine.execution_options(storefront_read=True)
        self._read_sessions = sessionmaker(self._reader, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A writing unit of work: commits when the block ends, rolls back on any exception.
        What the fast rows changed (storage/unit.py) is written just before the commit (on
        PostgreSQL in the commit's own round trip, `unit.flush_to_commit`)."""
        session = self._take_idle("writer", self._sessions)
        try:
            with session.begin():
                yield session
                unit.flush_to_commit(session)
        except BaseException:
            session.close()  # not kept: whatever state a failure left, it goes with it
            raise
        finally:
            unit.end(session)
        self._keep_idle("writer", session)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only snapshot (a deferred BEGIN on SQLite, so it never blocks writers)."""
        session = self._take_idle("reader", self._read_sessions)
        try:
            with session.begin():
                yield session
        except BaseException:
            session.close()
            raise
        self._keep_idle("reader", session)

    def _take_idle(self, slot: str, sessions: sessionmaker[Session]) -> Session:
        """This thread's idle session of the kind (`slot`), taken; a new one if there is none
        (a unit inside a unit gets a new one). Building and closing a Session cost more than
        the BEGIN and COMMIT of a small unit of work; one kept per thread is reset instead
        (`_keep_idle`)."""
        session: Session | None = getattr(self._idle, slot, None)
        if session is None:
            return sessions()
        setattr(self._idle, slot, None)
        return session

    def _keep_idle(self, slot: str, session: Session) -> None:
        """Back to this thread after a unit that committed, as a new Session would be: no
        transaction (its connection is back in the pool), nothing in its identity map (the
        unit's ORM objects detached, as `Session.close` leaves them), nothing in `info`."""
        session.info.clear()
        if len(session.identity_map):
            session.expunge_all()
        setattr(self._idle, slot, session)

    def run(self, work: Callable[[Session], T], *, attempts: int = 12,
            label: str | None = None) -> T:
        """Run `work` in one transaction, retrying lock conflicts and lost connections.

        `work` must be a pure function of the database: it is called again on retry.
        `label` (default: `work`'s name) names its crash points for the fault tests,
        `commit.before:<label>` and `commit.after:<label>` (storage/faults.py)."""
        name = label or _label_of(work)
        delay = min(0.005, self.retry_backoff_max)
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction() as session:
                    result = work(session)
                    faults.point(f"commit.before:{name}")
                faults.point(f"commit.after:{name}")
                return result
            except (OperationalError, DBAPIError) as exc:
                self._note_lost(exc)
                if not _is_retryable(exc) or attempt == attempts:
                    if _is_retryable(exc) or isinstance(exc, OperationalError):
                        raise DatabaseUnavailable(str(exc.orig)) from exc
                    raise
                log.info("retrying a unit of work after %s (attempt %d)", type(exc.orig).__name__,
                         attempt)
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, self.retry_backoff_max)
        raise AssertionError("unreachable")

    def read(self, work: Callable[[Session], T]) -> T:
        """Run `work` in a read-only snapshot; a database that cannot be reached (a lost
        connection, a server that is down) is `DatabaseUnavailable`, as for writers. A
        snapshot whose connection turns out lost is read once more, on a new connection."""
        for attempt in (1, 2):
            try:
                with self.reading() as session:
                    return work(session)
            except OperationalError as exc:
                self._note_lost(exc)
                if attempt == 2 or not exc.connection_invalidated:
                    raise DatabaseUnavailable(str(exc.orig)) from exc
        raise AssertionError("unreachable")

    def _note_lost(self, exc: DBAPIError) -> None:
        """A lost connection may mean a restarted server: every pooled connection last used
        before now is pinged before its next use."""
        if exc.connection_invalidated and self.ping is not None:
            self.ping.lost_at = time.monotonic()

    def dispose(self) -> None:
        self.engine.dispose()


class StalePing:
    """Pings a pooled PostgreSQL connection before use only when it may have gone stale.

    SQLAlchemy's `pool_pre_ping` asks the server before every checkout: one round trip of a
    purchase's four (docs/perf.md, issue 19). Here a connection is pinged only if it sat in
    the pool longer than `idle_after` seconds (an idle timeout, a restart while nobody was
    buying), or if a lost connection was seen since it was last used (`lost_at`, set by
    `Database.run`/`read`). A failed ping raises `InvalidatePoolError`, as `pool_pre_ping`
    does: the pool replaces this connection and every other made before now (SQLAlchemy's
    "pessimistic disconnect handling" with a checkout event). A connection that died while
    busy is found by the first statement instead: that unit of work fails before anything
    of it can commit, and `Database.run` retries it on a new connection (`read` once)."""

    _IDLE_SINCE = "storefront_idle_since"

    def __init__(self, engine: Engine, *, idle_after: float) -> None:
        self.dialect = engine.dialect
        self.idle_after = idle_after
        self.lost_at = float("-inf")  # time.monotonic() of the last lost connection seen
        event.listen(engine, "checkin", self._checked_in)
        event.listen(engine, "checkout", self._checked_out)

    def _checked_in(self, _dbapi_connection: Any, record: Any) -> None:
        record.info[self._IDLE_SINCE] = time.monotonic()

    def _checked_out(self, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(self._IDLE_SINCE)
        if since is None:  # made for this checkout (the pool clears `info` on reconnecting)
            return
        if time.monotonic() - since < self.idle_after and since > self.lost_at:
            return
        try:
            self.dialect.do_ping(dbapi_connection)
        except self.dialect.loaded_dbapi.Error as exc:
            if not self.dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            raise InvalidatePoolError(f"ping failed: {exc}") from exc


def _label_of(work: Callable[..., Any]) -> str:
    """`open_checkout.<locals>.work` → `open_checkout.work`: a stable name for crash points."""
    fn = getattr(work, "func", work)  # functools.partial
    return str(getattr(fn, "__qualname__", type(fn).__name__)).replace("<locals>.", "")


def _configure_sqlite(engine: Engine, *, wal: bool, busy_ms: int = 30000) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        if wal:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        # 16 MiB of page cache per connection (SQLite's default is 2 MiB): the inner pages
        # of every index a purchase walks stay cached however large the shop grows.
        cur.execute("PRAGMA cache_size=-16384")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Straight to the driver: SQLAlchemy's statement machinery (an execution context, its
        # events) cost more than the BEGIN itself, once per transaction (docs/perf.md).
        begin = "BEGIN" if conn.get_execution_options().get("storefront_read") else \
            "BEGIN IMMEDIATE"
        try:
            conn.connection.dbapi_connection.execute(begin)
        except sqlite3.Error as exc:  # as SQLAlchemy would raise it (a busy file: retried)
            raise DBAPIError.instance(begin, (), exc, sqlite3.Error,
                                      dialect=conn.dialect) from exc
