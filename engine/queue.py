"""The cashback queue (SPEC §3): pool contribution, entries, acceleration, static release."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import cast

from sqlalchemy import Table, select

from storage import bulk, faults
from storage.models import Entry, Outbox, User

from . import journal
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
    transaction keyed by the entry, so no entry can ever be paid twice.

    Core statements in bulk (a release may pay a million entries): one read of the page,
    then a handful of multi-row writes, whatever the page size."""
    pool = book.pool("queue")
    e = Entry.__table__
    rows = book.s.execute(
        select(e.c.seq, e.c.user_id, e.c.amount, e.c.released)
        .where(e.c.status == "waiting", e.c.seq > after_seq, e.c.matures_at <= at)
        .order_by(e.c.seq).limit(limit).with_for_update()
    ).all()
    payable = []
    balance = pool.balance
    blocked = False
    for row in rows:
        owed = row.amount - row.released
        if owed > balance:
            blocked = True
            break
        balance -= owed
        payable.append((row.seq, row.user_id, owed, row.amount))
    if payable:
        _pay_page(book, payable, at)
        pool.balance = balance
    paid = [(seq, user_id, owed) for seq, user_id, owed, _amount in payable]
    last = payable[-1][0] if payable else after_seq
    return ReleasePage(paid, last, blocked=blocked, exhausted=not blocked and len(rows) < limit)


def _pay_page(book: Book, payable: list[tuple[int, int, int, int]], at: datetime) -> None:
    u = cast(Table, User.__table__)
    owners = {r.id: r for r in book.s.execute(
        select(u.c.id, u.c.handle, u.c.lang).where(u.c.id.in_({p[1] for p in payable})))}
    txns, notes = [], []
    credit: dict[int, int] = {}
    for seq, user_id, owed, amount in payable:
        owner = owners[user_id]
        p = journal.Postings()
        p.fen(journal.QUEUE_POOL, journal.wallet(user_id), owed, f"entry:{seq}")
        key = f"release:entry:{seq}"
        txns.append(journal.Txn(key=key, kind="release", at=at, postings=p,
                                body={"entry": seq, "user": owner.handle},
                                result={"entry": seq, "paid": owed}))
        notes.append({"key": key, "user_id": user_id, "kind": "release_paid",
                      "params": journal.canonical({"entry": seq, "amount": owed,
                                                   "total": amount}),
                      "lang": owner.lang or "zh", "status": "pending", "attempts": 0,
                      "next_at": at, "created_at": at})
        credit[user_id] = credit.get(user_id, 0) + owed
        faults.point("release.entry_paid")  # a crash mid-page rolls the whole page back
    bulk.executemany(book.s, "UPDATE entries SET released = amount, status = 'released', "
                     "released_at = {} WHERE seq = {}", cast(Table, Entry.__table__),
                     ("released_at", "seq"), [(at, seq) for seq, *_rest in payable])
    bulk.executemany(book.s, "UPDATE users SET wallet = wallet + {} WHERE id = {}", u,
                     ("wallet", "id"), [(amount, uid) for uid, amount in credit.items()])
    for uid in credit:  # rows this session may hold in its identity map are now stale
        if uid in book._users:
            book.s.expire(book._users[uid])
    journal.record_many(book.s, book.head, txns)
    bulk.executemany(book.s, 'INSERT INTO outbox ("key", user_id, kind, params, lang, status, '
                     "attempts, next_at, created_at) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {})",
                     cast(Table, Outbox.__table__), _OUTBOX_COLUMNS,
                     [[n[c] for c in _OUTBOX_COLUMNS] for n in notes])


_OUTBOX_COLUMNS = ("key", "user_id", "kind", "params", "lang", "status", "attempts", "next_at",
                   "created_at")
