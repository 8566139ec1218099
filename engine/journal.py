"""The journal (SPEC §6): balanced postings, idempotency keys and a hash chain.

A transaction's hash covers its position, key, kind, time, actor, body, result and postings,
and the hash of the transaction before it. Changing, removing or reordering any row breaks
the chain at that row, which is how `verify` names it.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import JournalTxn

GENESIS = "0" * 64
FEN = "fen"
MICRO = "micro"

# Accounts. User accounts are "user:<id>:<what>"; the rest are fixed names.
QUEUE_POOL = "pool:queue"
POINTS_POOL = "pool:points"
REVENUE = "platform:revenue"
PAYMENTS_IN = "world:payments"
DEPOSITS_IN = "world:deposits"
PAYOUTS_OUT = "world:payouts"
REFUNDS_OUT = "world:refunds"
POINTS_ISSUED = "points:issued"


def wallet(user_id: int) -> str:
    return f"user:{user_id}:wallet"


def held(user_id: int) -> str:
    return f"user:{user_id}:held"


def holding(user_id: int) -> str:
    return f"user:{user_id}:points"


@dataclass(frozen=True, slots=True)
class Stored:
    """An account whose balance a row also keeps: `row.<column>` is `sign` × the account's
    balance (a user's wallet, held money and points, a pool's money, and the points supply,
    which is minus the balance of `points:issued`). engine/ledger.py names them."""

    name: str
    row: Any
    column: str
    sign: int = 1

    def add(self, delta: int) -> None:
        setattr(self.row, self.column, getattr(self.row, self.column) + self.sign * delta)


# An account is its name (accounts no row keeps: revenue, the outside world) or `Stored`.
Account = str | Stored


@dataclass
class Postings:
    """A transaction under construction: a list of (account, unit, amount, ref).

    The one money primitive: a movement appends its two postings *and* moves the stored
    balance of every `Stored` account it names, in the same call — nothing else in the
    engine changes a balance (a release's page, which pays thousands of wallets at once,
    does the same in bulk: engine/queue.py `_pay_page`). The transaction must balance per
    unit when it is recorded (`chain`)."""

    lines: list[tuple[str, str, int, str | None]] = field(default_factory=list)

    def move(self, unit: str, src: Account, dst: Account, amount: int,
             ref: str | None = None) -> None:
        """`amount` leaves `src` and arrives at `dst` (two postings that sum to zero)."""
        assert amount >= 0, amount
        if amount == 0:
            return
        if isinstance(src, Stored):
            src.add(-amount)
            src = src.name
        if isinstance(dst, Stored):
            dst.add(amount)
            dst = dst.name
        self.lines.append((src, unit, -amount, ref))
        self.lines.append((dst, unit, amount, ref))

    def fen(self, src: Account, dst: Account, amount: int, ref: str | None = None) -> None:
        self.move(FEN, src, dst, amount, ref)

    def micro(self, src: Account, dst: Account, amount: int, ref: str | None = None) -> None:
        self.move(MICRO, src, dst, amount, ref)


def check_balanced(lines: Iterable[tuple[str, str, int, str | None]]) -> dict[str, int]:
    """Sum per unit; every sum must be zero (double entry)."""
    sums: dict[str, int] = defaultdict(int)
    for _account, unit, amount, _ref in lines:
        sums[unit] += amount
    return {u: s for u, s in sums.items() if s != 0}


@lru_cache(maxsize=256)  # a release or a group commit stamps thousands of rows with one time
def iso(at: datetime) -> str:
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


# `json.dumps(…, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`, with its
# encoder made once instead of per call (journal rows are plain data: no circular checks).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              check_circular=False)


def _c_encoder() -> Callable[[Any], str] | None:
    """The C encoder `JSONEncoder.iterencode` would build for `_CANONICAL` on every call,
    built once; None where CPython's `_json` is missing."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    e = _CANONICAL
    encode = make(None, e.default, json.encoder.encode_basestring, e.indent,
                  e.key_separator, e.item_separator, e.sort_keys, e.skipkeys, e.allow_nan)
    return lambda body: "".join(encode(body, 0))


def _plain(body: Any) -> str:
    return _CANONICAL.encode(body)


_fast = _c_encoder()
_SAMPLE = [1, "键 \"q\"\n", None, True, {"b": [1, -2], "a": {"z": None, "é": "x"}}, 10**30]
# Canonical JSON text of `body` (what the journal stores and hashes): the C encoder built once
# when it gives exactly `_plain`'s text (checked here), else `_plain`.
canonical: Callable[[Any], str] = (
    _fast if _fast is not None and _fast(_SAMPLE) == _plain(_SAMPLE) and _fast("s") == _plain("s")
    else _plain)


def txn_hash(prev_hash: str, txn_id: int, key: str, kind: str, at: datetime, actor: str | None,
             body: str, result: str | None,
             lines: Sequence[tuple[str, str, int, str | None]]) -> str:
    # tuples encode as JSON arrays, exactly as lists do
    content = canonical([txn_id, key, kind, iso(at), actor, body, result, lines])
    return hashlib.sha256((prev_hash + content).encode()).hexdigest()


def find(session: Session, key: str) -> JournalTxn | None:
    return session.execute(select(JournalTxn).where(JournalTxn.key == key)).scalar_one_or_none()


class Head(Protocol):
    """The chain's tip, locked by the caller (storage.rows.HeadRow)."""

    last_txn: int
    last_hash: str


@dataclass
class Txn:
    """A journal transaction to append (see `chain`)."""

    key: str
    kind: str
    at: datetime
    postings: Postings | None = None
    body: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    actor: str | None = None


def chain(head: Head, txns: Sequence[Txn]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Link transactions onto the chain in order, moving `head` along: the journal rows
    (id, key, kind, at, actor, body, result, prev_hash, hash) and posting rows (txn_id,
    account, unit, amount, ref) to store."""
    journal_rows: list[tuple[Any, ...]] = []
    posting_rows: list[tuple[Any, ...]] = []
    for t in txns:
        lines = t.postings.lines if t.postings else []
        unbalanced = check_balanced(lines)
        if unbalanced:
            raise AssertionError(f"unbalanced journal transaction {t.key}: {unbalanced}")
        txn_id = head.last_txn + 1
        body_text = canonical(t.body or {})
        result_text = canonical(t.result) if t.result is not None else None
        digest = txn_hash(head.last_hash, txn_id, t.key, t.kind, t.at, t.actor, body_text,
                          result_text, lines)
        journal_rows.append((txn_id, t.key, t.kind, t.at, t.actor, body_text, result_text,
                             head.last_hash, digest))
        posting_rows.extend((txn_id, a, u, n, r) for a, u, n, r in lines)
        head.last_txn = txn_id
        head.last_hash = digest
    return journal_rows, posting_rows


_quoted = json.encoder.encode_basestring  # the string quoting `canonical` uses (C, if present)


def chain_releases(head: Head, at: datetime, stamp: Any,
                   paid: Sequence[tuple[int, int, int, str]]
                   ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """`chain` for a release page, without building its `Txn`s: for each (seq, user_id, owed,
    owner's handle), the transaction `chain` would link for

        Txn(key=f"release:entry:{seq}", kind="release", at=at,
            postings=<owed from QUEUE_POOL to wallet(user_id), ref f"entry:{seq}">,
            body={"entry": seq, "user": handle}, result={"entry": seq, "paid": owed})

    — the same rows, text and hash byte for byte (tests/test_release_chain.py holds them
    side by side), written as canonical JSON text directly: a release links a million of
    these, and building them as objects (postings, `Txn`s, dicts, four encoder calls each) was
    about a third of its time under cProfile. `stamp` is `at` as the journal stores it (bound
    once per page). Every transaction balances: its two postings are -owed and +owed (none
    when `owed` is 0, as `Postings.move` makes none)."""
    journal_rows: list[tuple[Any, ...]] = []
    posting_rows: list[tuple[Any, ...]] = []
    add_txn, add_postings = journal_rows.append, posting_rows.extend
    sha256 = hashlib.sha256
    when = _quoted(iso(at))
    txn_id, prev = head.last_txn, head.last_hash
    for seq, user_id, owed, handle in paid:
        txn_id += 1
        key = f"release:entry:{seq}"
        body = f'{{"entry":{seq},"user":{_quoted(handle)}}}'
        result = f'{{"entry":{seq},"paid":{owed}}}'
        if owed:
            assert owed > 0, (seq, owed)
            ref = f"entry:{seq}"
            account = f"user:{user_id}:wallet"
            lines = (f'[["{QUEUE_POOL}","{FEN}",{-owed},"{ref}"],'
                     f'["{account}","{FEN}",{owed},"{ref}"]]')
            add_postings(((txn_id, QUEUE_POOL, FEN, -owed, ref),
                          (txn_id, account, FEN, owed, ref)))
        else:
            lines = "[]"
        content = (f'[{txn_id},"{key}","release",{when},null,{_quoted(body)},'
                   f'{_quoted(result)},{lines}]')
        digest = sha256((prev + content).encode()).hexdigest()
        add_txn((txn_id, key, "release", stamp, None, body, result, prev, digest))
        prev = digest
    head.last_txn, head.last_hash = txn_id, prev
    return journal_rows, posting_rows

