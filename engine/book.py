"""`Book`: what one engine action holds while it runs inside its database transaction.

It takes the journal head lock first (every writer does, so writers are serialised in
commit order, as a hash chain requires), then locks the pool and user rows it changes
(`SELECT … FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already holds the file).

Rows are plain objects held by the transaction's unit of work (`self.rows`, storage/unit.py):
read once through the named queries of storage/queries.py, changed in memory — balances only
by journal movements (`journal.Postings`, engine/ledger.py) — and written in a few
statements at commit (docs/engine.md, "The fast row path"). The store's settings and
products are parsed once per process and kept while `head.catalog_rev` stays the same (every
change to them writes a new one).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from storage import queries
from storage.rows import JOURNAL, OUTBOX, POSTINGS, HeadRow, PoolRow, UserRow
from storage.unit import Rows

from . import config, journal, outbox
from .config import Config
from .errors import Refusal


@dataclass(frozen=True)
class ProductInfo:
    sku: str
    name: str
    price: int
    margin: str
    lock_days: int
    scheme: str
    active: bool
    kind: str = "goods"
    # Whether the product counts its stock (SPEC §9). Only a product event changes it (and
    # with it `catalog_rev`); the count itself changes with every sale, so it is read under
    # the head lock by the purchase that needs it (engine/lines.py), never cached.
    limited: bool = False


class _Catalog:
    """Settings and products as of one `catalog_rev`."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.products: dict[str, ProductInfo | None] = {}


_CATALOGS: OrderedDict[str, _Catalog] = OrderedDict()
_CATALOGS_LOCK = threading.Lock()
_KEEP = 16


def _cached(rev: str | None) -> _Catalog | None:
    if rev is None:
        return None
    with _CATALOGS_LOCK:
        found = _CATALOGS.get(rev)
        if found is not None:
            _CATALOGS.move_to_end(rev)
        return found


def _keep(rev: str | None, catalog: _Catalog) -> None:
    if rev is None:
        return
    with _CATALOGS_LOCK:
        _CATALOGS[rev] = catalog
        while len(_CATALOGS) > _KEEP:
            _CATALOGS.popitem(last=False)


class Book:
    def __init__(self, session: Session, *,
                 purchase: tuple[object, str | None, datetime | None] | None = None,
                 ahead: Callable[[Book], HeadRow | None] | None = None) -> None:
        """`purchase`: (buyer's handle, idempotency key, due-by time) of the one purchase this
        book is for — its reads (`prefetch_purchase`) are made with the head's, in the same
        round trip, the head lock still first. `ahead`: a group commit's reads for its whole
        batch (engine/batch.py), made the same way; it returns the head row it read first."""
        self.s = session
        self.rows = Rows(session)
        self._pools: dict[str, PoolRow] = {}
        self._by_handle: dict[str, UserRow] = {}
        self._stored: dict[str, tuple[str, str | None] | None] = {}
        self._recorded: dict[str, tuple[str, str | None]] = {}
        self._prefetched: tuple[object, str | None, datetime | None] | None = None
        head = self._purchase_reads(*purchase, with_head=True) if purchase is not None else None
        if ahead is not None:  # a group commit's reads, the head's first (engine/batch.py)
            head = ahead(self)
        if head is None:
            head = self.rows.one(HeadRow, 1)
        assert head is not None, "the head row is made by the first migration"
        self.head = head
        self._catalog = self._load_catalog()

    # -- settings and products --------------------------------------------------------------
    @property
    def cfg(self) -> Config:
        return self._catalog.cfg

    def _load_catalog(self) -> _Catalog:
        rev = self.head.catalog_rev
        found = _cached(rev)
        if found is None:
            found = _Catalog(config.stored_via(self.rows.db))
            _keep(rev, found)
        return found

    def catalog_changed(self) -> None:
        """Settings or products changed in this transaction: a new revision, read afresh."""
        self.s.flush()
        self.rows.flush()
        self.head.catalog_rev = uuid.uuid4().hex
        self._catalog = self._load_catalog()

    def product(self, sku: object) -> ProductInfo | None:
        if not isinstance(sku, str):
            return None
        products = self._catalog.products
        if sku in products:
            return products[sku]
        found = queries.product(self.rows, sku)
        info = None
        if found:
            s, name, price, margin, lock_days, scheme, active, stock, kind = found
            info = ProductInfo(s, name, price, margin, lock_days, scheme, bool(active), kind,
                               stock is not None)
        products[sku] = info
        return info

    # -- rows -------------------------------------------------------------------------------
    def pool(self, name: str) -> PoolRow:
        if not self._pools:  # both pools in one statement: most purchases touch both
            self._pools = {p.name: p for p in queries.pools(self.rows)}
        return self._pools[name]

    def user(self, handle: str) -> UserRow:
        """The user with this handle, locked, or `unknown_user`."""
        if not isinstance(handle, str) or not handle:
            raise Refusal("unknown_user")
        row = self._by_handle.get(handle)
        if row is None:
            found = queries.user_by_handle(self.rows, handle)
            if found is None:
                raise Refusal("unknown_user", handle)
            row = self._by_handle[handle] = found
        return row

    def user_by_id(self, user_id: int) -> UserRow:
        row = self.rows.one(UserRow, user_id)
        assert row is not None, user_id
        return row

    def handle_of(self, user_id: int) -> str:
        """A user's handle (read without a lock when the row is not held already)."""
        row = self.rows.peek(UserRow, user_id)
        if row is not None:
            return row.handle
        return queries.handle_of(self.rows, user_id)

    def forget_user(self, user_id: int) -> None:
        """The ORM is about to change or delete this user: write and drop the plain row."""
        row = self.rows.peek(UserRow, user_id)
        if row is not None:
            self._by_handle.pop(row.handle, None)
        self.rows.forget(UserRow, user_id)

    def flush(self) -> None:
        """Write what the rows changed now, before a read that must see it in SQL."""
        self.rows.flush()

    def prefetch_purchase(self, handle: object, key: str | None, at: datetime | None) -> None:
        """Everything a purchase may read, in one round trip (PostgreSQL pays one per
        statement): its idempotency key, the buyer and their referrer, the pools, the orders
        due by `at`, and the referrer's waiting entries (for acceleration) — all locked, as
        the purchase would lock them one by one. Nothing when the book was opened for this
        very purchase (`Book(purchase=...)` read them already, with the head)."""
        if self._prefetched == (handle, key, at):
            self._prefetched = None
            return
        self._purchase_reads(handle, key, at, with_head=False)

    def _purchase_reads(self, handle: object, key: str | None, at: datetime | None, *,
                        with_head: bool) -> HeadRow | None:
        """`prefetch_purchase`'s reads; with `with_head`, the head row's first (returned)."""
        if not isinstance(handle, str) or not handle:
            return None
        read_key = key if key is not None and key not in self._stored else None
        if not with_head and read_key is None and handle in self._by_handle:
            return None  # read already, with the rest of its batch (engine/batch.py)
        got = queries.purchase_reads(self.rows, handle, read_key, at, with_pools=not self._pools,
                                     with_head=with_head)
        if got["buyer"]:
            self._by_handle[handle] = got["buyer"][0]
        if "pools" in got:
            self._pools = {p.name: p for p in got["pools"]}
        if read_key is not None:
            found = got["key"]
            self._stored[read_key] = (found[0][0], found[0][1]) if found else None
        if not with_head:
            return None
        self._prefetched = (handle, key, at)
        return got["head"][0] if got["head"] else None

    # -- journal ----------------------------------------------------------------------------
    def stored(self, key: str) -> tuple[str, str | None] | None:
        """The body and result stored under an idempotency key, if any."""
        if key in self._recorded:  # recorded in this transaction, not yet written
            return self._recorded[key]
        if key in self._stored:
            return self._stored.pop(key)
        return queries.stored_result(self.rows, key)

    def already(self, key: str | None) -> dict[str, Any] | None:
        """The stored result of an earlier call with this idempotency key, if any."""
        if key is None:
            return None
        found = self.stored(key)
        if found is None:
            return None
        result: dict[str, Any] = json.loads(found[1]) if found[1] else {}
        result["replayed"] = True
        return result

    def record(self, *, key: str, kind: str, at: datetime,
               postings: journal.Postings | None = None, body: dict[str, Any] | None = None,
               result: dict[str, Any] | None = None, actor: str | None = None) -> int:
        """Append one balanced transaction to the chain; returns its position."""
        self.record_many([journal.Txn(key, kind, at, postings, body, result, actor)])
        return self.head.last_txn

    def record_many(self, txns: list[journal.Txn]) -> None:
        txn_rows, posting_rows = journal.chain(self.head, txns)
        for row in txn_rows:
            self.rows.append(JOURNAL, row)
            self._recorded[row[1]] = (row[5], row[6])  # key: (body, result)
        for row in posting_rows:
            self.rows.append(POSTINGS, row)

    # -- notifications ----------------------------------------------------------------------
    def notify(self, user: UserRow, kind: str, key: str, at: datetime, **params: Any) -> None:
        """Owe `user` a message about a movement, in the same transaction as the movement."""
        self.owe(key, user.id, kind, params, user.lang, at)

    def owe(self, key: str, user_id: int, kind: str, params: dict[str, Any], lang: str | None,
            at: datetime) -> None:
        """`notify` for a user this transaction holds no row of (releases, broadcasts)."""
        self.rows.append(OUTBOX, outbox.message(key, user_id, kind, params, lang, at))
