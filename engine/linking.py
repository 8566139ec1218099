"""One person, one account: joining a Telegram and a WeChat identity (docs/wechat.md).

`/link` (Telegram) or 绑定 (WeChat) issues a one-time code for the asker's account; the same
person sends it from the other channel and `redeem` joins the two accounts into one, in one
database transaction: one journal transaction moves the older account's wallet, hold and
points to the newer one, and its identities, entries, orders, withdrawals, basis,
notifications and referrals are re-pointed. The merged account's referrer is the one fixed
at the earliest first contact, unless that would make a referral cycle (`merged_referrer`).
Two accounts that both hold money are never joined (`link_both_funded`): which balance
would win is not ours to guess.

The code itself is chosen by the caller (randomness stays at the edges); the engine only
stores, checks and spends it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Entry, Identity, LinkCode, Order, Outbox, User, Withdrawal

from . import journal, ledger, payouts, points
from .book import Book
from .errors import Refusal

CODE_TTL = timedelta(minutes=10)
CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read aloud, typed by hand
CODE_LENGTH = 8
_CODE = re.compile(rf"^[{CODE_ALPHABET}]{{{CODE_LENGTH}}}$")
_OPEN_ORDERS = ("awaiting_payment", "pending")


def normalise_code(text: object) -> str | None:
    """What the user typed (any case, spaces or dashes) → the stored code, or None."""
    if not isinstance(text, str):
        return None
    code = re.sub(r"[\s-]", "", text).upper()
    return code if _CODE.match(code) else None


def channel_of(identity: str) -> str:
    """`tg:123` → `tg`; the part before the first colon names the channel."""
    return identity.split(":", 1)[0]


def _identity(s: Session, identity: object) -> Identity:
    row = s.get(Identity, identity) if isinstance(identity, str) else None
    if row is None:
        raise Refusal("unknown_user", str(identity))
    return row


def _identities(s: Session, user_id: int) -> list[str]:
    return list(s.execute(select(Identity.identity).where(Identity.user_id == user_id)
                          .order_by(Identity.identity)).scalars())


def holds_money(s: Session, user: User) -> bool:
    """Anything of value an account could lose in a join: a balance, a hold, points, a queue
    entry still waiting, or an order that is paid for (or being paid) but not yet settled."""
    if user.wallet or user.held or user.points or user.basis:
        return True
    waiting = s.execute(select(exists().where(Entry.user_id == user.id,
                                              Entry.status == "waiting"))).scalar()
    if waiting:
        return True
    return bool(s.execute(select(exists().where(Order.user_id == user.id,
                                                Order.status.in_(_OPEN_ORDERS)))).scalar())


def _orm_user(book: Book, user_id: int) -> User:
    """A user as an ORM object, locked: a merge rewrites more than the money columns the
    book's plain rows carry, so the book lets go of its row first."""
    book.forget_user(user_id)
    user = book.s.get(User, user_id, with_for_update=True)
    assert user is not None, user_id
    return user


def issue_code(book: Book, *, identity: str, code: str, at: datetime) -> dict[str, Any]:
    """A fresh one-time code for the account behind `identity`, valid for 10 minutes.
    Earlier unused codes of that account stop working: only the newest one counts."""
    if normalise_code(code) != code:
        raise Refusal("invalid_event", "link codes are 8 characters of the code alphabet")
    owner = book.user_by_id(_identity(book.s, identity).user_id)
    book.s.execute(delete(LinkCode).where(LinkCode.user_id == owner.id))
    if book.s.get(LinkCode, code) is not None:  # another account's live code: astronomically rare
        raise Refusal("busy", "code collision, ask again")
    expires = at + CODE_TTL
    book.s.add(LinkCode(code=code, user_id=owner.id, expires_at=expires, used=False))
    return {"code": code, "user": owner.handle, "expires_at": expires}


def redeem(book: Book, *, code: object, identity: str, at: datetime) -> dict[str, Any]:
    """`identity` sends `code`: join its account with the account that asked for the code.

    Refusals, each changing nothing: `link_code_invalid` (unknown, used or expired),
    `already_linked` (the same account), `link_same_channel` (the join would give one account
    two identities on one channel: the code must come from the other app),
    `link_both_funded` (both accounts hold money)."""
    clean = normalise_code(code)
    row = book.s.get(LinkCode, clean) if clean else None
    if row is None or row.used or not at < row.expires_at:
        raise Refusal("link_code_invalid")
    sender = _identity(book.s, identity)
    if sender.user_id == row.user_id:
        raise Refusal("already_linked")
    a, b = (_orm_user(book, uid) for uid in sorted((sender.user_id, row.user_id)))
    ids_a, ids_b = _identities(book.s, a.id), _identities(book.s, b.id)
    if {channel_of(i) for i in ids_a} & {channel_of(i) for i in ids_b}:
        raise Refusal("link_same_channel")
    if holds_money(book.s, a) and holds_money(book.s, b):
        raise Refusal("link_both_funded")
    row.used = True
    return _merge(book, older=a, newer=b, identities=ids_a + ids_b, at=at)


def merged_referrer(s: Session, a: User, b: User) -> int | None:
    """The referrer of two accounts joined into one (SPEC §5: fixed at first contact, never
    changed, one level, no self-referral): the referrer of the account with the earliest
    first contact (ties to the lower id), or none if that account had none: the later
    account's referrer came after the person's first contact, and taking it would give the
    merged account a referrer it never had. Dropped too if it is either account itself, or
    if its own chain of referrers leads back to either of them (A invites X, A's other
    identity joins with X's code: X→A and A→X would pay acceleration both ways)."""
    first = min((a, b), key=lambda u: (u.created_at, u.id))
    start = first.referrer_id
    if start is None:
        return None
    # Walk up from the candidate: UNION (not UNION ALL) stops at a row seen before, so even
    # a cycle already in the data ends the walk.
    up = select(User.id, User.referrer_id).where(User.id == start).cte("up", recursive=True)
    up = up.union(select(User.id, User.referrer_id).join(up, User.id == up.c.referrer_id))
    loops = s.execute(select(exists().where(up.c.id.in_((a.id, b.id))))).scalar()
    return None if loops else start


def _merge(book: Book, *, older: User, newer: User, identities: Iterable[str],
           at: datetime) -> dict[str, Any]:
    """Fold `older` into `newer` and delete `older`.

    The newer row survives so the deleted id is never the largest one, and SQLite (which
    reuses the largest rowid) can never hand a dead account's journal accounts to someone
    new. The merged account keeps the earliest first contact, language and name, and the
    referrer fixed at that first contact (`merged_referrer`)."""
    s, n = book.s, book.head.last_txn + 1
    referrer = merged_referrer(s, older, newer)
    moved = {"wallet": older.wallet, "held": older.held, "points": older.points,
             "basis": older.basis}
    p = journal.Postings()
    ref = f"link:{n}"
    p.fen(ledger.wallet(older), ledger.wallet(newer), older.wallet, ref)
    p.fen(ledger.held(older), ledger.held(newer), older.held, ref)
    p.micro(ledger.holding(older), ledger.holding(newer), older.points, ref)
    newer.basis += older.basis
    older.basis = 0
    older.exit_key = None
    newer.exit_key = points.exit_key(newer.basis, newer.points)

    newer.referrer_id = referrer
    newer.created_at = min(older.created_at, newer.created_at)
    newer.lang = older.lang or newer.lang
    newer.display_name = older.display_name or newer.display_name
    invite = older.invite_code or newer.invite_code
    older.invite_code = None
    s.flush()
    newer.invite_code = invite

    for model, column in ((Identity, Identity.user_id), (Entry, Entry.user_id),
                          (Order, Order.user_id), (Withdrawal, Withdrawal.user_id),
                          (Outbox, Outbox.user_id)):
        s.execute(update(model).where(column == older.id).values(user_id=newer.id))
    payouts.merge_methods(s, older.id, newer.id)  # payout method and transfers (issue 17)
    s.execute(update(User).where(User.referrer_id == older.id, User.id != newer.id)
              .values(referrer_id=newer.id))
    s.execute(update(User).where(User.referrer_id == older.id).values(referrer_id=None))
    s.execute(delete(LinkCode).where(LinkCode.user_id.in_((older.id, newer.id))))
    s.flush()
    result = {"user": newer.handle, "merged": older.handle, "identities": sorted(identities),
              **moved}
    book.record(key=f"link:{n}", kind="link", at=at, postings=p,
                body={"from": older.handle, "into": newer.handle, **moved}, result=result)
    s.delete(older)
    s.flush()
    points.forced_exits(book, at, "link")
    return result


# -- the service API (one database transaction each, like engine.service) ------------------


def link_code(db: Database, *, identity: str, code: str, at: datetime) -> dict[str, Any]:
    return db.run(lambda s: issue_code(Book(s), identity=identity, code=code, at=at))


def link_accounts(db: Database, *, code: object, identity: str,
                  at: datetime) -> dict[str, Any]:
    return db.run(lambda s: redeem(Book(s), code=code, identity=identity, at=at))
