"""The reads `storefront simulate` (bot/simulate/) makes of its simulated shop for the daily
CSV and charts, beyond `report.pool_report` and `report.queue_flows`: what is new in the
queue, who holds points, how many forced exits, and what would never be paid."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Entry, JournalTxn, Pool, Posting, User

from .journal import QUEUE_POOL


def queue_changes(db: Database, after_seq: int,
                  after_txn: int) -> tuple[list[tuple[int, int]], list[tuple[str, str, int]], int]:
    """In one read: the entries after `after_seq` as (seq, amount) in `seq` order, the queue
    pool's payments out after journal transaction `after_txn` as (txn kind, entry ref, fen,
    negative), and the journal's last transaction id (0 when empty)."""
    def read(s: Session) -> tuple[list[Any], list[Any], int]:
        new = s.execute(select(Entry.seq, Entry.amount).where(Entry.seq > after_seq)
                        .order_by(Entry.seq)).all()
        pays = s.execute(select(JournalTxn.kind, Posting.ref, Posting.amount)
                         .join(JournalTxn, JournalTxn.id == Posting.txn_id)
                         .where(Posting.account == QUEUE_POOL, Posting.amount < 0,
                                Posting.txn_id > after_txn)).all()
        top = s.execute(select(JournalTxn.id).order_by(JournalTxn.id.desc()).limit(1))
        return ([(seq, amount) for seq, amount in new],
                [(kind, ref, amount) for kind, ref, amount in pays], top.scalar() or 0)

    return db.read(read)


def point_holders(db: Database) -> list[tuple[str, int]]:
    """(handle, micro-points) of every user holding points, in join order."""
    return db.read(lambda s: [(h, p) for h, p in s.execute(
        select(User.handle, User.points).where(User.points > 0).order_by(User.id))])


def forced_exits(db: Database) -> int:
    return int(db.read(lambda s: s.execute(select(func.count()).select_from(JournalTxn).where(
        JournalTxn.kind == "forced_exit")).scalar_one()))


def never_paid(db: Database) -> tuple[int, int, int]:
    """If sales stopped now: walking the waiting entries in `seq` order, the pool pays each
    in full until it cannot (strict FIFO). Returns (entries it could still pay, entries left,
    fen left owed) — what would never be paid without new money."""
    def read(s: Session) -> tuple[int, int, int]:
        balance = s.execute(select(Pool.balance).where(Pool.name == "queue")).scalar_one()
        payable, left, owed = 0, 0, 0
        rows = s.execute(select(Entry.amount - Entry.released).where(Entry.status == "waiting")
                         .order_by(Entry.seq)).scalars()
        for remaining in rows:
            if left == 0 and remaining <= balance:
                balance -= remaining
                payable += 1
            else:
                left += 1
                owed += remaining
        return payable, left, owed

    return db.read(read)
