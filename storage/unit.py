"""The unit of work of the fast row path: one per database transaction (docs/engine.md).

The engine reads a purchase's rows once (locked), changes them in memory, and `Rows.flush`
writes what changed in a few multi-row statements through the driver (storage/driver.py):
explicitly when the transaction commits (`flush_pending`, called by `Database.transaction`
just before its commit), and earlier whenever the ORM is about to touch the database in the
same transaction — two SQLAlchemy listeners at the end of this module, the only hooks left.
So ORM code sharing the transaction never sees stale rows, and rows loaded here are never
stale either: `Rows.forget` drops any the ORM is about to change, and the ORM's copies of
rows written here are expired.

A row loaded twice in one transaction is the same object (an identity map), so a change
made through one reference is seen through every other.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import Table, event
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from .driver import Driver
from .rows import APPENDED, ROW_TYPES, Appended, Query, Row, key_match

R = TypeVar("R", bound=Row)

class Rows:
    """The unit of work of one database transaction (one per session)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.db = Driver(session)
        self._known: dict[type[Row], dict[Any, Row]] = {cls: {} for cls in ROW_TYPES}
        self._new: list[Row] = []
        self._appended: dict[Appended, list[Sequence[Any]]] = {a: [] for a in APPENDED}
        self._flushing = False
        self._ready: dict[Hashable, list[Any]] = {}
        previous = session.info.get("rows")
        if previous is not None:
            previous.flush()
        session.info["rows"] = self

    # -- reading -----------------------------------------------------------------------------
    def load(self, cls: type[R], where: str = "", params: Sequence[Any] = (), *,
             lock: bool = True, suffix: str = "", name: Hashable = None) -> list[R]:
        """Rows of `cls` matching `where` (SQL after WHERE), in the database's order; a row
        already loaded in this transaction is returned as it is now in memory. With `name`,
        the result of a `prefetch` under that name, if nothing was written since."""
        if name is not None and name in self._ready:
            return cast(list[R], self._ready.pop(name))
        self.session.flush()  # pending ORM changes first (a no-op when there are none)
        q = Query(cls, where, tuple(params), lock, suffix)
        return cast(list[R], self._rows_of(q, self.db.rows(q.sql(self.db.lock), q.params)))

    def prefetch(self, queries: dict[Hashable, Query]) -> dict[Hashable, list[Any]]:
        """Several reads in one round trip, by name (see `keep`). A query without a row
        class gives plain tuples."""
        self.session.flush()
        names = list(queries)
        results = self.db.batch([(queries[n].sql(self.db.lock), queries[n].params)
                                 for n in names])
        return {n: self._rows_of(queries[n], r) for n, r in zip(names, results, strict=True)}

    def keep(self, name: Hashable, rows: list[Any]) -> None:
        """Offer a prefetched result to the next `load(name=name)` (until anything is
        written)."""
        self._ready[name] = rows

    def kept(self, name: Hashable) -> list[Any] | None:
        """A prefetched result offered under `name` (`keep`), taken, if nothing was written
        since; else None."""
        return self._ready.pop(name, None)

    def _rows_of(self, q: Query, raw: list[tuple[Any, ...]]) -> list[Any]:
        cls = q.cls
        if cls is None:
            return raw
        known = self._known[cls]
        ats = cls.KEY_AT
        out = []
        for values in self.db.read(cls.TABLE, cls.COLUMNS, raw):
            key = values[ats[0]] if len(ats) == 1 else tuple(values[i] for i in ats)
            row = known.get(key)
            if row is None:
                row = known[key] = cls._loaded(values)
            out.append(row)
        return out

    def one(self, cls: type[R], key: Any, *, lock: bool = True) -> R | None:
        """The row with this key, from memory if it was loaded already."""
        row = self._known[cls].get(key)
        if row is not None:
            return cast(R, row)
        params = (key,) if len(cls.KEYS) == 1 else tuple(key)
        found = self.load(cls, key_match(cls.KEYS), params, lock=lock)
        return found[0] if found else None

    def peek(self, cls: type[R], key: Any) -> R | None:
        """The row with this key if this transaction holds it already (no statement)."""
        return cast("R | None", self._known[cls].get(key))

    def known(self, cls: type[R]) -> Iterable[R]:
        """Every row of `cls` loaded or added in this transaction."""
        return cast(Iterable[R], self._known[cls].values())

    def param(self, cls: type[Row], column: str, value: Any) -> Any:
        """`value` bound as a parameter compared with `cls`'s `column` (times, mostly)."""
        return self.db.bind(cls.TABLE, (column,), [(value,)])[0][0]

    def scalars(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The first column of a read."""
        self.session.flush()
        return [r[0] for r in self.db.rows(sql, params)]

    @property
    def flushing(self) -> bool:
        """True while this unit is writing its changes (a read asked meanwhile must not
        start another flush)."""
        return self._flushing

    # -- writing -----------------------------------------------------------------------------
    def add(self, row: R) -> R:
        """A new row, inserted on flush."""
        self._known[type(row)][row.key] = row
        self._new.append(row)
        return row

    def adopt(self, row: R) -> R:
        """A row whose stored values the caller knows without reading it (a one-line
        order's line mirrors its order): tracked as if loaded, written only if changed."""
        known = self._known[type(row)]
        found = known.get(row.key)
        if found is not None:
            return cast(R, found)
        row._saved = row._mutable()
        known[row.key] = row
        return row

    def append(self, table: Appended, values: Sequence[Any]) -> None:
        self._appended[table].append(values)

    def forget(self, cls: type[Row], key: Any) -> None:
        """Stop tracking a row (the ORM is about to change or delete it); flush first."""
        self.flush()
        self._known[cls].pop(key, None)

    def flush(self) -> None:
        """Write every change so far, in a few statements (one round trip)."""
        self._flush(())

    def flush_and_commit(self) -> bool:
        """On PostgreSQL, the last changes written and the transaction committed in the same
        round trip; True if it was committed here. Only when the ORM has nothing of its own
        left to write (it would flush after this, at the commit) and there is something to
        write (else the commit alone is the round trip anyway)."""
        session = self.session
        if not self.db.pg or self._flushing or session.new or session.dirty or session.deleted:
            return False
        self._flushing = True
        self._ready.clear()
        try:
            writes = self._changes()
            if not writes:
                return False

            def write_all() -> None:
                for w in writes:
                    self.db.write(*w)

            self.db.batch((), write_all, commit=True)
            return True
        finally:
            self._flushing = False

    def flushed_scalars(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """`scalars`, on PostgreSQL with every change so far written first in the same round
        trip (the pipeline runs them in order): the read then costs no round trip of its own,
        and the commit's flush usually finds nothing left to write. On SQLite, where a
        statement costs no round trip, just `scalars`."""
        if not self.db.pg:
            return self.scalars(sql, params)
        self.session.flush()  # pending ORM changes first (a no-op when there are none)
        return [r[0] for r in self._flush(((sql, params),))[0]]

    def _flush(self, reads: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple[Any, ...]]]:
        """What changed, written, then `reads` — in one round trip."""
        if self._flushing:
            return [self.db.rows(sql, params) for sql, params in reads]
        self._flushing = True
        self._ready.clear()  # prefetched reads may be out of date once anything is written
        try:
            writes = self._changes()
            if not writes:
                return self.db.batch(reads) if reads else []

            def write_all() -> None:
                for w in writes:
                    self.db.write(*w)

            return self.db.batch(reads, write_all)
        finally:
            self._flushing = False

    def _changes(self) -> list[tuple[str, Table, Sequence[str], list[Sequence[Any]]]]:
        """The statements that write what changed since the last flush, in flush order."""
        writes: list[tuple[str, Table, Sequence[str], list[Sequence[Any]]]] = []
        new, self._new = self._new, []
        for cls in ROW_TYPES:
            if new:
                inserts = [r for r in new if type(r) is cls]
                if inserts:
                    writes.append((cls.INSERT, cls.TABLE, cls.COLUMNS,
                                   [[getattr(r, c) for c in cls.COLUMNS] for r in inserts]))
                    for r in inserts:
                        r._saved = r._mutable()
            changed = []
            get = cls._GET_MUTABLE  # `Row._mutable` without its call: this scans every row held
            for r in self._known[cls].values():
                now = get(r)
                if now != r._saved:
                    changed.append(r)
                    r._saved = now
            if changed:
                keys = cls.KEYS
                writes.append((cls.UPDATE, cls.TABLE, (*cls.MUTABLE, *keys),
                               [[*r._mutable(), *(getattr(r, k) for k in keys)]
                                for r in changed]))
                self._expire_orm(cls, changed)
        for table in APPENDED:
            rows = self._appended[table]
            if rows:
                self._appended[table] = []
                writes.append((table.sql, table.table, table.columns, rows))
        return writes

    def _expire_orm(self, cls: type[Row], rows: Iterable[Row]) -> None:
        """ORM copies of rows written here are stale now: make the ORM read them again."""
        imap = self.session.identity_map
        if not len(imap):
            return
        for r in rows:
            obj = imap.get(identity_key(cls.MODEL, r.key))
            if obj is not None:
                self.session.expire(obj)


def flush_pending(session: Session) -> None:
    """Write what the transaction's rows changed: the unit of work commits next."""
    rows = session.info.get("rows")
    if rows is not None:
        rows.flush()


def flush_to_commit(session: Session) -> None:
    """`flush_pending` just before the transaction commits: on PostgreSQL the writes and the
    COMMIT go in one round trip when nothing else is left to write (`Rows.flush_and_commit`)."""
    rows = session.info.get("rows")
    if rows is not None and not rows.flush_and_commit():
        rows.flush()


def end(session: Session) -> None:
    """The transaction is over (committed or rolled back): its rows are gone with it."""
    session.info.pop("rows", None)


# The ORM sharing the transaction (settings, products, identities, checkouts, withdrawals,
# account linking) first sees what the rows changed: before any ORM statement, and before
# the ORM flushes its own objects (whose statements may read or point at these rows).
@event.listens_for(Session, "do_orm_execute")
def _before_orm_statement(state: Any) -> None:
    flush_pending(state.session)


@event.listens_for(Session, "before_flush")
def _before_orm_flush(session: Session, _context: Any, _instances: Any) -> None:
    flush_pending(session)
