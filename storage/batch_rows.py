"""A group commit's reads and writes in wide statements: every purchase's reads in one round
trip (with the exit keys its forced-exit seeks need, `queries.ExitsAhead`, so that nothing
is written before the batch's end), each table's new rows in one INSERT.

`Rows.flush` (storage/unit.py) writes a table's new rows with one `executemany`, which on
PostgreSQL is still one Bind and Execute per row through psycopg's Python pipeline code. A
batch of purchases (engine/batch.py) inserts a hundred rows and more at its commit, so it
writes them here instead: one `INSERT … SELECT * FROM unnest(?::type[], …)` per table, an
array a column. The statement's text is the same whatever the number of rows, so psycopg
parses it once and the server prepares it once. Values are bound by the same column
processors (`Driver.bind`), the tables go in `Rows.flush`'s order, all in one pipeline: the
rows stored are the same, byte for byte. Updates (a few rows a batch, one per key) still go
through `Driver.write`. On SQLite, where `executemany` runs in C, `Rows.flush` as it is.

A group commit ends its unit of work with `commit_session_wide`: its rows are then written
this way when the transaction commits, and the COMMIT goes in the same pipeline
(`WideCommit`, as `Rows.flush_and_commit` does for one purchase).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from .driver import Driver
from .queries import DUE_PAGE, EXITS_AHEAD, EXITS_AHEAD_SQL, ExitsAhead
from .rows import EntryRow, HeadRow, OrderRow, PoolRow, Query, UserRow, key_match
from .unit import Rows


def commit_session_wide(session: Session) -> None:
    """Let `session`'s transaction end as `flush_wide(..., commit=True)`: when
    `Database.transaction` commits it (`unit.flush_to_commit`, after the `commit.before`
    fault point), its rows are written a statement a table and the COMMIT sent in the same
    round trip. The last thing a unit of work does (engine/batch.py)."""
    rows = session.info.get("rows")
    if isinstance(rows, Rows):
        session.info["rows"] = WideCommit(rows)


class WideCommit:
    """A transaction's rows (`Rows`) as `storage.unit` finishes them (`flush`,
    `flush_and_commit`), written by `flush_wide` instead of `Rows.flush`."""

    def __init__(self, rows: Rows) -> None:
        self.rows = rows

    def flush(self) -> None:
        flush_wide(self.rows)

    def flush_and_commit(self) -> bool:
        """As `Rows.flush_and_commit`: True if the writes and the COMMIT went in one
        pipeline; False (nothing done) when the ORM has changes of its own left to write or
        there is nothing to write — the transaction then commits as usual."""
        session = self.rows.session
        if session.new or session.dirty or session.deleted:
            return False
        return flush_wide(self.rows, commit=True)


def flush_wide(rows: Rows, *, commit: bool = False) -> bool:
    """Write everything `rows` holds unwritten, each table's inserts in one statement
    (PostgreSQL), in one round trip; exactly what `rows.flush()` would store. With `commit`
    (PostgreSQL only), the COMMIT ends the same pipeline, as in `Rows.flush_and_commit`: a
    write that fails aborts the pipeline, so the COMMIT never runs, the error is raised and
    the transaction rolls back. True if it committed."""
    db = rows.db
    if not db.pg:
        if not commit:  # else the commit's own `flush` writes them
            rows.flush()
        return False
    if rows.flushing:
        return False
    rows._flushing = True
    rows._ready.clear()  # prefetched reads may be out of date once anything is written
    try:
        writes = rows._changes()
        if not writes:
            return False

        def write_all() -> None:
            for sql, table, columns, values in writes:
                if sql.startswith("INSERT INTO ") and len(values) > 1:
                    insert_wide(db, sql, table, columns, values)
                else:
                    db.write(sql, table, columns, values)

        db.batch([], write_all, commit=commit)
        return commit
    finally:
        rows._flushing = False


@lru_cache(maxsize=64)
def unnest_sql(insert: str, table: Table, columns: tuple[str, ...]) -> str:
    """`INSERT INTO t (…) VALUES (?, …)` as `INSERT INTO t (…) SELECT * FROM unnest(?::type[],
    …)`. Each array is cast to its column's type without length or precision (`varchar[]`,
    not `varchar(64)[]`): a cast to `varchar(64)` would cut a longer value silently, where the
    INSERT's own assignment to the column refuses it, as the one-row statement does."""
    head, sep, group = insert.rpartition(" VALUES ")
    assert sep and group.startswith("(") and group.endswith(")"), insert
    dialect = postgresql.dialect()
    types = [re.sub(r"\(.*?\)", "", table.c[c].type.compile(dialect=dialect)).strip()
             for c in columns]
    return f"{head} SELECT * FROM unnest({', '.join(f'?::{t}[]' for t in types)})"


def insert_wide(db: Driver, insert: str, table: Table, columns: Sequence[str],
                values: Sequence[Sequence[Any]]) -> None:
    """`insert` (one row's `INSERT … VALUES (?, …)`) for every row of `values` in one
    statement, the values bound as `Driver.write` binds them."""
    bound = db.bind(table, columns, values)
    params = [list(column) for column in zip(*bound, strict=True)]
    sql = unnest_sql(insert, table, tuple(columns)).replace("?", "%b")
    cur = db.raw.cursor()
    try:
        db._observed(cur, sql, params, False)
        cur.execute(sql, params)
    except db._dbapi_error as exc:
        raise db._error(exc, sql, [column[:1] for column in params]) from exc
    finally:
        cur.close()


def _one_of(rows: Rows, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
    """`column` is one of `values`: on PostgreSQL one array parameter (`= ANY(?)`), so the
    statement's text is the same whatever the batch's size (parsed and prepared once)."""
    if rows.db.pg:
        return f"{column} = ANY(?)", (list(values),)
    return f"{column} IN ({', '.join('?' * len(values))})", tuple(values)


def purchase_reads_many(rows: Rows, asks: Sequence[tuple[str, str | None, datetime | None]],
                        with_pools: bool, with_head: bool = False
                        ) -> list[dict[Hashable, list[Any]]]:
    """`queries.purchase_reads` for every purchase of a batch, (handle, key, at) each, in
    **one** round trip of a few statements whatever the batch's size: the buyers, their
    referrers, the referrers' waiting entries and the stored keys each in one statement, and
    the orders due by the latest time (the page of each earlier time is its part of it,
    unless that page was full). What each purchase will load by name (the orders due by its
    time, its referrer's waiting entries) is offered to it with `Rows.keep`, as
    `purchase_reads` does, until anything is written; the smallest stored exit keys are held
    for the whole transaction (`ExitsAhead`). Nothing is written until the batch's flush,
    and a row read here and changed in memory by an earlier purchase comes back as it is in
    memory (the unit of work's identity map): each purchase finds what its own read would."""
    handles = list(dict.fromkeys(handle for handle, _key, _at in asks))
    keys = list(dict.fromkeys(key for _handle, key, _at in asks if key is not None))
    times = [at for _handle, _key, at in asks if at is not None]
    reads: dict[Hashable, Query] = {}
    if with_head:  # first: the head lock before any other row
        reads["head"] = Query(HeadRow, key_match(HeadRow.KEYS), (1,))
    if with_pools:
        reads["pools"] = Query(PoolRow, "", suffix=" ORDER BY name")
    # Enough of the smallest exit keys for every seek of the batch (each skips the buyers
    # and referrers it holds): `ExitsAhead` answers them all, with no flush between.
    exits = EXITS_AHEAD + 2 * len(asks)
    reads["exits"] = Query(None, EXITS_AHEAD_SQL, (exits,))
    named, params = _one_of(rows, "handle", handles)
    referrers = f"(SELECT referrer_id FROM users WHERE {named})"
    reads["buyers"] = Query(UserRow, named, params)
    reads["referrers"] = Query(UserRow, f"id IN {referrers}", params)
    reads["waiting"] = Query(EntryRow, f"user_id IN {referrers} AND status = 'waiting'", params,
                             suffix=" ORDER BY user_id, seq")
    if keys:
        named, params = _one_of(rows, '"key"', keys)
        reads["keys"] = Query(None, f'SELECT "key", body, result FROM journal WHERE {named}',
                              params)
    if times:
        reads["due"] = Query(OrderRow, "status = 'pending' AND settles_at <= ? AND no > ?",
                             (rows.param(OrderRow, "settles_at", max(times)), 0),
                             suffix=f" ORDER BY no LIMIT {DUE_PAGE}")
    got = rows.prefetch(reads)
    ExitsAhead(rows, got["exits"], exits)
    for referrer in got["referrers"]:
        rows.keep(("waiting", referrer.id), [e for e in got["waiting"]
                                             if e.user_id == referrer.id])
    if times:
        latest, due = max(times), got["due"]
        for at in set(times):
            if at == latest or len(due) < DUE_PAGE:  # else the part of a full page may not be
                rows.keep(("due", at), [o for o in due if o.settles_at <= at])
    buyers = {row.handle: row for row in got["buyers"]}
    stored = {key: (body, result) for key, body, result in got.get("keys", ())}
    out: list[dict[Hashable, list[Any]]] = []
    for handle, key, _at in asks:
        one: dict[Hashable, list[Any]] = {"buyer": [buyers[handle]] if handle in buyers else []}
        if with_pools:
            one["pools"] = got["pools"]
        if key is not None:
            one["key"] = [stored[key]] if key in stored else []
        if with_head:
            one["head"] = got["head"]
        out.append(one)
    return out
