"""The rows money moves through, as plain objects, and the unit of work that writes them.

The engine reads a purchase's rows once (locked), changes them in memory, and this module
writes what changed in a few multi-row statements through the driver (storage/driver.py)
when the transaction commits — or earlier, whenever anything else is about to read the
database in the same transaction: an ORM statement on the session, an ORM flush, or the
engine asking for it (`Rows.flush`). So ORM code sharing the transaction never sees stale
rows, and rows loaded here are never stale either: `Rows.forget` drops any the ORM changes.

Each row class names its table, key and the columns the engine may change; a row loaded twice
in one transaction is the same object (an identity map), so a change made through one
reference is seen through every other.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar, cast

from sqlalchemy import Table, event
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from . import models
from .driver import Driver

R = TypeVar("R", bound="Row")


class Row:
    """A row of `TABLE`; `MUTABLE` columns are compared with their loaded values on flush."""

    TABLE: ClassVar[Table]
    MODEL: ClassVar[type[models.Base]]
    KEY: ClassVar[str]
    COLUMNS: ClassVar[tuple[str, ...]]
    MUTABLE: ClassVar[tuple[str, ...]]
    _GET_MUTABLE: ClassVar[Callable[[Any], tuple[Any, ...]]]
    SELECT: ClassVar[str]
    INSERT: ClassVar[str]
    UPDATE: ClassVar[str]
    __slots__ = ("_saved",)
    _saved: tuple[Any, ...] | None  # the MUTABLE values as stored; None: not stored yet

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        columns = ", ".join(_q(c) for c in cls.COLUMNS)
        cls.SELECT = f"SELECT {columns} FROM {cls.TABLE.name}"
        cls.INSERT = (f"INSERT INTO {cls.TABLE.name} ({columns}) "
                      f"VALUES ({', '.join('?' for _ in cls.COLUMNS)})")
        sets = ", ".join(f"{_q(c)} = ?" for c in cls.MUTABLE)
        cls.UPDATE = f"UPDATE {cls.TABLE.name} SET {sets} WHERE {_q(cls.KEY)} = ?"
        getter = operator.attrgetter(*cls.MUTABLE)  # a tuple of them (more than one each)
        cls._GET_MUTABLE = staticmethod(getter)  # type: ignore[assignment]

    def __init__(self, **values: Any) -> None:
        for name in self.COLUMNS:
            setattr(self, name, values.get(name))
        self._saved = None

    @classmethod
    def _loaded(cls: type[R], values: Sequence[Any]) -> R:
        row = cls.__new__(cls)
        for name, value in zip(cls.COLUMNS, values, strict=True):
            setattr(row, name, value)
        row._saved = row._mutable()
        return row

    def _mutable(self) -> tuple[Any, ...]:
        return type(self)._GET_MUTABLE(self)

    @property
    def key(self) -> Any:
        return getattr(self, self.KEY)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key!r}>"


def _q(name: str) -> str:
    return f'"{name}"'


def _table(model: type[models.Base]) -> Table:
    return cast(Table, model.__table__)


class UserRow(Row):
    TABLE = _table(models.User)
    MODEL = models.User
    KEY = "id"
    COLUMNS = ("id", "handle", "referrer_id", "lang", "display_name", "wallet", "held",
               "points", "basis", "exit_key")
    MUTABLE = ("wallet", "held", "points", "basis", "exit_key")
    __slots__ = COLUMNS
    id: int
    handle: str
    referrer_id: int | None
    lang: str | None
    display_name: str | None
    wallet: int
    held: int
    points: int
    basis: int
    exit_key: bytes | None


class PoolRow(Row):
    TABLE = _table(models.Pool)
    MODEL = models.Pool
    KEY = "name"
    COLUMNS = ("name", "balance", "supply", "zero_price_num", "zero_price_den")
    MUTABLE = ("balance", "supply", "zero_price_num", "zero_price_den")
    __slots__ = COLUMNS
    name: str
    balance: int
    supply: int
    zero_price_num: int | None
    zero_price_den: int | None


class HeadRow(Row):
    TABLE = _table(models.Head)
    MODEL = models.Head
    KEY = "id"
    COLUMNS = ("id", "last_txn", "last_hash", "last_entry_seq", "last_order_no", "catalog_rev")
    MUTABLE = ("last_txn", "last_hash", "last_entry_seq", "last_order_no", "catalog_rev")
    __slots__ = COLUMNS
    id: int
    last_txn: int
    last_hash: str
    last_entry_seq: int
    last_order_no: int
    catalog_rev: str | None


class OrderRow(Row):
    TABLE = _table(models.Order)
    MODEL = models.Order
    KEY = "no"
    COLUMNS = ("no", "ref", "user_id", "sku", "qty", "total", "points_used", "points_value",
               "cash", "method", "currency", "status", "created_at", "paid_at", "settles_at",
               "matures_at", "settled_at", "terms", "payment_ref", "entry_seq", "minted",
               "accelerated")
    # `method` changes once: an order opened for a channel and paid from the wallet instead
    # (`orders.pay_from_wallet`), so a refund returns its cash to the wallet.
    MUTABLE = ("status", "method", "paid_at", "payment_ref", "settles_at", "matures_at",
               "settled_at", "entry_seq", "minted", "accelerated")
    __slots__ = COLUMNS
    no: int
    ref: str
    user_id: int
    sku: str
    qty: int
    total: int
    points_used: int
    points_value: int
    cash: int
    method: str
    currency: str
    status: str
    created_at: datetime
    paid_at: datetime | None
    settles_at: datetime | None
    matures_at: datetime | None
    settled_at: datetime | None
    terms: str
    payment_ref: str | None
    entry_seq: int | None
    minted: int
    accelerated: int


class EntryRow(Row):
    TABLE = _table(models.Entry)
    MODEL = models.Entry
    KEY = "seq"
    COLUMNS = ("seq", "user_id", "order_no", "amount", "released", "status", "matures_at",
               "created_at", "released_at")
    MUTABLE = ("released", "status", "released_at")
    __slots__ = COLUMNS
    seq: int
    user_id: int
    order_no: int
    amount: int
    released: int
    status: str
    matures_at: datetime
    created_at: datetime
    released_at: datetime | None


# Flush order: rows the appended rows point at come first.
ROW_TYPES: tuple[type[Row], ...] = (HeadRow, PoolRow, UserRow, OrderRow, EntryRow)


@dataclass(frozen=True)
class Query:
    """A read: rows of `cls` (or plain tuples when `cls` is None and `where` is the whole
    statement)."""

    cls: type[Row] | None
    where: str
    params: tuple[Any, ...] = ()
    lock: bool = True
    suffix: str = ""

    def sql(self, lock: str) -> str:
        if self.cls is None:
            return self.where
        sql = self.cls.SELECT + (f" WHERE {self.where}" if self.where else "")
        return sql + self.suffix + (lock if self.lock else "")


class Appended:
    """An append-only table (journal, postings, outbox): rows written, never read back."""

    def __init__(self, model: type[models.Base], columns: tuple[str, ...]) -> None:
        self.table = _table(model)
        self.columns = columns
        self.sql = (f"INSERT INTO {self.table.name} ({', '.join(_q(c) for c in columns)}) "
                    f"VALUES ({', '.join('?' for _ in columns)})")


JOURNAL = Appended(models.JournalTxn, ("id", "key", "kind", "at", "actor", "body", "result",
                                       "prev_hash", "hash"))
POSTINGS = Appended(models.Posting, ("txn_id", "account", "unit", "amount", "ref"))
OUTBOX = Appended(models.Outbox, ("key", "user_id", "kind", "params", "lang", "status",
                                  "attempts", "next_at", "created_at"))
APPENDED = (JOURNAL, POSTINGS, OUTBOX)


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

    def _rows_of(self, q: Query, raw: list[tuple[Any, ...]]) -> list[Any]:
        cls = q.cls
        if cls is None:
            return raw
        values = self.db.read(cls.TABLE, cls.COLUMNS, raw)
        known = self._known[cls]
        out = []
        at = cls.COLUMNS.index(cls.KEY)
        for v in values:
            row = known.get(v[at])
            if row is None:
                row = known[v[at]] = cls._loaded(v)
            out.append(row)
        return out

    def one(self, cls: type[R], key: Any, *, lock: bool = True) -> R | None:
        """The row with this key, from memory if it was loaded already."""
        row = self._known[cls].get(key)
        if row is not None:
            return cast(R, row)
        found = self.load(cls, f"{_q(cls.KEY)} = ?", (key,), lock=lock)
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

    # -- writing -----------------------------------------------------------------------------
    def add(self, row: R) -> R:
        """A new row, inserted on flush."""
        self._known[type(row)][row.key] = row
        self._new.append(row)
        return row

    def append(self, table: Appended, values: Sequence[Any]) -> None:
        self._appended[table].append(values)

    def forget(self, cls: type[Row], key: Any) -> None:
        """Stop tracking a row (the ORM is about to change or delete it); flush first."""
        self.flush()
        self._known[cls].pop(key, None)

    def flush(self, then: Query | None = None) -> list[Any]:
        """Write every change so far, in a few statements — then run `then`, a read, in the
        same round trip, and return its rows."""
        if self._flushing:
            return []
        self._flushing = True
        self._ready.clear()  # prefetched reads may be out of date once anything is written
        try:
            writes = self._changes()
            if not writes and then is None:
                return []
            reads = [] if then is None else [(then.sql(self.db.lock), then.params)]

            def write_all() -> None:
                for w in writes:
                    self.db.write(*w)

            got = self.db.batch(reads, write_all)
            return [] if then is None else self._rows_of(then, got[0])
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
            for r in self._known[cls].values():
                now = r._mutable()
                if now != r._saved:
                    changed.append(r)
                    r._saved = now
            if changed:
                writes.append((cls.UPDATE, cls.TABLE, (*cls.MUTABLE, cls.KEY),
                               [[*r._mutable(), r.key] for r in changed]))
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


def rows_of(session: Session) -> Rows | None:
    return session.info.get("rows")


# Anything else the session does first sees what the rows wrote.
@event.listens_for(Session, "do_orm_execute")
def _before_orm_statement(state: Any) -> None:
    rows = state.session.info.get("rows")
    if rows is not None:
        rows.flush()


@event.listens_for(Session, "before_flush")
def _before_orm_flush(session: Session, _context: Any, _instances: Any) -> None:
    rows = session.info.get("rows")
    if rows is not None:
        rows.flush()


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    rows = session.info.get("rows")
    if rows is not None:
        rows.flush()


@event.listens_for(Session, "after_transaction_end")
def _after_transaction(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the outermost: this unit of work is over
        session.info.pop("rows", None)
