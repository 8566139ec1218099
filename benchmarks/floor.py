"""The most a purchase row could reach: the purchases' own writes, with no engine at all.

While purchases run, `Writes` keeps each committed transaction's INSERT, UPDATE and DELETE
statements as they went to the driver (SQLAlchemy's `before_cursor_execute`, which the
engine's driver writes fire too). Right after each slice of purchases, `Ceiling` replays
exactly those transactions on copies of the shop as it was before the first of them: bare
statements, one transaction and one durable commit each (one pipeline on PostgreSQL), no
reads, no checks, no hashing — what an engine costing no CPU would still have to write.

Its rate over the bare one-row commits of the same run is the **ceiling** of the row's ratio.
Two copies are replayed:

- `schema`: the shop's schema as migrated, every index the rules and the seeks use;
- `keys only`: the same with every secondary index dropped, only primary keys and unique
  constraints (the idempotency keys) kept — the same tables with no index beyond what
  refusing a replayed payment needs, though they would lose the queue's and the forced
  exit's index seeks.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import event

from storage.db import Database

from .bare import pg_connection, sqlite_connection
from .common import Slice, Stats

Statement = tuple[str, Any, bool]  # sql, parameters as the driver got them, executemany
WRITES = ("INSERT", "UPDATE", "DELETE")


class Writes:
    """The write statements of every transaction committed on `db` since the last `take`."""

    def __init__(self, db: Database) -> None:
        self.engine = db.engine
        self._open: list[Statement] = []
        self._done: list[list[Statement]] = []
        self._hooks: list[tuple[str, Callable[..., None]]] = [
            ("before_cursor_execute", self._seen), ("commit", self._commit),
            ("rollback", self._rollback)]
        for name, fn in self._hooks:
            event.listen(self.engine, name, fn)

    def _seen(self, _conn: Any, _cursor: Any, sql: str, params: Any, _context: Any,
              many: bool) -> None:
        if sql.lstrip()[:6].upper() in WRITES:
            self._open.append((sql, params, many))

    def _commit(self, _conn: Any) -> None:
        if self._open:
            self._done.append(self._open)
            self._open = []

    def _rollback(self, _conn: Any) -> None:
        self._open = []

    def take(self) -> list[list[Statement]]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        for name, fn in self._hooks:
            event.remove(self.engine, name, fn)


class SQLiteFloor:
    """Replays transactions on a SQLite file with the shop's settings."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite_connection(path)

    def replay(self, txns: Sequence[list[Statement]]) -> float:
        c = self.conn
        start = time.perf_counter()
        for txn in txns:
            c.execute("BEGIN IMMEDIATE")
            for sql, params, many in txn:
                if many:
                    c.executemany(sql, params)
                else:
                    c.execute(sql, params)
            c.execute("COMMIT")
        return time.perf_counter() - start

    def close(self) -> None:
        self.conn.close()


def sqlite_copy(source: Path, target: Path, *, keys_only: bool = False) -> Path:
    """`target` made a copy of the SQLite file `source` (its WAL included); with `keys_only`,
    every index that is not a primary key or a unique constraint dropped."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
        if keys_only:
            names = dst.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                "AND sql IS NOT NULL").fetchall()
            for (name,) in names:
                dst.execute(f'DROP INDEX "{name}"')
            dst.commit()
    finally:
        src.close()
        dst.close()
    return target


class PGFloor:
    """Replays transactions on a PostgreSQL schema, each in one pipeline and one commit."""

    def __init__(self, url: str, *, keys_only: bool = False) -> None:
        self.conn = pg_connection(url)
        if keys_only:
            names = self.conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint "
                "WHERE connamespace = current_schema()::regnamespace)").fetchall()
            for (name,) in names:
                self.conn.execute(f'DROP INDEX "{name}"')
            self.conn.commit()

    def replay(self, txns: Sequence[list[Statement]]) -> float:
        conn = self.conn
        start = time.perf_counter()
        for txn in txns:
            with conn.pipeline():
                cur = conn.cursor()
                for sql, params, many in txn:
                    if many:
                        cur.executemany(sql, params)
                    else:
                        cur.execute(sql, params)
            conn.commit()
        return time.perf_counter() - start

    def close(self) -> None:
        self.conn.close()


Floor = SQLiteFloor | PGFloor


class Ceiling:
    """Follows a measured slice of purchases with the replay of what it committed, on each
    floor; keeps each slice's purchases and replay seconds to give per-run figures.

    `floors` maps a name to a floor and how its commits are grouped: None replays the
    transactions as they were committed; `k` merges consecutive ones so that each commit holds
    about `k` purchases (the best any group commit of `k` clients could do)."""

    def __init__(self, writes: Writes, floors: dict[str, tuple[Floor, int | None]]) -> None:
        self.writes = writes
        self.floors = floors
        self._slices: list[tuple[int, dict[str, float]]] = []
        self.commits = self.statements = 0

    def follow(self, measure: Slice) -> Slice:
        """`measure`, then the replay of the transactions it committed (not timed in it)."""
        def run(seconds: float) -> tuple[int, float]:
            n, elapsed = measure(seconds)
            txns = self.writes.take()
            self.commits += len(txns)
            self.statements += sum(len(t) for t in txns)
            self._slices.append((n, {name: floor.replay(_grouped(txns, n, per_commit))
                                     for name, (floor, per_commit) in self.floors.items()}))
            return n, elapsed
        return run

    def ratios(self, baseline: Stats) -> dict[str, Stats]:
        """Per floor: its purchases/s over the baseline's rate, run by run (the slices split
        evenly into the baseline's runs)."""
        runs = len(baseline.runs)
        per = len(self._slices) // runs
        out: dict[str, Stats] = {}
        for name in self.floors:
            rates = []
            for i in range(runs):
                chunk = self._slices[i * per:(i + 1) * per]
                rates.append(sum(n for n, _ in chunk) / sum(t[name] for _, t in chunk))
            out[name] = Stats([r / b for r, b in zip(rates, baseline.runs, strict=True)])
        return out

    def facts(self) -> dict[str, Any]:
        return {"commits_replayed": self.commits,
                "statements_per_commit": round(self.statements / max(self.commits, 1), 1)}

    def close(self) -> None:
        self.writes.close()
        for floor, _ in self.floors.values():
            floor.close()


def _grouped(txns: list[list[Statement]], purchases: int,
             per_commit: int | None) -> list[list[Statement]]:
    """`txns` as committed, or merged so that a commit holds about `per_commit` purchases."""
    if per_commit is None or not txns:
        return txns
    size = max(1, round(per_commit * len(txns) / max(purchases, 1)))
    return [[s for txn in txns[i:i + size] for s in txn] for i in range(0, len(txns), size)]
