"""The cashback queue (SPEC §3): pool contribution, entries, acceleration, static release."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from storage import faults, queries
from storage.rows import EntryRow, UserRow

from . import journal, ledger, outbox
from .book import Book
from .money import into_pool, out_of_pool


def contribute(book: Book, cash: int, margin: Fraction, pool_share: Fraction,
               p: journal.Postings, ref: str) -> int:
    """`ceil(A × margin × pool_share)` into the queue pool."""
    c = into_pool(cash * margin * pool_share)
    p.fen(journal.REVENUE, ledger.queue_pool(book), c, ref)
    return c


def add_entry(book: Book, user: UserRow, order_no: int, amount: int, matures_at: datetime,
              at: datetime) -> EntryRow:
    """A new entry takes the next `seq`: the queue's order is the order of recording."""
    book.head.last_entry_seq += 1
    return book.rows.add(EntryRow(seq=book.head.last_entry_seq, user_id=user.id,
                                  order_no=order_no, amount=amount, released=0,
                                  status="waiting", matures_at=matures_at, created_at=at))


def waiting_entries(book: Book, user: UserRow) -> list[EntryRow]:
    """A user's waiting entries in `seq` order, locked — with those recorded or paid in this
    transaction as they are in memory."""
    found = {e.seq: e for e in queries.waiting_entries(book.rows, user.id)}
    found.update((e.seq, e) for e in book.rows.known(EntryRow) if e.user_id == user.id)
    return [found[seq] for seq in sorted(found) if found[seq].status == "waiting"]


@dataclass
class Acceleration:
    """What one acceleration did: `paid` [(seq, fen)] to the referrer's entries, `due` the
    full `floor(A × accel_rate)` and `pool` what the queue pool held before it, so a payment
    the pool capped can be explained to the referrer (docs/reports.md)."""
    paid: list[tuple[int, int]]
    due: int
    pool: int
    lacking: int  # what the referrer's waiting entries still lacked together

    @property
    def total(self) -> int:
        return sum(fen for _seq, fen in self.paid)

    @property
    def capped_by_pool(self) -> bool:
        """Less than due was paid because the pool held less (not because the entries
        needed less)."""
        return self.pool < self.due and self.pool < self.lacking


def accelerate(book: Book, referrer: UserRow, cash: int, accel_rate: Fraction,
               p: journal.Postings, at: datetime) -> Acceleration:
    """`floor(A × accel_rate)`, capped by the pool, paid to the referrer's waiting entries in
    `seq` order, each up to what it lacks. Lock periods do not matter here. An entry this
    completes is `released` at `at`, like one a static release pays."""
    pool = book.pool("queue")
    due = out_of_pool(cash * accel_rate)
    entries = waiting_entries(book, referrer)
    done = Acceleration(paid=[], due=due, pool=pool.balance,
                        lacking=sum(e.amount - e.released for e in entries))
    budget = min(due, pool.balance)
    if budget <= 0:
        return done
    for entry in entries:
        if budget == 0:
            break
        pay = min(budget, entry.amount - entry.released)
        _pay(book, entry, referrer, pay, p, at)
        budget -= pay
        done.paid.append((entry.seq, pay))
    return done


def _pay(book: Book, entry: EntryRow, owner: UserRow, amount: int, p: journal.Postings,
         at: datetime) -> None:
    assert 0 < amount <= entry.amount - entry.released
    entry.released += amount
    if entry.released == entry.amount:
        entry.status = "released"
        entry.released_at = at
    p.fen(ledger.queue_pool(book), ledger.wallet(owner), amount, f"entry:{entry.seq}")


# Entries a release pays per transaction. Larger pages share more of their index leaves (a
# page pays ~6,000 different users' wallets at 10,000 entries, ~4,000 at 5,000): measured
# 23,500/s at 5,000, 25,100/s at 10,000 and 26,700/s at 20,000 on the 100k-entry shop, with
# peaks of 93, 106 and 132 MB. A page holds SQLite's write lock while it is written (~0.4 s
# at 10,000, so a purchase meanwhile waits that long) and is what a crash makes redo.
RELEASE_PAGE = 10_000


@dataclass
class ReleasePage:
    paid: list[tuple[int, int, int]]  # (seq, user_id, amount)
    last_seq: int
    blocked: bool  # stopped at an entry the pool could not pay in full
    exhausted: bool  # no more matured waiting entries after last_seq


def release_page(book: Book, at: datetime, after_seq: int, limit: int) -> ReleasePage:
    """Pay up to `limit` matured waiting entries after `after_seq`, in `seq` order, each in
    full; stop at the first the pool cannot pay (strict FIFO). Each payment is its own journal
    transaction keyed by the entry, so no entry can ever be paid twice.

    Core statements in bulk (a release may pay a million entries): one read of the page (the
    entries with their owners' handles and languages), then one multi-row write per table,
    whatever the page size."""
    pool = book.pool("queue")
    book.flush()
    rows = queries.matured_entries(book.rows, after_seq, at, limit)
    balance = pool.balance
    blocked = False
    paid: list[tuple[int, int, int]] = []
    for n, (_seq, _user_id, amount, released, _handle, _lang) in enumerate(rows):
        owed = amount - released
        if owed > balance:
            blocked = True
            rows = rows[:n]
            break
        balance -= owed
    if rows:
        paid = _pay_page(book, rows, at)
        pool.balance = balance
    last = rows[-1][0] if rows else after_seq
    return ReleasePage(paid, last, blocked=blocked,
                       exhausted=not blocked and len(rows) < limit)


def _pay_page(book: Book, payable: list[tuple[int, int, int, int, str, str | None]],
              at: datetime) -> list[tuple[int, int, int]]:
    """Pay each of `payable` (seq, user_id, amount, released, handle, lang) what it still
    lacks: the page's journal, postings, owed messages, entries and wallets, each in one
    multi-row statement. Returns (seq, user_id, owed) of each."""
    journal_at, outbox_at = queries.stamps(book.rows, at)
    entries: list[tuple[int, int, int, str]] = []
    messages: list[tuple[object, ...]] = []
    credit: dict[int, int] = {}
    fault = faults.point
    for seq, user_id, amount, released, handle, lang in payable:
        owed = amount - released
        entries.append((seq, user_id, owed, handle))
        messages.append(outbox.release_paid(seq, user_id, owed, amount, lang, outbox_at))
        credit[user_id] = credit.get(user_id, 0) + owed
        fault("release.entry_paid")  # a crash mid-page rolls the whole page back
    txns, postings = journal.chain_releases(book.head, at, journal_at, entries)
    queries.mark_released(book.rows, at, [p[0] for p in payable])
    direct = []
    for uid, amount in credit.items():
        if (owner := book.rows.peek(UserRow, uid)) is not None:
            owner.wallet += amount
        else:
            direct.append((amount, uid))
    queries.credit_wallets(book.rows, direct)
    queries.append_bound(book.rows, txns, postings, messages)
    return [(seq, user_id, owed) for seq, user_id, owed, _handle in entries]
