"""Statements straight to the session's DBAPI connection, for the engine's hot paths.

An ORM statement costs about 150 µs here and a SQLAlchemy Core one about 12 µs; the driver
itself about 1.5 µs. A purchase issues a dozen statements and a release five rows per entry,
so the money paths speak to the driver — inside the session's own transaction, with values
bound and read by SQLAlchemy's own column processors (so the stored bytes are exactly what
the ORM would store), and driver errors raised as SQLAlchemy's, so `Database.run` retries and
reports them as it does any other (storage/db.py).

SQL is written with `?` placeholders; on PostgreSQL they become `%s`. `lock` is appended to
the reads that must lock their rows (`FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE`
already holds the whole file).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session

Processor = Callable[[Any], Any] | None


@lru_cache(maxsize=64)
def _for_pg(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


# A few rows inserted at once (a purchase's postings, its two journal rows) go to PostgreSQL
# as one statement of several VALUES tuples: psycopg's client side costs about as much per
# statement as per row, so `executemany` of 6 postings cost 6 statements' bookkeeping. More
# rows than this (a release page, a group commit) keep `executemany`, parameters bounded.
MULTI_ROW_MOST = 16


@lru_cache(maxsize=256)
def _multi_row(sql: str, n: int) -> str | None:
    """`INSERT … VALUES (…)` for `n` rows in one statement; None for any other statement."""
    head, sep, values = sql.partition(" VALUES ")
    if not sep or not head.startswith("INSERT ") or not values.startswith("(") \
            or not values.endswith(")") or ")" in values[:-1]:
        return None
    return head + sep + ", ".join([values] * n)


# How a column's values are bound: SQLAlchemy's processor for its type, and the type as its
# repr (`UTCDateTime()`) — columns of one type share `Driver.bind`'s per-transaction cache, so
# a value is processed once whichever of them it goes to (a purchase stamps its time on ~8).
Binder = tuple[str, Callable[[Any], Any]] | None


@lru_cache(maxsize=128)
def _binders(dialect: Dialect, table: Table, columns: tuple[str, ...]) -> tuple[Binder, ...]:
    found = []
    for name in columns:
        column_type = table.c[name].type
        proc = column_type.dialect_impl(dialect).bind_processor(dialect)
        found.append(None if proc is None else (repr(column_type), proc))
    return tuple(found)


@lru_cache(maxsize=128)
def _readers(dialect: Dialect, table: Table, columns: tuple[str, ...]) -> tuple[Processor, ...]:
    return tuple(table.c[name].type.dialect_impl(dialect).result_processor(dialect, None)
                 for name in columns)


# Where a PostgreSQL connection's kept cursors are, in its pool record's `info`.
_KEPT_CURSORS = "storefront.cursors"


class Driver:
    """The DBAPI connection under `session`'s transaction (which this begins, if need be)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.conn = session.connection()
        self.dialect = self.conn.dialect
        self.raw: Any = self.conn.connection.dbapi_connection
        self.pg = self.dialect.name == "postgresql"
        self.lock = " FOR UPDATE" if self.pg else ""
        self._dbapi_error: type[Exception] = self.dialect.loaded_dbapi.Error
        self._bound: dict[str, dict[Any, Any]] = {}  # a column type's values, bound
        # One cursor for every write of the transaction: a write's results are never read
        # back, and psycopg's cursor costs a few microseconds to make (a purchase writes ~10
        # statements). Reads keep a cursor each: a pipeline holds every read's rows at once.
        self._writer: Any = None
        self._kept: list[Any] = []  # PostgreSQL: the writer, then a pipeline's readers
        if self.pg:
            self._kept = self._kept_cursors()
            self._writer = self._kept[0]
        # Whether anyone listens for `before_cursor_execute` (`_observed`), asked once a
        # transaction: asking SQLAlchemy costs a few microseconds a statement. A listener
        # added while a transaction runs hears the statements of the next.
        self._heard = bool(self.conn.dispatch.before_cursor_execute)

    def _kept_cursors(self) -> list[Any]:
        """The write cursor and those a pipeline's reads use (`batch`: a purchase pipelines
        ~8 reads), kept with the DBAPI connection from one transaction to the next."""
        info = self.conn.connection.info
        kept = info.get(_KEPT_CURSORS)
        if kept is None or kept[0] is not self.raw:  # a new connection under the record
            kept = info[_KEPT_CURSORS] = (self.raw, [self.raw.cursor()])
        cursors: list[Any] = kept[1]
        return cursors

    def _sql(self, sql: str) -> str:
        return _for_pg(sql) if self.pg else sql

    def _error(self, exc: Exception, sql: str, params: Any) -> StatementError:
        """A driver error as SQLAlchemy raises it (so `Database.run` retries and reports it
        the same way); a lost connection is invalidated, as SQLAlchemy would."""
        lost = self.dialect.is_disconnect(exc, self.raw, None)  # type: ignore[arg-type]
        if lost:
            self.conn.invalidate(exc)
        return DBAPIError.instance(sql, params, exc, self._dbapi_error,
                                   connection_invalidated=lost, dialect=self.dialect)

    def _observed(self, cursor: Any, sql: str, params: Any, many: bool) -> None:
        """Whoever listens for SQLAlchemy's `before_cursor_execute` (statement counters in
        tests, tracing) hears these statements too."""
        if self._heard:
            conn = self.conn
            conn.dispatch.before_cursor_execute(conn, cursor, sql, params, None, many)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of a read."""
        sql = self._sql(sql)
        cur = self.raw.cursor()
        try:
            self._observed(cur, sql, params, False)
            cur.execute(sql, params)
            return list(cur.fetchall())
        except self._dbapi_error as exc:
            raise self._error(exc, sql, params) from exc
        finally:
            cur.close()

    def _write_cursor(self) -> Any:
        if self._writer is None:
            self._writer = self.raw.cursor()
        return self._writer

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One write; returns the number of rows it changed (in a pipeline: not known yet)."""
        sql = self._sql(sql)
        cur = self._write_cursor()
        try:
            self._observed(cur, sql, params, False)
            cur.execute(sql, params)
            return int(cur.rowcount)
        except self._dbapi_error as exc:
            raise self._error(exc, sql, params) from exc

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for many rows (values already bound)."""
        if not rows:
            return
        if len(rows) == 1:  # `executemany` of one row costs more than `execute` (psycopg: twice)
            self.run(sql, rows[0])
            return
        if self.pg and len(rows) <= MULTI_ROW_MOST:
            merged = _multi_row(sql, len(rows))
            if merged is not None:
                self.run(merged, [v for row in rows for v in row])
                return
        sql = self._sql(sql)
        cur = self._write_cursor()
        try:
            self._observed(cur, sql, rows, True)
            cur.executemany(sql, rows)
        except self._dbapi_error as exc:
            raise self._error(exc, sql, rows[:1]) from exc

    def batch(self, reads: Sequence[tuple[str, Sequence[Any]]],
              writes: Callable[[], None] | None = None, *,
              commit: bool = False) -> list[list[tuple[Any, ...]]]:
        """`writes` (calls to `many`/`run`/`write`), then `reads`, in one round trip: a
        pipeline on PostgreSQL (statements still run in order, each seeing the ones before);
        one after the other on SQLite, where a statement costs no round trip. With `commit`
        (PostgreSQL only), the transaction's COMMIT ends the same pipeline: SQLAlchemy's own
        commit, which follows, then finds the connection idle and sends nothing."""
        if not self.pg:
            assert not commit, "a pipelined commit is PostgreSQL's"
            if writes is not None:
                writes()
            return [self.rows(sql, params) for sql, params in reads]
        kept = self._kept
        while len(kept) < 1 + len(reads):
            kept.append(self.raw.cursor())
        cursors = kept[1:1 + len(reads)]
        try:
            with self.raw.pipeline():
                if writes is not None:
                    writes()
                for cur, (sql, params) in zip(cursors, reads, strict=True):
                    sql = self._sql(sql)
                    self._observed(cur, sql, params, False)
                    cur.execute(sql, params)
                if commit:
                    # Queued like any statement (`connection.commit()` would sync the
                    # pipeline, a round trip of its own); psycopg reads the transaction's
                    # end from the server's answer.
                    self._write_cursor().execute("COMMIT", prepare=False)
            return [list(cur.fetchall()) for cur in cursors]
        except self._dbapi_error as exc:
            raise self._error(exc, "-- pipeline", ()) from exc

    # -- values as SQLAlchemy binds and reads them -----------------------------------------
    def bind(self, table: Table, columns: Sequence[str],
             rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """`rows` (values in `columns` order) bound exactly as SQLAlchemy binds them for
        `table`; each processor runs once per distinct value in this transaction (one time is
        stamped on most rows a purchase writes)."""
        todo = []
        for i, binder in enumerate(_binders(self.dialect, table, tuple(columns))):
            if binder is not None:
                spelled, proc = binder
                todo.append((i, proc, self._bound.setdefault(spelled, {})))
        if not todo:
            return [tuple(row) for row in rows]
        bound = []
        for row in rows:
            values = list(row)
            for i, proc, cache in todo:
                value = values[i]
                if value is None:
                    continue
                try:
                    values[i] = cache[value]
                except KeyError:
                    cache[value] = values[i] = proc(value)
                except TypeError:  # unhashable: process each time
                    values[i] = proc(value)
            bound.append(tuple(values))
        return bound

    def write(self, sql: str, table: Table, columns: Sequence[str],
              rows: Sequence[Sequence[Any]]) -> None:
        """`sql` (with a `?` for each column in `columns`, in order) for every row, bound as
        SQLAlchemy would bind them for `table`."""
        if rows:
            self.many(sql, self.bind(table, columns, rows))

    def read(self, table: Table, columns: Sequence[str],
             rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Rows read from `table` (values in `columns` order) as SQLAlchemy returns them."""
        processors = _readers(self.dialect, table, tuple(columns))
        todo = [(i, p) for i, p in enumerate(processors) if p is not None]
        if not todo:
            return [tuple(r) for r in rows]
        out = []
        for r in rows:
            values = list(r)
            for i, proc in todo:
                if values[i] is not None:
                    values[i] = proc(values[i])
            out.append(tuple(values))
        return out
