"""The bare database: what a durable commit costs, measured the way the shop commits.

SQLite: the same driver (sqlite3), a file in the same directory, the settings storage/db.py
gives the shop's file (WAL, synchronous=FULL, BEGIN IMMEDIATE). PostgreSQL: psycopg on the
same server and database, its defaults (synchronous_commit on). One small row per commit.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .common import count

PG_URL = os.environ.get("BENCH_PG_URL") or os.environ.get(
    "TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def sqlite_connection(path: Path) -> sqlite3.Connection:
    """A sqlite3 connection with the settings storage/db.py gives the shop's file; the caller
    says `BEGIN IMMEDIATE` and `COMMIT` itself."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "cache_size=-16384",
                   "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def pg_connection(url: str) -> Any:
    """A psycopg connection to a SQLAlchemy-style PostgreSQL URL."""
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))


class BareSQLite:
    """Durable one-row commits on a file with the settings storage/db.py gives the shop's
    file: WAL, synchronous=FULL, BEGIN IMMEDIATE. Through the same driver (sqlite3)."""

    def __init__(self, path: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        self.conn = sqlite_connection(path)
        self.conn.execute("CREATE TABLE bare (id INTEGER PRIMARY KEY, at TEXT, payload TEXT)")
        self.payload = "x" * 120

    def commit_one(self) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO bare (at, payload) VALUES (?, ?)", (time.time(), self.payload))
        c.execute("COMMIT")

    def commits(self, seconds: float) -> tuple[int, float]:
        return count(self.commit_one, seconds=seconds, at_least=5)

    def close(self) -> None:
        self.conn.close()


class BarePG:
    """Durable one-row commits on PostgreSQL with its defaults (synchronous_commit on)."""

    def __init__(self, url: str) -> None:
        self.conn = pg_connection(url)
        self.settings = {k: self.conn.execute(f"SHOW {k}").fetchone()[0]  # type: ignore[index]
                         for k in ("synchronous_commit", "fsync", "wal_sync_method",
                                   "commit_delay", "server_version")}
        self.conn.execute("CREATE TABLE bare (id bigserial PRIMARY KEY, at double precision, "
                          "payload text)")
        self.conn.commit()
        self.payload = "x" * 120

    def commit_one(self) -> None:
        self.conn.execute("INSERT INTO bare (at, payload) VALUES (%s, %s)",
                          (time.time(), self.payload))
        self.conn.commit()

    def commits(self, seconds: float) -> tuple[int, float]:
        return count(self.commit_one, seconds=seconds, at_least=5)

    def close(self) -> None:
        self.conn.close()


# -- PostgreSQL schemas ---------------------------------------------------------------------

def pg_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL"
        return f"{type(exc).__name__}: {exc}".strip()[:200]
    return None


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh schema in the bench database; yields a URL whose search_path is that schema."""
    import psycopg

    schema = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


