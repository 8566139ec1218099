"""Where withdrawals are paid, and the limits on them (issue 17; docs/wechat.md, "Payouts").

- A user's **payout method** is one of: `wechat` (their WeChat balance: the openid of their
  WeChat identity, nothing to type; paid by a WeChat Pay merchant transfer,
  engine/transfers.py), `alipay` (an account, phone or e-mail) or `bank` (a card number),
  the last two paid by an operator by hand. The stored account is never shown or logged:
  chat shows `masked` (`支付宝 张* ****5678`).
- A withdrawal request snapshots the method's kind and masked payee; approving a `wechat`
  one starts a transfer instead of paying it out at once.
- **Limits** (operator-set, `/payoutlimits`, settings rows `payout.*` in fen, 0 = none): a
  minimum per withdrawal, a daily maximum per user (requested that store-local day, not
  rejected or failed), and a daily total the shop pays out (approved that day). WeChat's
  own rule: a transfer of 2,000.00 yuan or more names the payee's real name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import (
    Identity,
    JournalTxn,
    PayoutMethod,
    Posting,
    Setting,
    Transfer,
    User,
    Withdrawal,
)

from . import journal
from .book import Book
from .errors import Refusal

KINDS = ("wechat", "alipay", "bank")
LIMIT_KEYS = ("payout.min", "payout.user_daily_max", "payout.shop_daily_max")
REAL_NAME_FROM = 200_000  # fen: WeChat Pay wants the payee's name from 2,000.00 yuan
WECHAT_MIN = 10  # fen: the smallest merchant transfer WeChat Pay makes (0.10 yuan)
# no control, markup, or characters that reorder or hide text (the name reaches WeChat Pay)
NAME = re.compile("^[^\x00-\x1f\x7f<>\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]{1,32}$")
ALIPAY = re.compile(r"^(1\d{10}|[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,64}\.[A-Za-z]{2,12})$")
BANK_CARD = re.compile(r"^\d{12,19}$")
COUNTED = ("pending", "approved", "transfer", "paid")  # a day's requests that count
PAID_OUT = ("approved", "transfer", "paid")  # what the shop pays out (or is paying)


@dataclass(frozen=True)
class Limits:
    minimum: int = 0  # fen; 0 = none
    user_daily_max: int = 0
    shop_daily_max: int = 0


def mask_name(name: str | None) -> str:
    """A real name as chat shows it: the first character, the rest starred (`张*`)."""
    if not name:
        return ""
    return name[0] + "*" * min(len(name) - 1, 3)


def mask_account(kind: str, account: str) -> str:
    if kind == "wechat":
        return ""
    if "@" in account:
        user, _, domain = account.partition("@")
        return f"{user[:1]}***@{domain}"
    return "****" + account[-4:]


def _masked(kind: str, name: str | None, account: str) -> str:
    return " ".join(p for p in (mask_name(name), mask_account(kind, account)) if p)[:64]


def _wechat_openid(s: Session, user_id: int) -> str | None:
    found = s.execute(select(Identity.identity).where(
        Identity.user_id == user_id, Identity.identity.like("wx:%"))
        .order_by(Identity.identity).limit(1)).scalar_one_or_none()
    return found[3:] if found else None


def set_method(book: Book, *, user: object, kind: object, at: datetime,
               name: object = None, account: object = None) -> dict[str, Any]:
    """Set (replace) where `user`'s withdrawals are paid; refusal `invalid_payout` (a bad
    kind, name or account) or `no_wechat_identity` (WeChat balance without a WeChat
    identity). Returns the method as chat may show it (`method_view`)."""
    owner = book.user(user)  # type: ignore[arg-type]
    clean_name = name.strip() if isinstance(name, str) else None
    if clean_name is not None and not NAME.match(clean_name):
        raise Refusal("invalid_payout", "name")
    if kind == "wechat":
        openid = _wechat_openid(book.s, owner.id)
        if openid is None:
            raise Refusal("no_wechat_identity")
        acct = openid
    elif kind in ("alipay", "bank"):
        acct = account.replace(" ", "") if isinstance(account, str) else ""
        pattern = ALIPAY if kind == "alipay" else BANK_CARD
        if not clean_name or not pattern.match(acct):
            raise Refusal("invalid_payout", str(kind))
    else:
        raise Refusal("invalid_payout", "kind")
    row = book.s.get(PayoutMethod, owner.id)
    if row is None:
        row = PayoutMethod(user_id=owner.id)
        book.s.add(row)
    row.kind, row.name, row.account = str(kind), clean_name or None, acct
    row.masked, row.updated_at = _masked(str(kind), clean_name, acct), at
    book.s.flush()
    return {"kind": row.kind, "masked": row.masked, "real_name": bool(row.name)}


def method_view(s: Session, user_id: int) -> dict[str, Any] | None:
    """A user's payout method without its account: kind, masked payee, real name given."""
    row = s.get(PayoutMethod, user_id)
    if row is None:
        return None
    return {"kind": row.kind, "masked": row.masked, "real_name": bool(row.name)}


def limits(book_or_raw: Book | dict[str, str]) -> Limits:
    raw = book_or_raw if isinstance(book_or_raw, dict) else book_or_raw.cfg.raw
    values = [int(raw.get(k, "0") or 0) for k in LIMIT_KEYS]
    return Limits(*values)


def set_limits(book: Book, values: dict[str, int]) -> Limits:
    """Operator-set limits in fen (0 = none); anything else is `invalid_amount`."""
    for key, fen in values.items():
        if key not in LIMIT_KEYS or not isinstance(fen, int) or isinstance(fen, bool) \
                or not 0 <= fen <= 10**13:
            raise Refusal("invalid_amount", key)
    for key, fen in values.items():
        row = book.s.get(Setting, key)
        if row is None:
            book.s.add(Setting(key=key, value=str(fen)))
        else:
            row.value = str(fen)
    book.catalog_changed()
    book.s.flush()
    raw = {**book.cfg.raw, **{k: str(v) for k, v in values.items()}}
    return limits(raw)


def local_day(book: Book, at: datetime) -> tuple[datetime, datetime]:
    """The store-local day `at` falls on, as [start, end)."""
    tz = book.cfg.timezone
    start = datetime.combine(at.astimezone(tz).date(), time(0), tzinfo=tz)
    return start, start + timedelta(days=1)


def checked_request(book: Book, owner_id: int, fen: int, at: datetime) -> tuple[str | None,
                                                                                 str | None]:
    """Check a withdrawal request against the limits and the payee's method; returns the
    method's kind and masked payee to keep on the withdrawal (None, None without a method:
    replay and old callers, paid by hand)."""
    lim = limits(book)
    if lim.minimum and fen < lim.minimum:
        raise Refusal("below_minimum", str(lim.minimum))
    if lim.user_daily_max:
        start, end = local_day(book, at)
        today = book.s.execute(select(func.coalesce(func.sum(Withdrawal.amount), 0)).where(
            Withdrawal.user_id == owner_id, Withdrawal.requested_at >= start,
            Withdrawal.requested_at < end, Withdrawal.status.in_(COUNTED))).scalar_one()
        if int(today) + fen > lim.user_daily_max:
            raise Refusal("daily_limit", str(lim.user_daily_max - int(today)))
    method = book.s.get(PayoutMethod, owner_id)
    if method is None:
        return None, None
    if method.kind == "wechat" and fen < WECHAT_MIN:
        raise Refusal("below_minimum", str(WECHAT_MIN))
    if method.kind == "wechat" and fen >= REAL_NAME_FROM and not method.name:
        raise Refusal("real_name_required")
    return method.kind, method.masked


def check_shop_total(book: Book, fen: int, at: datetime) -> None:
    """The shop's daily payout total (`payout.shop_daily_max`), checked when approving."""
    cap = limits(book).shop_daily_max
    if not cap:
        return
    start, end = local_day(book, at)
    today = book.s.execute(select(func.coalesce(func.sum(Withdrawal.amount), 0)).where(
        Withdrawal.decided_at >= start, Withdrawal.decided_at < end,
        Withdrawal.status.in_(PAID_OUT))).scalar_one()
    if int(today) + fen > cap:
        raise Refusal("shop_daily_limit", str(cap - int(today)))


def payee_of(s: Session, user_id: int) -> tuple[str, str | None] | None:
    """(openid, real name) for a WeChat-balance transfer, or None when the method is not
    WeChat (any more)."""
    row = s.get(PayoutMethod, user_id)
    if row is None or row.kind != "wechat":
        return None
    return row.account, row.name


def manual_details(db: Database, withdrawal_id: int) -> dict[str, Any] | None:
    """An operator's look at where to pay a manual withdrawal by hand (`/payoutinfo`): the
    full account, shown in that one reply and nowhere else (never logged)."""
    def read(s: Session) -> dict[str, Any] | None:
        w = s.get(Withdrawal, withdrawal_id)
        if w is None:
            return None
        row = s.get(PayoutMethod, w.user_id)
        manual = row is not None and row.kind != "wechat"
        return {"withdrawal": w.id, "kind": row.kind if row else None,
                "account": row.account if manual and row else None,
                "name": row.name if manual and row else None,
                "amount": w.amount, "status": w.status}

    return db.read(read)


def merge_methods(s: Session, older_id: int, newer_id: int) -> None:
    """Linking two accounts (engine/linking.py): the kept account keeps its own payout
    method, else takes the merged one's; the merged account's transfers follow it."""
    s.execute(update(Transfer).where(Transfer.user_id == older_id).values(user_id=newer_id))
    old = s.get(PayoutMethod, older_id)
    if old is None:
        return
    if s.get(PayoutMethod, newer_id) is None:
        s.add(PayoutMethod(user_id=newer_id, kind=old.kind, name=old.name, account=old.account,
                           masked=old.masked, updated_at=old.updated_at))
    s.delete(old)
    s.flush()


def method_of(db: Database, handle: str) -> dict[str, Any] | None:
    """`method_view` of the user with this handle (None: none set, or no such user)."""
    def read(s: Session) -> dict[str, Any] | None:
        uid = s.execute(select(User.id).where(User.handle == handle)).scalar_one_or_none()
        return None if uid is None else method_view(s, uid)

    return db.read(read)


def has_wechat(db: Database, handle: str) -> bool:
    """Whether the user has a WeChat identity (their balance can be a payout method)."""
    def read(s: Session) -> bool:
        uid = s.execute(select(User.id).where(User.handle == handle)).scalar_one_or_none()
        return uid is not None and _wechat_openid(s, uid) is not None

    return db.read(read)


def current_limits(db: Database) -> Limits:
    def read(s: Session) -> Limits:
        rows = s.execute(select(Setting.key, Setting.value)
                         .where(Setting.key.in_(LIMIT_KEYS))).all()
        return limits({k: v for k, v in rows})

    return db.read(read)


BOARD = ("pending", "transfer", "paid", "approved", "failed", "rejected")


def board(db: Database, *, per_status: int = 10) -> dict[str, Any]:
    """`/withdrawals`: per status its count and total, and the oldest few (pending and in
    transfer) or newest few (the rest) with user, amount, payee, requested and decided
    times, and a transfer's WeChat state."""
    def read(s: Session) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for status in BOARD:
            count, total = s.execute(select(func.count(), func.coalesce(
                func.sum(Withdrawal.amount), 0)).where(Withdrawal.status == status)).one()
            newest_first = status not in ("pending", "transfer")
            order = Withdrawal.id.desc() if newest_first else Withdrawal.id
            rows = s.execute(select(Withdrawal, User.handle, Transfer.state)
                             .join(User, User.id == Withdrawal.user_id)
                             .outerjoin(Transfer, Transfer.withdrawal_id == Withdrawal.id)
                             .where(Withdrawal.status == status)
                             .order_by(order).limit(per_status)).all()
            out[status] = {"count": int(count), "amount": int(total), "rows": [
                {"id": w.id, "user": h, "amount": w.amount, "method": w.method,
                 "payee": w.payee, "requested_at": w.requested_at,
                 "decided_at": w.decided_at, "state": state} for w, h, state in rows]}
        return out

    return db.read(read)


def report_figures(s: Session, at: datetime, tz: Any, days: int = 7) -> dict[str, Any]:
    """For `storefront report`: money held for withdrawals now (of which being paid by
    WeChat Pay), and what left for payouts (`world:payouts`) per store-local day over the
    last `days` days, newest first, days with none included."""
    # Every held fen belongs to a pending or transferring withdrawal (searched by status).
    held, in_transfer = 0, 0
    for status, total in s.execute(select(Withdrawal.status, func.sum(Withdrawal.amount))
                                   .where(Withdrawal.status.in_(("pending", "transfer")))
                                   .group_by(Withdrawal.status)).all():
        held += int(total)
        in_transfer += int(total) if status == "transfer" else 0
    today = at.astimezone(tz).date()
    start = datetime.combine(today - timedelta(days=days - 1), time(0), tzinfo=tz)
    per_day = {today - timedelta(days=n): 0 for n in range(days)}
    # the window's transactions by time, then one account's postings over that range
    first = s.execute(select(func.min(JournalTxn.id)).where(JournalTxn.at >= start)).scalar()
    rows = [] if first is None else s.execute(
        select(JournalTxn.at, Posting.amount).join(JournalTxn, JournalTxn.id == Posting.txn_id)
        .where(Posting.account == journal.PAYOUTS_OUT, Posting.txn_id >= first,
               Posting.unit == journal.FEN)).all()
    for when, amount in rows:
        day = when.astimezone(tz).date()
        if day in per_day:
            per_day[day] += int(amount)
    return {"held": held, "in_transfer": in_transfer,
            "paid_out": [(day.isoformat(), fen) for day, fen in
                         sorted(per_day.items(), reverse=True)]}


__all__ = ["BOARD", "KINDS", "LIMIT_KEYS", "REAL_NAME_FROM", "Limits", "board",
           "check_shop_total", "checked_request", "current_limits", "has_wechat", "limits",
           "manual_details", "mask_account", "mask_name", "merge_methods", "method_of",
           "method_view", "payee_of", "report_figures", "set_limits", "set_method"]
