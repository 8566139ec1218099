"""The engine's reads and bulk writes, by name: every SQL string the engine needs lives here.

Each function runs inside the caller's transaction, through the unit of work's plain rows
(storage/unit.py: rows come back locked and identity-mapped) or straight through the driver
(storage/driver.py). The engine calls them by what they return (`orders_due`,
`waiting_entries`, …) and writes no SQL itself. Why plain SQL and not the ORM: docs/engine.md
("The fast row path").
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, text
from sqlalchemy.orm import Session

from . import models
from . import rows as row_types
from .driver import Driver
from .rows import EntryRow, HeadRow, OrderLineRow, OrderRow, PoolRow, Query, UserRow, key_match
from .unit import Rows

_PRODUCTS = cast(Table, models.Product.__table__)
DUE_PAGE = 200  # orders settled per read (a purchase usually finds none or a few)


# -- settings and products ------------------------------------------------------------------
def settings(db: Driver) -> dict[str, str]:
    """The stored settings, `section.key` → the operator's exact text."""
    return dict(db.rows('SELECT "key", value FROM settings'))


def product(rows: Rows, sku: str) -> tuple[Any, ...] | None:
    """(sku, name, price, margin, lock_days, scheme, active, stock, kind) of a product, or
    None."""
    rows.session.flush()  # a product the ORM changed in this transaction
    found = rows.db.rows("SELECT sku, name, price, margin, lock_days, scheme, active, stock, "
                         "kind FROM products WHERE sku = ?", (sku,))
    return found[0] if found else None


def stock_of(rows: Rows, skus: Sequence[str]) -> dict[str, int | None]:
    """sku → units in stock (None: unlimited), locked."""
    rows.session.flush()
    db = rows.db
    return dict(db.rows(f"SELECT sku, stock FROM products WHERE sku IN "
                        f"({', '.join('?' * len(skus))})" + db.lock, tuple(skus)))


def move_stock(rows: Rows, moves: Iterable[tuple[int, str]]) -> None:
    """Add to (or, negative, take from) products' stock: (units, sku); unlimited stays so."""
    rows.db.write("UPDATE products SET stock = stock + ? WHERE sku = ? AND stock IS NOT NULL",
                  _PRODUCTS, ("stock", "sku"), list(moves))


def order_lines(rows: Rows, order_no: int) -> list[OrderLineRow]:
    """An order's lines in order, locked."""
    return rows.load(OrderLineRow, "order_no = ?", (order_no,), suffix=" ORDER BY line_no")


# -- rows a purchase locks -------------------------------------------------------------------
def pools(rows: Rows) -> list[PoolRow]:
    """Both pools, locked, in one statement (most purchases touch both)."""
    return rows.load(PoolRow, suffix=" ORDER BY name")


def user_by_handle(rows: Rows, handle: str) -> UserRow | None:
    found = rows.load(UserRow, "handle = ?", (handle,))
    return found[0] if found else None


def handle_of(rows: Rows, user_id: int) -> str:
    """A user's handle, read without a lock."""
    return str(rows.scalars("SELECT handle FROM users WHERE id = ?", (user_id,))[0])


def stored_result(rows: Rows, key: str) -> tuple[str, str | None] | None:
    """The body and result stored under a journal idempotency key, if any."""
    found = rows.db.rows('SELECT body, result FROM journal WHERE "key" = ?', (key,))
    return (found[0][0], found[0][1]) if found else None


def order_by_ref(rows: Rows, ref: str, *, lock: bool = True) -> OrderRow | None:
    found = rows.load(OrderRow, "ref = ?", (ref,), lock=lock)
    return found[0] if found else None


def orders_due(rows: Rows, at: datetime, after: int) -> list[OrderRow]:
    """Up to `DUE_PAGE` pending orders due by `at` after order `after`, in order, locked (the
    first page may have come with `purchase_reads`)."""
    return rows.load(OrderRow, "status = 'pending' AND settles_at <= ? AND no > ?",
                     (rows.param(OrderRow, "settles_at", at), after),
                     suffix=f" ORDER BY no LIMIT {DUE_PAGE}",
                     name=("due", at) if after == 0 else None)


def waiting_entries(rows: Rows, user_id: int) -> list[EntryRow]:
    """A user's waiting entries in `seq` order, locked (perhaps read by `purchase_reads`)."""
    return rows.load(EntryRow, "user_id = ? AND status = 'waiting'", (user_id,),
                     suffix=" ORDER BY seq", name=("waiting", user_id))


_REFERRER_OF = "(SELECT referrer_id FROM users WHERE handle = ?)"  # the buyer's referrer's id


def purchase_reads(rows: Rows, handle: str, key: str | None, at: datetime | None,
                   with_pools: bool, with_head: bool = False) -> dict[Hashable, list[Any]]:
    """Everything a purchase may read, in one round trip (PostgreSQL pays one per statement),
    all locked as the purchase would lock them one by one: with `with_head`, first the head
    row (`head`: the journal head lock every writer takes first; the pipeline runs the reads
    in order, so it is still taken before any other), `buyer` and `referrer` (lists of
    at most one row, read in one statement and told apart by the buyer's handle and
    `referrer_id`: neither is changed through these rows, the ORM's changes forget them
    first, `Book.forget_user`), `pools` (with `with_pools`), the stored result under `key` (`key`: a
    list of at most one (body, result)), and — offered to `orders_due` and `waiting_entries`
    until anything is written — the orders due by `at` and the referrer's waiting entries."""
    queries: dict[Any, Query] = {}
    if with_head:
        queries["head"] = Query(HeadRow, key_match(HeadRow.KEYS), (1,))
    queries |= {  # the buyer and their referrer in one statement (by id: one lock order)
        "users": Query(UserRow, f"handle = ? OR id = {_REFERRER_OF}", (handle, handle),
                       suffix=" ORDER BY id"),
        "waiting": Query(EntryRow, f"user_id = {_REFERRER_OF} AND status = 'waiting'",
                         (handle,), suffix=" ORDER BY seq"),
    }
    if with_pools:
        queries["pools"] = Query(PoolRow, "", suffix=" ORDER BY name")
    queries["exits"] = Query(None, EXITS_AHEAD_SQL, (EXITS_AHEAD,))
    if key is not None:
        queries["key"] = Query(None, 'SELECT body, result FROM journal WHERE "key" = ?', (key,))
    if at is not None:
        queries["due"] = Query(OrderRow, "status = 'pending' AND settles_at <= ? AND no > ?",
                               (rows.param(OrderRow, "settles_at", at), 0),
                               suffix=f" ORDER BY no LIMIT {DUE_PAGE}")
    got = rows.prefetch(queries)
    users = got.pop("users")
    got["buyer"] = [user for user in users if user.handle == handle]
    referrer_id = got["buyer"][0].referrer_id if got["buyer"] else None
    got["referrer"] = [user for user in users if user.id == referrer_id]
    if got["referrer"]:
        rows.keep(("waiting", referrer_id), got.pop("waiting"))
    if "due" in got:
        rows.keep(("due", at), got.pop("due"))
    rows.keep("exits", got.pop("exits"))
    return got


# -- the forced-exit index (docs/engine.md "Forced exit index") -----------------------------
def _not_in(rows: Rows, ids: Sequence[int]) -> tuple[str, tuple[Any, ...]]:
    """` AND id NOT IN (…)` and its parameters. On PostgreSQL one array parameter
    (`id <> ALL(?)`, the same test): one statement text however many users a transaction
    holds (a batch of purchases holds a hundred), so it is parsed and prepared once."""
    if not ids:
        return "", ()
    if rows.db.pg:
        return " AND id <> ALL(?)", (list(ids),)
    return f" AND id NOT IN ({', '.join('?' * len(ids))})", tuple(ids)


# The forced exit's first question, asked ahead with a purchase's reads: the few smallest
# stored exit keys (unlocked, as `first_exit_key` reads them). While nothing is written the
# stored keys of users the transaction does not hold are as they were (every writer holds the
# head lock, taken before this read), so the smallest of them not held answers it.
EXITS_AHEAD = 4
EXITS_AHEAD_SQL = ("SELECT exit_key, id FROM users WHERE exit_key IS NOT NULL "
                "ORDER BY exit_key, id LIMIT ?")


class ExitsAhead:
    """The smallest stored exit keys, (key, id) in the index's order, read once for a whole
    transaction (a batch of purchases, engine/batch.py) and asked by each forced-exit seek
    in it, instead of a flush and a round trip a seek. Read under the head lock, a stored key
    changes only when this transaction writes it, and it writes only keys of users it holds,
    which every seek skips (the caller has them in memory): everyone else's stay as read for
    the whole transaction, written or not. Once every user read is held, the next page is
    read after the last one (no flush needed either)."""

    def __init__(self, rows: Rows, found: Sequence[tuple[Any, int]], asked: int) -> None:
        self.rows = rows
        self.keys = [(bytes(key), user_id) for key, user_id in found]
        self.complete = len(found) < asked  # every stored key is in `keys`
        self.pages = 0  # pages read after the first (a figure for tests)
        rows.session.info["exits_ahead"] = self  # asked by `first_exit_key` from now on

    def first(self, limit: bytes, skip: Sequence[int]) -> bytes | None:
        """`first_exit_key`'s answer from the keys read (and more pages if need be)."""
        held = set(skip)
        while True:
            for key, user_id in self.keys:
                if user_id not in held:
                    return key if key <= limit else None
            if self.complete or not self.keys:
                return None
            most = len(held) + EXITS_AHEAD
            found = self.rows.db.rows("SELECT exit_key, id FROM users WHERE exit_key IS NOT "
                                      "NULL AND (exit_key, id) > (?, ?) ORDER BY exit_key, id "
                                      "LIMIT ?", (*self.keys[-1], most))
            self.keys += [(bytes(key), user_id) for key, user_id in found]
            self.complete = len(found) < most
            self.pages += 1


def first_exit_key(rows: Rows, limit: bytes, skip: Sequence[int]) -> bytes | None:
    """The smallest stored `exit_key` at or below `limit`, among users not in `skip`: every
    user whose key this transaction changed must be in `skip` (the seek holds them all)."""
    held_ahead = rows.session.info.get("exits_ahead")
    if isinstance(held_ahead, ExitsAhead) and held_ahead.rows is rows:
        return held_ahead.first(limit, skip)
    ahead = rows.kept("exits")
    if ahead is not None:
        held = set(skip)
        rest = [key for key, user_id in ahead if user_id not in held]
        if rest:  # the smallest of the users not held: a prefix of their order
            first = bytes(rest[0])
            return first if first <= limit else None
        if len(ahead) < EXITS_AHEAD:  # every stored key was read, all held
            return None
    # Asked once or more by every purchase, after its changes are made: on PostgreSQL they
    # are written in the same round trip (`flushed_scalars`), ahead of this read, so every
    # held user's stored key is its key in memory and none need be skipped (the caller takes
    # the smaller of the two anyway). Skipping them cost a batch of purchases, which holds a
    # hundred users, an array of a hundred ids to bind for every purchase (issue 19).
    written = rows.db.pg and not rows.flushing
    not_in, params = _not_in(rows, () if written else skip)
    found = rows.flushed_scalars("SELECT exit_key FROM users WHERE exit_key IS NOT NULL AND "
                                 f"exit_key <= ?{not_in} ORDER BY exit_key, id LIMIT 1",
                                 (limit, *params))
    return bytes(found[0]) if found else None


def users_with_exit_key(rows: Rows, key: bytes, skip: Sequence[int]) -> list[UserRow]:
    """Users (not in `skip`) whose `exit_key` is `key`, by id, locked."""
    not_in, params = _not_in(rows, skip)
    return rows.load(UserRow, f"exit_key = ?{not_in}", (key, *params), suffix=" ORDER BY id")


# -- a release page, in bulk ----------------------------------------------------------------
def matured_entries(rows: Rows, after_seq: int, at: datetime,
                    limit: int) -> list[tuple[int, int, int, int, str, str | None]]:
    """(seq, user_id, amount, released, owner's handle, owner's lang) of up to `limit`
    waiting entries matured by `at`, after `after_seq`, in `seq` order, the entries locked:
    one keyset read of `ix_entries_status_seq`, each owner found by its primary key."""
    db = rows.db
    return db.rows("SELECT e.seq, e.user_id, e.amount, e.released, u.handle, u.lang "
                   "FROM entries e JOIN users u ON u.id = e.user_id WHERE e.status = 'waiting' "
                   "AND e.seq > ? AND e.matures_at <= ? ORDER BY e.seq LIMIT ?"
                   + (" FOR UPDATE OF e" if db.pg else ""),
                   (after_seq, rows.param(EntryRow, "matures_at", at), limit))


def mark_released(rows: Rows, at: datetime, seqs: Iterable[int]) -> None:
    """Entries paid in full at `at` (one time for all: bound once)."""
    stamp = rows.param(EntryRow, "released_at", at)
    rows.db.many("UPDATE entries SET released = amount, status = 'released', released_at = ? "
                 "WHERE seq = ?", [(stamp, seq) for seq in seqs])


def credit_wallets(rows: Rows, credits: Iterable[tuple[int, int]]) -> None:
    """Add to wallets of users this transaction does not hold as rows: (amount, user_id)."""
    rows.db.write("UPDATE users SET wallet = wallet + ? WHERE id = ?", UserRow.TABLE,
                  ("wallet", "id"), list(credits))


def stamps(rows: Rows, at: datetime) -> tuple[Any, Any]:
    """`at` bound as the journal's `at` and as the outbox's times (`next_at`, `created_at`,
    one type): a release page stamps every row it writes with one time, bound once here."""
    journal_at = rows.db.bind(row_types.JOURNAL.table, ("at",), [(at,)])[0][0]
    outbox_at = rows.db.bind(row_types.OUTBOX.table, ("next_at", "created_at"), [(at, at)])[0]
    assert outbox_at[0] == outbox_at[1]
    return journal_at, outbox_at[0]


def append_bound(rows: Rows, journal: Sequence[Sequence[Any]], postings: Sequence[Sequence[Any]],
                 outbox: Sequence[Sequence[Any]]) -> None:
    """A release page's journal, postings and outbox rows (in `storage.rows.JOURNAL`'s,
    `POSTINGS`' and `OUTBOX`' column order, their times already bound by `stamps`), written
    now: one multi-row statement per table, no per-row binding."""
    for table, values in ((row_types.JOURNAL, journal), (row_types.POSTINGS, postings),
                          (row_types.OUTBOX, outbox)):
        rows.db.many(table.sql, values)


# -- `/me`: the hottest read, straight to the driver ----------------------------------------
# The account's holder, with what the account view shows of their referrer. SQLAlchemy Core
# cost ~50 µs a statement here, the driver a few.
_HOLDER = ("SELECT u.id, u.handle, u.lang, u.referrer_id, u.blocked, u.display_name, u.wallet, "
           "u.held, u.points, u.basis, r.display_name, r.handle{more} FROM users u "
           "LEFT JOIN users r ON r.id = u.referrer_id{join} WHERE {where}")
_HOLDER_BY_HANDLE = _HOLDER.format(more="", join="", where="u.handle = ?")
_HOLDER_BY_IDENTITY = _HOLDER.format(more=", i.last_seen_at",
                                     join=" JOIN identities i ON i.user_id = u.id",
                                     where="i.identity = ?")


def holder_by_handle(db: Driver, handle: str) -> tuple[Any, ...] | None:
    """(id, handle, lang, referrer_id, blocked, display_name, wallet, held, points, basis,
    referrer's display_name, referrer's handle) of a user, or None."""
    found = db.rows(_HOLDER_BY_HANDLE, (handle,))
    return found[0] if found else None


def holder_by_identity(db: Driver, identity: str) -> tuple[Any, ...] | None:
    """`holder_by_handle`'s columns and the identity's `last_seen_at` (as stored)."""
    found = db.rows(_HOLDER_BY_IDENTITY, (identity,))
    return found[0] if found else None


def points_pool(db: Driver) -> tuple[int, int, int | None, int | None]:
    """(balance, supply, zero_price_num, zero_price_den) of the points pool."""
    row = db.rows("SELECT balance, supply, zero_price_num, zero_price_den FROM pools "
                  "WHERE name = 'points'")[0]
    return row[0], row[1], row[2], row[3]


def waiting_summary(db: Driver, user_id: int) -> tuple[int, int]:
    """(how many, what they still lack) of a user's waiting entries."""
    row = db.rows("SELECT count(*), coalesce(sum(amount - released), 0) FROM entries "
                  "WHERE user_id = ? AND status = 'waiting'", (user_id,))[0]
    return int(row[0]), int(row[1])


# -- `storefront verify`: the whole books, in pages, as the driver returns them -------------
class BookReader:
    """Plain DBAPI rows inside a read transaction, with no type processing (`verify` checks
    what is stored, and a million rows have nothing to map): one cursor, reused."""

    def __init__(self, session: Session) -> None:
        raw = session.connection().connection.dbapi_connection
        assert raw is not None
        self.cursor = raw.cursor()
        qmark = session.get_bind().dialect.paramstyle == "qmark"
        self.mark = "?" if qmark else "%s"

    def _all(self, sql: str, *params: object) -> list[Any]:
        self.cursor.execute(sql.replace("?", self.mark), params)
        return list(self.cursor.fetchall())

    def journal_page(self, after: int, limit: int) -> list[Any]:
        """(id, key, kind, at, actor, body, result, prev_hash, hash) after id `after`."""
        return self._page("id, key, kind, at, actor, body, result, prev_hash, hash", "journal",
                          "id", after, limit)

    def postings_of(self, lo: int, hi: int) -> list[Any]:
        """(txn_id, account, unit, amount, ref) of transactions `lo`…`hi`, in order."""
        return self._all("SELECT txn_id, account, unit, amount, ref FROM postings "
                         "WHERE txn_id >= ? AND txn_id <= ? ORDER BY txn_id, id", lo, hi)

    def head(self) -> tuple[Any, Any]:
        """(last_txn, last_hash), or (None, None) if the head row is gone."""
        found = self._all("SELECT last_txn, last_hash FROM head WHERE id = 1")
        return (found[0][0], found[0][1]) if found else (None, None)

    def pools(self) -> dict[str, tuple[int, int]]:
        """name → (balance, supply)."""
        return {name: (balance, supply) for name, balance, supply in
                self._all("SELECT name, balance, supply FROM pools")}

    def _page(self, columns: str, table: str, key: str, after: int, limit: int) -> list[Any]:
        return self._all(f"SELECT {columns} FROM {table} WHERE {key} > ? ORDER BY {key} "
                         "LIMIT ?", after, limit)

    def users_page(self, after: int, limit: int) -> list[Any]:
        """(id, handle, wallet, held, points, basis, exit_key) after id `after`."""
        return self._page("id, handle, wallet, held, points, basis, exit_key", "users", "id",
                          after, limit)

    def entries_page(self, after: int, limit: int) -> list[Any]:
        """(seq, amount, released, status) after seq `after`."""
        return self._page("seq, amount, released, status", "entries", "seq", after, limit)


# -- pending inputs and order lines (engine/pending.py, engine/verify.py) --------------------
def waiting_input(db: Driver, identity: str) -> tuple[Any, ...] | None:
    """(kind, fields, until as stored) of `identity`'s pending input, or None: one read by
    primary key, asked by every chat request."""
    found = db.rows("SELECT kind, fields, until FROM pending_inputs WHERE identity = ?",
                    (identity,))
    return found[0] if found else None


# Orders whose lines do not add up: grouped along both primary keys, only the bad come back.
_BAD_ORDERS = text(
    "SELECT o.ref, o.total, o.cash, count(l.line_no), coalesce(sum(l.total), 0), "
    "coalesce(sum(l.cash), 0) FROM orders o LEFT JOIN order_lines l ON l.order_no = o.no "
    "GROUP BY o.no, o.ref, o.total, o.cash "
    "HAVING count(l.line_no) < 1 OR count(l.line_no) > :most "
    "OR coalesce(sum(l.total), 0) <> o.total OR coalesce(sum(l.cash), 0) <> o.cash "
    "ORDER BY o.no LIMIT 100")


def orders_with_bad_lines(session: Session, most: int) -> list[tuple[Any, ...]]:
    """(ref, total, cash, lines, lines' total, lines' cash) of up to 100 orders whose lines
    are not 1..`most` or do not add up to the order: one aggregate query."""
    return [tuple(r) for r in session.execute(_BAD_ORDERS, {"most": most})]

