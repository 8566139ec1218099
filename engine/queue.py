"""The cashback queue (SPEC §3): pool contribution, entries, acceleration, static release."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from sqlalchemy import select

from storage.models import Entry, User

from . import faults, journal
from .book import Book
from .money import into_pool, out_of_pool


def contribute(book: Book, cash: int, margin: Fraction, pool_share: Fraction,
               p: journal.Postings, ref: str) -> int:
    """`ceil(A × margin × pool_share)` into the queue pool."""
    c = into_pool(cash * margin * pool_share)
    book.pool("queue").balance += c
    p.fen(journal.REVENUE, journal.QUEUE_POOL, c, ref)
    return c


def add_entry(book: Book, user: User, order_no: int, amount: int, matures_at: datetime,
              at: datetime) -> Entry:
    """A new entry takes the next `seq`: the queue's order is the order of recording."""
    book.head.last_entry_seq += 1
    entry = Entry(seq=book.head.last_entry_seq, user_id=user.id, order_no=order_no,
                  amount=amount, released=0, status="waiting", matures_at=matures_at,
                  created_at=at)
    book.s.add(entry)
    return entry


def accelerate(book: Book, referrer: User, cash: int, accel_rate: Fraction,
               p: journal.Postings) -> list[tuple[int, int]]:
    """`floor(A × accel_rate)`, capped by the pool, paid to the referrer's waiting entries in
    `seq` order, each up to what it lacks. Lock periods do not matter here.
    Returns [(seq, paid)]."""
    pool = book.pool("queue")
    budget = min(out_of_pool(cash * accel_rate), pool.balance)
    paid: list[tuple[int, int]] = []
    if budget <= 0:
        return paid
    book.s.flush()
    entries = book.s.execute(
        select(Entry).where(Entry.user_id == referrer.id, Entry.status == "waiting")
        .order_by(Entry.seq).with_for_update()
    ).scalars()
    for entry in entries:
        if budget == 0:
            break
        pay = min(budget, entry.amount - entry.released)
        _pay(book, entry, referrer, pay, p)
        budget -= pay
        paid.append((entry.seq, pay))
    return paid


def _pay(book: Book, entry: Entry, owner: User, amount: int, p: journal.Postings) -> None:
    assert 0 < amount <= entry.amount - entry.released
    entry.released += amount
    if entry.released == entry.amount:
        entry.status = "released"
    book.pool("queue").balance -= amount
    owner.wallet += amount
    p.fen(journal.QUEUE_POOL, journal.wallet(owner.id), amount, f"entry:{entry.seq}")


@dataclass
class ReleasePage:
    paid: list[tuple[int, int, int]]  # (seq, user_id, amount)
    last_seq: int
    blocked: bool  # stopped at an entry the pool could not pay in full
    exhausted: bool  # no more matured waiting entries after last_seq


def release_page(book: Book, at: datetime, after_seq: int, limit: int) -> ReleasePage:
    """Pay up to `limit` matured waiting entries after `after_seq`, in `seq` order, each in
    full; stop at the first the pool cannot pay (strict FIFO). Each payment is its own journal
    transaction keyed by the entry, so no entry can ever be paid twice."""
    pool = book.pool("queue")
    rows = book.s.execute(
        select(Entry).where(Entry.status == "waiting", Entry.seq > after_seq,
                            Entry.matures_at <= at)
        .order_by(Entry.seq).limit(limit).with_for_update()
    ).scalars().all()
    paid: list[tuple[int, int, int]] = []
    last = after_seq
    for entry in rows:
        owed = entry.amount - entry.released
        if owed > pool.balance:
            return ReleasePage(paid, last, blocked=True, exhausted=False)
        owner = book.user_by_id(entry.user_id)
        p = journal.Postings()
        _pay(book, entry, owner, owed, p)
        entry.released_at = at
        key = f"release:entry:{entry.seq}"
        book.record(key=key, kind="release", at=at, postings=p,
                    body={"entry": entry.seq, "user": owner.handle},
                    result={"entry": entry.seq, "paid": owed})
        book.notify(owner, "release_paid", key, at, entry=entry.seq, amount=owed,
                    total=entry.amount)
        paid.append((entry.seq, owner.id, owed))
        last = entry.seq
        faults.point("release.entry_paid")  # a crash here rolls the whole page back
    return ReleasePage(paid, last, blocked=False, exhausted=len(rows) < limit)
