"""`storefront verify`: the book-keeper (SPEC §6).

Walks the journal once, in chain order and in pages (memory grows with the number of accounts
and paid entries, not with the journal's length), and proves:
- the chain: positions 1…n without gaps, each `prev_hash` the hash before, each hash the
  hash of the row's own content and postings — so an altered, removed or reordered row is
  named by its position;
- every transaction balances per unit; no pool ever went below zero; the points price never
  fell; no entry was paid more than its amount;
- the state equals the postings: both pools, the supply, every wallet, hold and holding, and
  every entry's released amount;
- every order's lines add up to it (SPEC §9): 1–50 lines, their totals the order's total,
  their cash the order's cash — one aggregate query that returns only the orders that do not.

It reads a million transactions in well under a minute (docs/perf.md): plain DBAPI rows
instead of ORM objects (there is nothing to map, only to check), balances kept per unit in flat
dicts, the price compared by cross-multiplication instead of `Fraction`.

On SQLite (`_sqlite_txns`) one statement per page hands over, per transaction, the very text
`engine.journal.txn_hash` hashes, made by SQLite's JSON functions, and its postings as JSON;
Python hashes the text, parses the postings and makes every check from them. SQLite's text is
only a shortcut: a transaction whose text does not hash to its stored hash is hashed again
from its rows with the engine's own encoding before it is reported (`_rehash`). Elsewhere
(`_rows_txns`, PostgreSQL) the postings of a page come in one query ordered by transaction,
walked alongside the journal rows, and the hash is computed with one JSON encoder made once —
the text `engine.journal.txn_hash` hashes, which is checked when this module is imported (on
any difference it uses that function).
"""

from __future__ import annotations

import gc
import hashlib
import json
import json.scanner
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from storage import queries
from storage.db import Database
from storage.queries import BookReader

from . import journal
from .points import exit_key

PAGE = 10_000

_ENCODE = journal.canonical  # one encoder made once (engine/journal.py)
Lines = Sequence[tuple[str, str, int, str | None]]


def _fast_hash(prev_hash: str, txn_id: int, key: str, kind: str, at_iso: str,
               actor: str | None, body: str, result: str | None, lines: Lines) -> str:
    content = _ENCODE([txn_id, key, kind, at_iso, actor, body, result, lines])
    return hashlib.sha256((prev_hash + content).encode()).hexdigest()


def _engine_hash(prev_hash: str, txn_id: int, key: str, kind: str, at_iso: str,
                 actor: str | None, body: str, result: str | None, lines: Lines) -> str:
    at = datetime.fromisoformat(at_iso).replace(tzinfo=UTC)
    return journal.txn_hash(prev_hash, txn_id, key, kind, at, actor, body, result, lines)


def _pick_hash() -> Callable[..., str]:
    """The shortcut only if it gives the engine's hash on a row that exercises every field."""
    sample: tuple[Any, ...] = (
        "ab" * 32, 7, "order:N7", "purchase", "2026-08-01T02:03:04.000005", "tg:1 \"é\"",
        '{"a":1,"b":"茶"}', None, [("pool:queue", "fen", -5, None), ("user:1:wallet", "fen", 5,
                                                                     "entry:3")])
    return _fast_hash if _fast_hash(*sample) == _engine_hash(*sample) else _engine_hash


txn_hash = _pick_hash()


def at_iso(value: object) -> str:
    """A stored `journal.at` as `engine.journal.iso` spells it: naive UTC, microseconds.

    SQLite hands back SQLAlchemy's stored text (`YYYY-MM-DD HH:MM:SS.ffffff`), PostgreSQL a
    naive UTC datetime. Text that is no time is returned as it is, so its hash cannot match."""
    if isinstance(value, str):
        if len(value) == 26 and value[10] == " ":
            return value[:10] + "T" + value[11:]
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        value = parsed
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(timespec="microseconds")
    return repr(value)


@dataclass
class Report:
    txns: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, message: str) -> None:
        if len(self.problems) < 100:
            self.problems.append(message)

    def lines(self) -> list[str]:
        if self.ok:
            return [f"journal OK: {self.txns} transactions, chain intact, books balance, "
                    "state equals postings, invariants hold"]
        return [f"journal FAILED after {self.txns} transactions:"] + [
            f"  - {p}" for p in self.problems]


@dataclass
class _Books:
    """What the journal says so far: balances per unit and account, and paid per entry."""

    units: dict[str, dict[str, int]] = field(
        default_factory=lambda: {journal.FEN: defaultdict(int), journal.MICRO: defaultdict(int)})
    entry_paid: dict[int, int] = field(default_factory=dict)

    def balance(self, account: str, unit: str) -> int:
        return self.units.get(unit, {}).get(account, 0)


def verify(db: Database) -> Report:
    report = Report()
    books = _Books()
    collecting = gc.isenabled()
    gc.disable()  # millions of short-lived rows and no cycles: the collector would only rescan
    try:
        with db.reading() as s:
            rows = BookReader(s)
            txns = _sqlite_txns(s) if s.get_bind().dialect.name == "sqlite" \
                else _rows_txns(rows)
            last_hash, last_id = _walk(txns, report, books)
            _check_state(rows, report, books, last_hash, last_id)
            _check_lines(s, report)
    finally:
        if collecting:
            gc.enable()
    return report


# One transaction as a reader hands it to `_walk`: its position, key, stored prev_hash and
# hash, whether its content hashes to that hash, and its postings.
Txn = tuple[int, str, str, str, bool, Lines]


def _walk(pages: Iterator[list[Txn]], report: Report, books: _Books) -> tuple[str, int]:
    """The chain and the per-transaction checks over the transactions in chain order, a page
    at a time from either reader (`_rows_txns`, `_sqlite_txns`). Returns the chain's last hash
    and position."""
    fen, micro = books.units[journal.FEN], books.units[journal.MICRO]
    entry_paid = books.entry_paid
    queue_pool, points_pool, issued = journal.QUEUE_POOL, journal.POINTS_POOL, \
        journal.POINTS_ISSUED
    prev_hash, expected_id = journal.GENESIS, 1
    last_pool, last_supply = 0, 0  # the last price seen, as pool / supply (supply 0: none yet)
    count = 0
    for page in pages:
        count += len(page)
        for txn_id, key, stored_prev, digest, intact, lines in page:
            if txn_id != expected_id:
                report.fail(f"transaction {txn_id} ({key}): expected position {expected_id}: "
                            "a transaction was removed or reordered before it")
            if stored_prev != prev_hash:
                report.fail(f"transaction {txn_id} ({key}): prev_hash does not match the "
                            "transaction before it")
            if not intact:
                report.fail(f"transaction {txn_id} ({key}): content does not match its "
                            "hash (altered)")
            fen_sum = micro_sum = 0
            odd = False
            for account, unit, amount, ref in lines:
                if unit == "fen":
                    fen[account] += amount
                    fen_sum += amount
                elif unit == "micro":
                    micro[account] += amount
                    micro_sum += amount
                else:
                    other = books.units.setdefault(unit, defaultdict(int))
                    other[account] += amount
                    odd = True
                if ref and ref[0] == "e" and ref.startswith("entry:") \
                        and account.endswith(":wallet"):
                    seq = int(ref[6:])
                    entry_paid[seq] = entry_paid.get(seq, 0) + amount
            if fen_sum or micro_sum or odd:
                _check_balanced(report, txn_id, key, lines)
            pool = fen.get(points_pool, 0)
            if fen.get(queue_pool, 0) < 0:
                report.fail(f"transaction {txn_id} ({key}): {queue_pool} went below zero")
            if pool < 0:
                report.fail(f"transaction {txn_id} ({key}): {points_pool} went below zero")
            supply = -micro.get(issued, 0)
            if supply > 0:
                # pool / supply < last_pool / last_supply, without fractions
                if last_supply and pool * last_supply < last_pool * supply:
                    report.fail(f"transaction {txn_id} ({key}): the points price fell")
                last_pool, last_supply = pool, supply
            prev_hash, expected_id = digest, txn_id + 1
    report.txns += count
    return prev_hash, expected_id - 1


def _rows_txns(rows: BookReader) -> Iterator[list[Txn]]:
    """The transactions from the rows themselves (PostgreSQL): each page's postings in one
    query ordered by transaction, walked alongside the journal rows, hashed in Python."""
    after = 0
    while True:
        txns = rows.journal_page(after, PAGE)
        if not txns:
            break
        lo, hi = txns[0][0], txns[-1][0]
        posts = rows.postings_of(lo, hi)
        k, n = 0, len(posts)
        out: list[Txn] = []
        for txn_id, key, kind, at, actor, body, result, stored_prev, digest in txns:
            while k < n and posts[k][0] < txn_id:
                k += 1  # postings of a removed transaction: that row is named by `_walk`
            start = k
            while k < n and posts[k][0] == txn_id:
                k += 1
            lines = [p[1:] for p in posts[start:k]]
            iso = at[:10] + "T" + at[11:] if type(at) is str and len(at) == 26 \
                and at[10] == " " else at_iso(at)
            intact = txn_hash(stored_prev, txn_id, key, kind, iso, actor, body, result,
                              lines) == digest
            out.append((txn_id, key, stored_prev, digest, intact, lines))
        yield out
        after = hi


def _check_balanced(report: Report, txn_id: int, key: str, lines: Lines) -> None:
    unbalanced = journal.check_balanced(lines)
    if unbalanced:
        report.fail(f"transaction {txn_id} ({key}): postings do not balance: {unbalanced}")


# SQLite: one statement per page, the JSON made by SQLite's own functions (compact,
# non-ASCII as it is, the same escapes as Python's encoder). For each transaction: the text to
# hash but for its postings — prev_hash, then the canonical JSON of [id, key, kind, at, actor,
# body, result, — NULL when `at` is not stored in the engine's spelling; and its postings as
# the JSON of [[account, unit, amount, ref], …] in the order of the index on (txn_id, id): the
# rest of the text to hash, and, parsed, the postings the checks add up. The text is only ever
# a shortcut: a transaction whose text is NULL or does not hash to its stored hash is hashed
# again in Python (`_rehash`: the engine's own encoding of the rows as stored, the postings
# ordered by id) before it is reported as altered.
_PAGE_SQL = (
    "SELECT id, key, hash, prev_hash, "
    "CASE WHEN typeof(at) = 'text' AND length(at) = 26 AND substr(at, 11, 1) = ' ' "
    "THEN prev_hash || rtrim(json_array(id, key, kind, substr(at, 1, 10) || 'T' || "
    "substr(at, 12), actor, body, result), ']') || ',' END, "
    "(SELECT json_group_array(json_array(account, unit, amount, ref)) FROM postings "
    "WHERE txn_id = journal.id) "
    "FROM journal WHERE id > ? ORDER BY id LIMIT ?")


def _json_parser() -> Callable[[str], Any]:
    """JSON text to Python values: the C scanner `json.loads` runs, without its wrapping."""
    make = getattr(json.scanner, "c_make_scanner", None)
    if make is None:
        return json.loads
    scan = make(json.JSONDecoder())
    return lambda text: scan(text, 0)[0]


_parse = _json_parser()


def _sqlite_txns(session: Session) -> Iterator[list[Txn]]:
    """The transactions with the text to hash made by SQLite (`_PAGE_SQL`): Python hashes it
    and parses the postings (the values as SQLite's JSON spells them: an amount that is not
    an integer was never hashed by the engine, so its transaction is reported altered)."""
    cursor = session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    sha256, parse = hashlib.sha256, _parse
    after = 0
    while True:
        cursor.execute(_PAGE_SQL, (after, PAGE))
        page = cursor.fetchall()
        if not page:
            break
        yield [(txn_id, key, stored_prev, digest,
                (head is not None
                 and sha256((head + text + "]").encode()).hexdigest() == digest)
                or _rehash(cursor, txn_id) == digest, parse(text))
               for txn_id, key, digest, stored_prev, head, text in page]
        after = page[-1][0]


def _lines_of(cursor: Any, txn_id: int) -> list[tuple[str, str, int, str | None]]:
    cursor.execute("SELECT account, unit, amount, ref FROM postings WHERE txn_id = ? "
                   "ORDER BY id", (txn_id,))
    return list(cursor.fetchall())


def _rehash(cursor: Any, txn_id: int) -> str:
    """The engine's hash of stored transaction `txn_id`, encoded in Python (`_rows_txns`)."""
    cursor.execute("SELECT key, kind, at, actor, body, result, prev_hash FROM journal "
                   "WHERE id = ?", (txn_id,))
    key, kind, at, actor, body, result, stored_prev = cursor.fetchone()
    return txn_hash(stored_prev, txn_id, key, kind, at_iso(at), actor, body, result,
                    _lines_of(cursor, txn_id))


MAX_LINES = 50
def _check_lines(session: Session, report: Report) -> None:
    """SPEC §9: each order holds 1–50 lines whose totals and cash add up to the order's."""
    for ref, total, cash, count, lines_total, lines_cash in queries.orders_with_bad_lines(
            session, MAX_LINES):
        if not 1 <= count <= MAX_LINES:
            report.fail(f"order {ref}: {count} lines (1–{MAX_LINES})")
        if lines_total != total:
            report.fail(f"order {ref}: its lines total {lines_total}, the order {total}")
        if lines_cash != cash:
            report.fail(f"order {ref}: its lines' cash is {lines_cash}, the order's {cash}")


def _check_state(rows: BookReader, report: Report, books: _Books, last_hash: str,
                 last_id: int) -> None:
    head_txn, head_hash = rows.head()
    if head_txn != last_id or head_hash != last_hash:
        report.fail(f"the journal's head says {head_txn}, the chain ends at {last_id}: "
                    "the newest transactions were removed or the head altered")
    pools = rows.pools()
    for name, account in (("queue", journal.QUEUE_POOL), ("points", journal.POINTS_POOL)):
        posted = books.balance(account, journal.FEN)
        if pools[name][0] != posted:
            report.fail(f"{name} pool balance {pools[name][0]} differs from its postings "
                        f"{posted}")
        if pools[name][0] < 0:
            report.fail(f"{name} pool is below zero")
    supply = -books.balance(journal.POINTS_ISSUED, journal.MICRO)
    if pools["points"][1] != supply:
        report.fail(f"points supply {pools['points'][1]} differs from the points issued "
                    f"{supply}")
    fen, micro = books.units[journal.FEN], books.units[journal.MICRO]
    total_points = 0
    after = 0
    while True:
        users = rows.users_page(after, PAGE)
        if not users:
            break
        for uid, handle, wallet, held, points, basis, key in users:
            total_points += points
            for what, value, posted in (
                    ("wallet", wallet, fen.get(f"user:{uid}:wallet", 0)),
                    ("held", held, fen.get(f"user:{uid}:held", 0)),
                    ("points", points, micro.get(f"user:{uid}:points", 0))):
                if value != posted:
                    report.fail(f"user {handle}: {what} {value} differs from postings {posted}")
                if value < 0:
                    report.fail(f"user {handle}: {what} is negative")
            if basis < 0:
                report.fail(f"user {handle}: basis is negative")
            if (bytes(key) if key is not None else None) != exit_key(basis, points):
                report.fail(f"user {handle}: forced-exit index entry is stale")
        after = users[-1][0]
    if total_points != pools["points"][1]:
        report.fail(f"points supply {pools['points'][1]} is not the sum of holdings "
                    f"{total_points}")
    paid = books.entry_paid
    after = 0
    while True:
        entries = rows.entries_page(after, PAGE)
        if not entries:
            break
        for seq, amount, released, status in entries:
            if not 0 <= released <= amount:
                report.fail(f"entry {seq}: released {released} of {amount}")
            if released != paid.get(seq, 0):
                report.fail(f"entry {seq}: released {released} differs from postings "
                            f"{paid.get(seq, 0)}")
            if (status == "released") != (released == amount):
                report.fail(f"entry {seq}: status {status} with {released} of {amount}")
        after = entries[-1][0]
