"""`storefront verify`: the book-keeper (SPEC §6).

Walks the journal once, in chain order and in pages (constant memory in the journal's
length), and proves:
- the chain: positions 1…n without gaps, each `prev_hash` the hash before, each hash the
  hash of the row's own content and postings — so an altered, removed or reordered row is
  named by its position;
- every transaction balances per unit; no pool ever went below zero; the points price never
  fell; no entry was paid more than its amount;
- the state equals the postings: both pools, the supply, every wallet, hold and holding, and
  every entry's released amount.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from fractions import Fraction

from sqlalchemy import select

from storage.db import Database
from storage.models import Entry, Head, JournalTxn, Pool, Posting, User

from . import journal
from .points import exit_key

PAGE = 5000


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


def verify(db: Database) -> Report:
    report = Report()
    balances: dict[tuple[str, str], int] = defaultdict(int)
    entry_paid: dict[int, int] = defaultdict(int)
    j, p = JournalTxn.__table__, Posting.__table__
    prev_hash, expected_id = journal.GENESIS, 1
    last_price: Fraction | None = None
    with db.reading() as s:
        after = 0
        while True:
            rows = s.execute(select(j).where(j.c.id > after).order_by(j.c.id).limit(PAGE)).all()
            if not rows:
                break
            lo, hi = rows[0].id, rows[-1].id
            lines: dict[int, list[tuple[str, str, int, str | None]]] = defaultdict(list)
            for r in s.execute(select(p.c.txn_id, p.c.account, p.c.unit, p.c.amount, p.c.ref)
                               .where(p.c.txn_id >= lo, p.c.txn_id <= hi).order_by(p.c.id)):
                lines[r.txn_id].append((r.account, r.unit, r.amount, r.ref))
            for row in rows:
                report.txns += 1
                tx_lines = lines.get(row.id, [])
                where = f"transaction {row.id} ({row.key})"
                if row.id != expected_id:
                    report.fail(f"{where}: expected position {expected_id}: "
                                "a transaction was removed or reordered before it")
                if row.prev_hash != prev_hash:
                    report.fail(f"{where}: prev_hash does not match the transaction before it")
                digest = journal.txn_hash(row.prev_hash, row.id, row.key, row.kind, row.at,
                                          row.actor, row.body, row.result, tx_lines)
                if digest != row.hash:
                    report.fail(f"{where}: content does not match its hash (altered)")
                unbalanced = journal.check_balanced(tx_lines)
                if unbalanced:
                    report.fail(f"{where}: postings do not balance: {unbalanced}")
                for account, unit, amount, ref in tx_lines:
                    balances[(account, unit)] += amount
                    if ref and ref.startswith("entry:") and account.endswith(":wallet"):
                        entry_paid[int(ref[6:])] += amount
                for pool in (journal.QUEUE_POOL, journal.POINTS_POOL):
                    if balances[(pool, journal.FEN)] < 0:
                        report.fail(f"{where}: {pool} went below zero")
                supply = -balances[(journal.POINTS_ISSUED, journal.MICRO)]
                if supply > 0:
                    price = Fraction(balances[(journal.POINTS_POOL, journal.FEN)], supply)
                    if last_price is not None and price < last_price:
                        report.fail(f"{where}: the points price fell")
                    last_price = price
                prev_hash, expected_id = row.hash, row.id + 1
            after = hi
        _check_state(s, report, balances, entry_paid, prev_hash, expected_id - 1)
    return report


def _check_state(s, report: Report, balances: dict[tuple[str, str], int],  # type: ignore[no-untyped-def]
                 entry_paid: dict[int, int], last_hash: str, last_id: int) -> None:
    head = s.execute(select(Head).where(Head.id == 1)).scalar_one()
    if head.last_txn != last_id or head.last_hash != last_hash:
        report.fail(f"the journal's head says {head.last_txn}, the chain ends at {last_id}: "
                    "the newest transactions were removed or the head altered")
    pools = {row.name: row for row in s.execute(select(Pool)).scalars()}
    for name, account in (("queue", journal.QUEUE_POOL), ("points", journal.POINTS_POOL)):
        if pools[name].balance != balances[(account, journal.FEN)]:
            report.fail(f"{name} pool balance {pools[name].balance} differs from its postings "
                        f"{balances[(account, journal.FEN)]}")
        if pools[name].balance < 0:
            report.fail(f"{name} pool is below zero")
    supply = -balances[(journal.POINTS_ISSUED, journal.MICRO)]
    if pools["points"].supply != supply:
        report.fail(f"points supply {pools['points'].supply} differs from the points issued "
                    f"{supply}")
    total_points = 0
    after = 0
    while True:
        users = s.execute(select(User).where(User.id > after).order_by(User.id)
                          .limit(PAGE)).scalars().all()
        if not users:
            break
        for u in users:
            total_points += u.points
            for what, value, unit in (("wallet", u.wallet, journal.FEN),
                                      ("held", u.held, journal.FEN),
                                      ("points", u.points, journal.MICRO)):
                posted = balances.get((f"user:{u.id}:{what}", unit), 0)
                if value != posted:
                    report.fail(f"user {u.handle}: {what} {value} differs from postings {posted}")
                if value < 0:
                    report.fail(f"user {u.handle}: {what} is negative")
            if u.basis < 0:
                report.fail(f"user {u.handle}: basis is negative")
            if u.exit_key != exit_key(u.basis, u.points):
                report.fail(f"user {u.handle}: forced-exit index entry is stale")
        after = users[-1].id
    if total_points != pools["points"].supply:
        report.fail(f"points supply {pools['points'].supply} is not the sum of holdings "
                    f"{total_points}")
    after = 0
    while True:
        entries = s.execute(select(Entry).where(Entry.seq > after).order_by(Entry.seq)
                            .limit(PAGE)).scalars().all()
        if not entries:
            break
        for e in entries:
            if not 0 <= e.released <= e.amount:
                report.fail(f"entry {e.seq}: released {e.released} of {e.amount}")
            if e.released != entry_paid.get(e.seq, 0):
                report.fail(f"entry {e.seq}: released {e.released} differs from postings "
                            f"{entry_paid.get(e.seq, 0)}")
            if (e.status == "released") != (e.released == e.amount):
                report.fail(f"entry {e.seq}: status {e.status} with {e.released} of {e.amount}")
        after = entries[-1].seq
