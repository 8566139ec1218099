"""What the chat shows a user and an operator (SPEC §1, §5): read side only.

The account (`/me`), the paged statement, orders, withdrawals, invitees and the operator's
user look-up, each one read-only snapshot (`Database.read`) returning plain dicts. The
write side — who is talking, invite codes, languages, broadcasts — is engine/users.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from storage import queries
from storage.db import Database
from storage.driver import Driver
from storage.models import Identity, JournalTxn, Order, Pool, Posting, Product, User, Withdrawal

from . import config, journal
from .config import Config
from .errors import Refusal
from .points import Price, price_of


def find_user(session: Session, query: str) -> User | None:
    """A user named by handle, chat identity, invite code or `#<id>`; None when unknown."""
    if not isinstance(query, str) or not 0 < len(query) <= 128:
        return None
    if query.startswith("#") and query[1:].isdigit() and len(query) < 19:
        return session.get(User, int(query[1:]))
    for stmt in (select(User).where(User.handle == query),
                 select(User).join(Identity, Identity.user_id == User.id)
                 .where(Identity.identity == query),
                 select(User).where(User.invite_code == query)):
        row = session.execute(stmt).scalar_one_or_none()
        if row is not None:
            return row
    return None




store_config = config.stored  # handlers and bots read the rules through this name


def current_price(session: Session, cfg: Config) -> Price:
    """The points price (fen per micro-point), read-only: `points.price_of`."""
    pool = session.get(Pool, "points")
    assert pool is not None
    return price_of(pool, cfg.initial_price)


def _ceil(f: Fraction) -> int:
    return -((-f.numerator) // f.denominator)


def exit_view(points: int, basis: int, price: Price, multiple: Fraction) -> dict[str, Any]:
    """How far the price must rise before a forced exit (SPEC §4): the exit price
    `multiple × basis ÷ holdings` in currency per point × 10^6 (rounded up: the price must
    reach it), its distance from today's price and the rise in per-mille of today's price."""
    if multiple == 0 or basis <= 0 or points <= 0:
        return {"exit_price_micro": None, "distance_micro": None, "rise_permille": None}
    exit_exact = multiple * basis * 10**10 / Fraction(points)  # fen/micro → units/point ×10^6
    current_exact = Fraction(price.num * 10**10, price.den)
    distance = exit_exact - current_exact
    rise = _ceil(distance * 1000 / current_exact) if current_exact else None
    return {"exit_price_micro": _ceil(exit_exact), "distance_micro": max(0, _ceil(distance)),
            "rise_permille": max(0, rise) if rise is not None else None}


# `/me` is the hottest read: the account view reads through the driver (storage/queries.py),
# on the session's own connection and transaction.
IDENTITIES = cast(Table, Identity.__table__)  # how `last_seen_at` is read back


@dataclass(frozen=True, slots=True)
class Holder:
    """A row of `queries.holder_by_handle`."""

    id: int
    handle: str
    lang: str | None
    referrer_id: int | None
    blocked: bool
    display_name: str | None
    wallet: int
    held: int
    points: int
    basis: int
    referrer_name: str | None
    referrer_handle: str | None


@dataclass(frozen=True, slots=True)
class _PointsPool:
    """A row of `queries.points_pool`, shaped for `price_of`."""

    balance: int
    supply: int
    zero_price_num: int | None
    zero_price_den: int | None


def account(db: Database, handle: str) -> dict[str, Any]:
    """Wallet, held, points with price and value, forced-exit distance, queue summary."""
    def work(session: Session) -> dict[str, Any]:
        driver = Driver(session)
        found = queries.holder_by_handle(driver, handle)
        if found is None:
            raise Refusal("unknown_user", handle)
        return account_view(driver, Holder(*found))

    return db.read(work)


@lru_cache(maxsize=4)
def _rules(stored: tuple[tuple[str, str], ...]) -> Config:
    """The rules of these stored settings: parsing them (a dozen exact decimals) was a tenth
    of a `/me`'s read, and they change only when an operator changes them."""
    return Config.from_values(dict(stored))


def account_view(driver: Driver, holder: Holder) -> dict[str, Any]:
    """`account`'s view of a `Holder` row, in the snapshot that read it (the settings too:
    only their parsing is kept, by their stored text)."""
    cfg = _rules(tuple(sorted(queries.settings(driver).items())))
    price = price_of(_PointsPool(*queries.points_pool(driver)), cfg.initial_price)
    waiting = queries.waiting_summary(driver, holder.id)
    referrer = (holder.referrer_name or holder.referrer_handle) if holder.referrer_id else None
    gross = price.value_of(holder.points)
    return {"handle": holder.handle, "wallet": holder.wallet, "held": holder.held,
            "points": holder.points, "basis": holder.basis, "currency": cfg.currency,
            "price_micro": price.display_micro(), "value": gross,
            "sell_fee": _ceil(gross * cfg.withdraw_fee) if gross else 0,
            "exit_multiple": cfg.exit_multiple,
            **exit_view(holder.points, holder.basis, price, cfg.exit_multiple),
            "entries_waiting": int(waiting[0]), "owed": int(waiting[1]), "referrer": referrer}


def statement(db: Database, handle: str, page: int = 0, per_page: int = 8) -> dict[str, Any]:
    """Every movement of the user's wallet, held money and points, newest first, from the
    journal's postings (SPEC §6), one item per journal transaction."""
    def work(session: Session) -> dict[str, Any]:
        uid = session.execute(select(User.id).where(User.handle == handle)).scalar_one()
        names = {journal.wallet(uid): "wallet", journal.held(uid): "held",
                 journal.holding(uid): "points"}
        txns = select(Posting.txn_id).where(Posting.account.in_(names)).distinct()
        total = session.execute(select(func.count()).select_from(txns.subquery())).scalar_one()
        pages = max(1, -(-total // per_page))
        p = min(max(page, 0), pages - 1)
        ids = session.execute(txns.order_by(Posting.txn_id.desc())
                              .limit(per_page).offset(p * per_page)).scalars().all()
        items: dict[int, dict[str, Any]] = {}
        if ids:
            for txn in session.execute(select(JournalTxn).where(JournalTxn.id.in_(ids))
                                       .order_by(JournalTxn.id.desc())).scalars():
                items[txn.id] = {"txn": txn.id, "kind": txn.kind, "at": txn.at,
                                 "wallet": 0, "held": 0, "points": 0}
            for post in session.execute(select(Posting).where(
                    Posting.txn_id.in_(ids), Posting.account.in_(names))).scalars():
                items[post.txn_id][names[post.account]] += post.amount
        return {"page": p, "pages": pages, "total": total,
                "items": [items[i] for i in sorted(items, reverse=True)]}

    return db.read(work)


def orders(db: Database, handle: str, limit: int = 10) -> list[dict[str, Any]]:
    """The user's latest orders: status, and when the return window closes (rebates start)."""
    def work(session: Session) -> list[dict[str, Any]]:
        uid = session.execute(select(User.id).where(User.handle == handle)).scalar_one()
        rows = session.execute(select(Order).where(Order.user_id == uid)
                               .order_by(Order.no.desc()).limit(limit)).scalars()
        return [{"order": o.ref, "sku": o.sku, "qty": o.qty, "total": o.total, "cash": o.cash,
                 "points_used": o.points_used, "currency": o.currency, "status": o.status,
                 "method": o.method, "created_at": o.created_at, "settles_at": o.settles_at,
                 "matures_at": o.matures_at, "entry": o.entry_seq, "minted": o.minted}
                for o in rows]

    return db.read(work)


def order_method(db: Database, ref: str) -> str | None:
    """How an order was paid (`wallet`, `telegram`, `wechat`, `offline`, `cash`)."""
    return db.read(lambda s: s.execute(select(Order.method).where(Order.ref == ref))
                   .scalar_one_or_none())


def withdrawals(db: Database, status: str = "pending", limit: int = 20) -> list[dict[str, Any]]:
    def work(session: Session) -> list[dict[str, Any]]:
        rows = session.execute(select(Withdrawal, User.handle)
                               .join(User, User.id == Withdrawal.user_id)
                               .where(Withdrawal.status == status)
                               .order_by(Withdrawal.id).limit(limit)).all()
        return [{"id": w.id, "user": h, "amount": w.amount, "requested_at": w.requested_at}
                for w, h in rows]

    return db.read(work)


def invitees(db: Database, user_id: int, limit: int = 20) -> dict[str, Any]:
    """Who joined through the user's invite and what each earned them (acceleration)."""
    def work(session: Session) -> dict[str, Any]:
        earned = (select(Order.user_id, func.sum(Order.accelerated).label("earned"))
                  .group_by(Order.user_id).subquery())
        rows = session.execute(
            select(User.handle, User.display_name, User.created_at,
                   func.coalesce(earned.c.earned, 0))
            .outerjoin(earned, earned.c.user_id == User.id)
            .where(User.referrer_id == user_id).order_by(User.id)).all()
        return {"count": len(rows), "earned": sum(int(r[3]) for r in rows),
                "people": [{"name": name or handle, "joined_at": at, "earned": int(e)}
                           for handle, name, at, e in rows[:limit]]}

    return db.read(work)


def lookup(db: Database, query: str) -> dict[str, Any] | None:
    """What an operator sees about one user (`/user`)."""
    def work(session: Session) -> dict[str, Any] | None:
        user = find_user(session, query)
        if user is None:
            return None
        ids = session.execute(select(Identity.identity).where(Identity.user_id == user.id)
                              .order_by(Identity.identity)).scalars().all()
        n_orders = session.execute(select(func.count()).where(Order.user_id == user.id)
                                   ).scalar_one()
        n_invited = session.execute(select(func.count()).where(User.referrer_id == user.id)
                                    ).scalar_one()
        referrer = session.get(User, user.referrer_id) if user.referrer_id else None
        return {"id": user.id, "handle": user.handle, "name": user.display_name,
                "identities": list(ids), "wallet": user.wallet, "held": user.held,
                "points": user.points, "basis": user.basis, "orders": n_orders,
                "invited": n_invited, "referrer": referrer.handle if referrer else None,
                "created_at": user.created_at, "lang": user.lang, "blocked": user.blocked}

    return db.read(work)


def lang_of(db: Database, identity: str) -> str | None:
    return db.read(lambda s: s.execute(
        select(User.lang).join(Identity, Identity.user_id == User.id)
        .where(Identity.identity == identity)).scalar_one_or_none())


def last_seen(db: Database, identity: str) -> datetime | None:
    """When `identity` last wrote (moved at most hourly), or None."""
    return db.read(lambda s: s.execute(select(Identity.last_seen_at).where(
        Identity.identity == identity)).scalar_one_or_none())


def identity_on(db: Database, handle: str, prefix: str) -> str | None:
    """The user's first identity on one channel (`prefix` such as `wx`), or None."""
    return db.read(lambda s: s.execute(
        select(Identity.identity).join(User, User.id == Identity.user_id)
        .where(User.handle == handle, Identity.identity.like(f"{prefix}:%"))
        .order_by(Identity.identity).limit(1)).scalar_one_or_none())




def product(db: Database, sku: str) -> dict[str, Any] | None:
    """A product as an operator sees it (SPEC §9: with its `stock`, None for unlimited, and
    its `kind`); None when there is no such sku."""
    def work(session: Session) -> dict[str, Any] | None:
        p = session.get(Product, sku) if isinstance(sku, str) else None
        if p is None:
            return None
        return {"sku": p.sku, "name": p.name, "price": p.price, "margin": p.margin,
                "lock_days": p.lock_days, "scheme": p.scheme, "active": p.active,
                "stock": p.stock, "kind": p.kind}

    return db.read(work)
