"""Exports (`storefront export`, the operator's `/export`): journal, entries or users as CSV or
JSON Lines, streamed in constant memory.

Rows are read in keyset pages (`WHERE key > last ORDER BY key LIMIT n`) with Core selects, so
neither the database cursor nor an ORM identity map grows with the table, and written as they
come. The journal is append-only, so the export stops at the journal head read when it
started: a consistent prefix even while the shop keeps selling. Entries and users are read
page by page; each page is consistent, rows changed during a long export show their state
when their page was read (docs/reports.md).

Formats (docs/reports.md lists every column):
- money as exact decimal strings (`"100.00"`), points with 6 places, times ISO 8601 UTC;
- the journal row keeps its stored fields verbatim (`body`, `result` as their canonical JSON
  text) and its postings as `[account, unit, amount, ref]` with integer amounts in the unit,
  so an exported journal can be re-hashed and checked link by link away from the shop.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from storage.db import Database
from storage.models import Entry, Head, JournalTxn, Posting, User

from .errors import Refusal
from .money import format_fen, format_micro

WHATS = ("journal", "entries", "users")
FORMATS = ("csv", "jsonl")
PAGE = 1000

COLUMNS: dict[str, tuple[str, ...]] = {
    "journal": ("id", "key", "kind", "at", "actor", "body", "result", "prev_hash", "hash",
                "postings"),
    "entries": ("seq", "user", "order_no", "amount", "released", "remaining", "status",
                "matures_at", "created_at", "released_at"),
    "users": ("id", "handle", "referrer", "lang", "display_name", "created_at", "wallet",
              "held", "points", "basis", "blocked"),
}


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _journal(session: Session) -> Iterator[dict[str, Any]]:
    head = session.execute(select(Head.last_txn).where(Head.id == 1)).scalar_one()
    last = 0
    while last < head:
        txns = session.execute(
            select(JournalTxn.id, JournalTxn.key, JournalTxn.kind, JournalTxn.at,
                   JournalTxn.actor, JournalTxn.body, JournalTxn.result, JournalTxn.prev_hash,
                   JournalTxn.hash)
            .where(JournalTxn.id > last, JournalTxn.id <= head)
            .order_by(JournalTxn.id).limit(PAGE)).all()
        if not txns:
            return
        top = txns[-1].id
        postings: dict[int, list[list[Any]]] = {}
        for txn_id, account, unit, amount, ref in session.execute(
            select(Posting.txn_id, Posting.account, Posting.unit, Posting.amount, Posting.ref)
            .where(Posting.txn_id > last, Posting.txn_id <= top)
            .order_by(Posting.txn_id, Posting.id)
        ):
            postings.setdefault(txn_id, []).append([account, unit, amount, ref])
        for t in txns:
            yield {"id": t.id, "key": t.key, "kind": t.kind, "at": _time(t.at),
                   "actor": t.actor, "body": t.body, "result": t.result,
                   "prev_hash": t.prev_hash, "hash": t.hash,
                   "postings": postings.get(t.id, [])}
        last = top


def _entries(session: Session) -> Iterator[dict[str, Any]]:
    last = 0
    while True:
        rows = session.execute(
            select(Entry.seq, User.handle, Entry.order_no, Entry.amount, Entry.released,
                   Entry.status, Entry.matures_at, Entry.created_at, Entry.released_at)
            .join(User, User.id == Entry.user_id)
            .where(Entry.seq > last).order_by(Entry.seq).limit(PAGE)).all()
        if not rows:
            return
        for r in rows:
            yield {"seq": r.seq, "user": r.handle, "order_no": r.order_no,
                   "amount": format_fen(r.amount), "released": format_fen(r.released),
                   "remaining": format_fen(r.amount - r.released), "status": r.status,
                   "matures_at": _time(r.matures_at), "created_at": _time(r.created_at),
                   "released_at": _time(r.released_at)}
        last = rows[-1].seq


def _users(session: Session) -> Iterator[dict[str, Any]]:
    referrer = aliased(User)
    last = 0
    while True:
        rows = session.execute(
            select(User.id, User.handle, referrer.handle.label("referrer"), User.lang,
                   User.display_name, User.created_at, User.wallet, User.held, User.points,
                   User.basis, User.blocked)
            .outerjoin(referrer, referrer.id == User.referrer_id)
            .where(User.id > last).order_by(User.id).limit(PAGE)).all()
        if not rows:
            return
        for r in rows:
            yield {"id": r.id, "handle": r.handle, "referrer": r.referrer, "lang": r.lang,
                   "display_name": r.display_name, "created_at": _time(r.created_at),
                   "wallet": format_fen(r.wallet), "held": format_fen(r.held),
                   "points": format_micro(r.points), "basis": format_fen(r.basis),
                   "blocked": bool(r.blocked)}
        last = rows[-1].id


_SOURCES: dict[str, Callable[[Session], Iterator[dict[str, Any]]]] = {
    "journal": _journal, "entries": _entries, "users": _users,
}


def _csv_cell(value: Any) -> Any:
    """CSV has no null or list: None is an empty cell, lists and booleans are JSON."""
    if value is None:
        return ""
    if isinstance(value, bool | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def stream(db: Database, what: str, fmt: str, out: BinaryIO) -> int:
    """Write every `what` row to `out` as `fmt` (UTF-8); returns the number of rows.

    Refuses (`invalid_event`) an unknown `what` or `fmt` before writing anything."""
    if what not in WHATS:
        raise Refusal("invalid_event", f"export what: one of {', '.join(WHATS)}")
    if fmt not in FORMATS:
        raise Refusal("invalid_event", f"export format: one of {', '.join(FORMATS)}")
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    rows = 0
    try:
        with db.reading() as session:
            source = _SOURCES[what](session)
            if fmt == "csv":
                writer = csv.writer(text, lineterminator="\n")
                writer.writerow(COLUMNS[what])
                for row in source:
                    writer.writerow([_csv_cell(row[c]) for c in COLUMNS[what]])
                    rows += 1
            else:
                for row in source:
                    text.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
                    text.write("\n")
                    rows += 1
        text.flush()
    finally:
        text.detach()  # the caller owns `out`: leave it open
    return rows


__all__ = ["COLUMNS", "FORMATS", "WHATS", "stream"]
