"""The cashback queue (SPEC §3): pool contribution, entries, acceleration, static release."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from storage import faults, queries
from storage.rows import EntryRow, UserRow

from . import journal, ledger
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

    Core statements in bulk (a release may pay a million entries): one read of the page,
    then a handful of multi-row writes, whatever the page size."""
    pool = book.pool("queue")
    book.flush()
    rows = queries.matured_entries(book.rows, after_seq, at, limit)
    payable = []
    balance = pool.balance
    blocked = False
    for seq, user_id, amount, released in rows:
        owed = amount - released
        if owed > balance:
            blocked = True
            break
        balance -= owed
        payable.append((seq, user_id, owed, amount))
    if payable:
        _pay_page(book, payable, at)
        pool.balance = balance
    paid = [(seq, user_id, owed) for seq, user_id, owed, _amount in payable]
    last = payable[-1][0] if payable else after_seq
    return ReleasePage(paid, last, blocked=blocked, exhausted=not blocked and len(rows) < limit)


def _pay_page(book: Book, payable: list[tuple[int, int, int, int]], at: datetime) -> None:
    owners = queries.names_and_langs(book.rows, sorted({p[1] for p in payable}))
    txns = []
    credit: dict[int, int] = {}
    for seq, user_id, owed, amount in payable:
        handle, lang = owners[user_id]
        p = journal.Postings()
        p.fen(journal.QUEUE_POOL, journal.wallet(user_id), owed, f"entry:{seq}")
        key = f"release:entry:{seq}"
        txns.append(journal.Txn(key=key, kind="release", at=at, postings=p,
                                body={"entry": seq, "user": handle},
                                result={"entry": seq, "paid": owed}))
        book.owe(key, user_id, "release_paid", {"entry": seq, "amount": owed, "total": amount},
                 lang, at)
        credit[user_id] = credit.get(user_id, 0) + owed
        faults.point("release.entry_paid")  # a crash mid-page rolls the whole page back
    paid_at = [(at, seq) for seq, *_rest in payable]
    queries.mark_released(book.rows, paid_at)
    direct = []
    for uid, amount in credit.items():
        if (owner := book.rows.peek(UserRow, uid)) is not None:
            owner.wallet += amount
        else:
            direct.append((amount, uid))
    queries.credit_wallets(book.rows, direct)
    book.record_many(txns)
