"""The rows money moves through, as plain objects (docs/engine.md, "The fast row path").

Each row class names its table, key and the columns the engine may change, and derives its
SELECT, INSERT and UPDATE from them; the unit of work (storage/unit.py) keeps one object per
row and writes what changed. `Appended` tables (journal, postings, outbox) are only ever
inserted into. `Query` is one read of rows, as storage/queries.py phrases them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar, cast

from sqlalchemy import Table

from . import models

R = TypeVar("R", bound="Row")


class Row:
    """A row of `TABLE`; `MUTABLE` columns are compared with their loaded values on flush."""

    TABLE: ClassVar[Table]
    MODEL: ClassVar[type[models.Base]]
    KEY: ClassVar[str | tuple[str, ...]]  # a column, or the columns of a composite key
    KEYS: ClassVar[tuple[str, ...]]
    KEY_AT: ClassVar[tuple[int, ...]]  # where the key's columns are in COLUMNS
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
        columns = ", ".join(q(c) for c in cls.COLUMNS)
        cls.SELECT = f"SELECT {columns} FROM {cls.TABLE.name}"
        cls.INSERT = (f"INSERT INTO {cls.TABLE.name} ({columns}) "
                      f"VALUES ({', '.join('?' for _ in cls.COLUMNS)})")
        sets = ", ".join(f"{q(c)} = ?" for c in cls.MUTABLE)
        cls.KEYS = (cls.KEY,) if isinstance(cls.KEY, str) else cls.KEY
        cls.KEY_AT = tuple(cls.COLUMNS.index(k) for k in cls.KEYS)
        cls.UPDATE = f"UPDATE {cls.TABLE.name} SET {sets} WHERE {key_match(cls.KEYS)}"
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
        row._saved = cls._GET_MUTABLE(row)
        return row

    def _mutable(self) -> tuple[Any, ...]:
        return type(self)._GET_MUTABLE(self)

    @property
    def key(self) -> Any:
        """The key's value: a tuple for a composite key."""
        keys = self.KEYS
        if len(keys) == 1:
            return getattr(self, keys[0])
        return tuple(getattr(self, k) for k in keys)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key!r}>"


def q(name: str) -> str:
    """A quoted column name."""
    return f'"{name}"'


def key_match(keys: Sequence[str]) -> str:
    """`"a" = ? AND "b" = ?`: the WHERE clause naming one row by its key columns."""
    return " AND ".join(f"{q(k)} = ?" for k in keys)


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
               "accelerated", "received_at")
    # `method` changes once: an order opened for a channel and paid from the wallet instead
    # (`orders.pay_from_wallet`), so a refund returns its cash to the wallet.
    MUTABLE = ("status", "method", "paid_at", "payment_ref", "settles_at", "matures_at",
               "settled_at", "entry_seq", "minted", "accelerated", "received_at")
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
    received_at: datetime | None


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


class OrderLineRow(Row):
    """A line of an order (SPEC §9). A one-line order's line mirrors its order row, so the
    engine can know it without reading it (engine/lines.py, `lines_of`)."""

    TABLE = _table(models.OrderLine)
    MODEL = models.OrderLine
    KEY = ("order_no", "line_no")
    COLUMNS = ("order_no", "line_no", "sku", "qty", "unit_price", "total", "cash",
               "matures_at", "entry_seq", "minted", "accelerated")
    MUTABLE = ("matures_at", "entry_seq", "minted", "accelerated")
    __slots__ = COLUMNS
    order_no: int
    line_no: int
    sku: str
    qty: int
    unit_price: int
    total: int
    cash: int
    matures_at: datetime | None
    entry_seq: int | None
    minted: int
    accelerated: int


# Flush order: rows the appended rows point at come first.
ROW_TYPES: tuple[type[Row], ...] = (HeadRow, PoolRow, UserRow, OrderRow, OrderLineRow, EntryRow)


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
        self.sql = (f"INSERT INTO {self.table.name} ({', '.join(q(c) for c in columns)}) "
                    f"VALUES ({', '.join('?' for _ in columns)})")


JOURNAL = Appended(models.JournalTxn, ("id", "key", "kind", "at", "actor", "body", "result",
                                       "prev_hash", "hash"))
POSTINGS = Appended(models.Posting, ("txn_id", "account", "unit", "amount", "ref"))
OUTBOX = Appended(models.Outbox, ("key", "user_id", "kind", "params", "lang", "status",
                                  "attempts", "next_at", "created_at"))
APPENDED = (JOURNAL, POSTINGS, OUTBOX)
