"""Who is talking, and what the chat shows them (SPEC §1, §5).

Write side: resolve a chat identity to its user (creating the user at first contact, with the
referrer fixed from a valid invite code, SPEC §5), invite codes, the stored language and
operator broadcasts. Read side: the account, paged statement, orders, withdrawals and user
look-up views, each one read-only snapshot returning plain dicts.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.driver import Driver
from storage.models import Identity, JournalTxn, Order, Outbox, Pool, Posting, Setting, User

from . import accounts, journal
from .book import Book
from .config import Config
from .errors import Refusal
from .money import MICRO_PER_POINT
from .points import Price

INVITE_CODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
IDENTITY = re.compile(r"^[A-Za-z]{1,16}:[^\s]{1,79}$")
LANGS = ("zh", "en")
SEEN_EVERY = timedelta(hours=1)


def now() -> datetime:
    return datetime.now(UTC)


def normalise_lang(value: str | None, default: str = "en") -> str:
    """`zh`, `zh-hans`, `zh_TW` → `zh`; any other language → `en`; none → `default`."""
    if not value:
        return default
    return "zh" if value.strip().lower().startswith("zh") else "en"


def _member(user: User, new: bool) -> dict[str, Any]:
    return {"user_id": user.id, "handle": user.handle, "lang": user.lang, "new": new,
            "referrer_id": user.referrer_id, "blocked": bool(user.blocked),
            "display_name": user.display_name}


def _new_invite_code(session: Session) -> str:
    # 12 URL-safe characters = 72 random bits: unguessable, and short enough for a deep link.
    while True:
        code = secrets.token_urlsafe(9)
        if session.execute(select(User.id).where(User.invite_code == code)).first() is None:
            return code


def resolve(db: Database, identity: str, *, lang: str | None = None,
            display_name: str | None = None, start_payload: str | None = None,
            at: datetime | None = None) -> dict[str, Any]:
    """The user behind `identity`; at first contact the user is created (handle = identity)
    and the referrer is fixed from `start_payload` when it is another user's invite code.
    A malformed, unknown or own payload is ignored (SPEC §5). Returns `new` = True once."""
    _check_identity(identity)

    def known(session: Session) -> dict[str, Any] | None:
        row = session.execute(
            select(User, Identity.last_seen_at).join(Identity, Identity.user_id == User.id)
            .where(Identity.identity == identity)).first()
        if row is None:
            return None
        return {**_member(row[0], False), "last_seen_at": row[1]}

    when = at or now()
    found = db.read(known)
    if found is not None:
        _touch(db, identity, found.pop("last_seen_at"), when)
        return found
    name = display_name[:128] if display_name else None

    def create(session: Session) -> dict[str, Any]:
        book = Book(session)  # the head lock serialises two first messages of one identity
        if (again := known(session)) is not None:
            again.pop("last_seen_at")
            return again
        user = session.execute(select(User).where(User.handle == identity)
                               .with_for_update()).scalar_one_or_none()
        new = user is None
        if user is None:
            referrer = None
            if isinstance(start_payload, str) and INVITE_CODE.match(start_payload):
                referrer = session.execute(select(User.handle).where(
                    User.invite_code == start_payload)).scalar_one_or_none()
            user = accounts.join(book, user=identity, referrer=referrer, at=when,
                                 lang=lang, display_name=name)
        if user.invite_code is None:
            user.invite_code = _new_invite_code(session)
        if user.lang is None and lang is not None:
            user.lang = lang
        session.add(Identity(identity=identity, user_id=user.id, created_at=when,
                             last_seen_at=when))
        session.flush()
        return _member(user, new)

    return db.run(create)


def _check_identity(identity: str) -> None:
    if not isinstance(identity, str) or not IDENTITY.match(identity):
        raise Refusal("invalid_event", "bad identity")


def _touch(db: Database, identity: str, seen: datetime | None, when: datetime) -> None:
    """Which identity a user was last seen on routes their notifications (engine.outbox);
    `last_seen_at` is refreshed at most hourly, not on every message."""
    if seen is None or when - seen > SEEN_EVERY:
        db.run(lambda s: s.execute(update(Identity).where(Identity.identity == identity)
                                   .values(last_seen_at=when)))


def resolve_and_account(db: Database, identity: str, *, lang: str | None = None,
                        display_name: str | None = None, start_payload: str | None = None,
                        at: datetime | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """`resolve(...)` and then `account(handle)`, the same two dicts, for a chat's `/me`:
    a known identity is read with its account in one read snapshot (one session, four
    SELECTs) instead of two. At first contact it is exactly `resolve`, then `account`."""
    _check_identity(identity)
    when = at or now()

    def work(session: Session) -> tuple[dict[str, Any], datetime | None, dict[str, Any]] | None:
        driver = Driver(session)
        found = driver.rows(_HOLDER_BY_IDENTITY, (identity,))
        if not found:
            return None
        *columns, seen = found[0]
        row = _Holder(*columns)
        member = {"user_id": row.id, "handle": row.handle, "lang": row.lang, "new": False,
                  "referrer_id": row.referrer_id, "blocked": bool(row.blocked),
                  "display_name": row.display_name}
        last_seen_at = driver.read(_IDENTITIES, ("last_seen_at",), [(seen,)])[0][0]
        return member, last_seen_at, _account_view(driver, row)

    found = db.read(work)
    if found is None:
        member = resolve(db, identity, lang=lang, display_name=display_name,
                         start_payload=start_payload, at=when)
        return member, account(db, member["handle"])
    member, seen, view = found
    _touch(db, identity, seen, when)
    return member, view


def set_lang(db: Database, user_id: int, lang: str) -> str:
    if lang not in LANGS:
        raise Refusal("invalid_event", "language is zh or en")

    def work(session: Session) -> str:
        user = session.execute(select(User).where(User.id == user_id)
                               .with_for_update()).scalar_one()
        user.lang = lang
        return lang

    return db.run(work)


def invite_code(db: Database, user_id: int) -> str:
    """The user's invite code, made now for users created outside the chat (replay, CLI)."""
    def work(session: Session) -> str:
        user = session.execute(select(User).where(User.id == user_id)
                               .with_for_update()).scalar_one()
        if user.invite_code is None:
            user.invite_code = _new_invite_code(session)
        return user.invite_code

    current = db.read(lambda s: s.execute(
        select(User.invite_code).where(User.id == user_id)).scalar_one())
    return current or db.run(work)


def find_handle(db: Database, query: str) -> str | None:
    """A user named by handle, chat identity, invite code or `#<id>`; None when unknown."""
    def work(session: Session) -> str | None:
        user = _find(session, query)
        return user.handle if user is not None else None

    return db.read(work)


def _find(session: Session, query: str) -> User | None:
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


# -- read side ------------------------------------------------------------------------------

def store_config(session: Session) -> Config:
    return Config.from_values({r.key: r.value for r in session.execute(select(Setting)).scalars()})


def current_price(session: Session, cfg: Config) -> Price:
    """The points price (fen per micro-point), read-only: the same rule as `points.price`."""
    pool = session.get(Pool, "points")
    assert pool is not None
    return _price(pool, cfg)


def _price(pool: Any, cfg: Config) -> Price:
    """From the `points` pool's balance, supply and zero price (an ORM object or a row)."""
    if pool.supply > 0:
        return Price(pool.balance, pool.supply)
    if pool.zero_price_num is not None and pool.zero_price_den:
        return Price(pool.zero_price_num, pool.zero_price_den)
    return Price(cfg.initial_price, MICRO_PER_POINT)


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


# The account's holder, with what the account view shows of their referrer, and the rest of
# the account view: plain SQL on the session's own connection and transaction
# (storage/driver.py), since `/me` is the hottest read — SQLAlchemy Core cost ~50 µs a
# statement here, the driver a few.
_HOLDER = ("SELECT u.id, u.handle, u.lang, u.referrer_id, u.blocked, u.display_name, u.wallet, "
           "u.held, u.points, u.basis, r.display_name, r.handle{more} FROM users u "
           "LEFT JOIN users r ON r.id = u.referrer_id{join} WHERE {where}")
_HOLDER_BY_HANDLE = _HOLDER.format(more="", join="", where="u.handle = ?")
_HOLDER_BY_IDENTITY = _HOLDER.format(more=", i.last_seen_at",
                                     join=" JOIN identities i ON i.user_id = u.id",
                                     where="i.identity = ?")
_IDENTITIES = cast(Table, Identity.__table__)  # how `last_seen_at` is read back
_SETTINGS = "SELECT key, value FROM settings"
_POINTS_POOL = ("SELECT balance, supply, zero_price_num, zero_price_den FROM pools "
                "WHERE name = 'points'")
_WAITING = ("SELECT count(*), coalesce(sum(amount - released), 0) FROM entries "
            "WHERE user_id = ? AND status = 'waiting'")


@dataclass(frozen=True, slots=True)
class _Holder:
    """A row of `_HOLDER`."""

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
    """A row of `_POINTS_POOL`, shaped for `_price`."""

    balance: int
    supply: int
    zero_price_num: int | None
    zero_price_den: int | None


def account(db: Database, handle: str) -> dict[str, Any]:
    """Wallet, held, points with price and value, forced-exit distance, queue summary."""
    def work(session: Session) -> dict[str, Any]:
        driver = Driver(session)
        found = driver.rows(_HOLDER_BY_HANDLE, (handle,))
        if not found:
            raise Refusal("unknown_user", handle)
        return _account_view(driver, _Holder(*found[0]))

    return db.read(work)


def _account_view(driver: Driver, holder: _Holder) -> dict[str, Any]:
    """`account`'s view of a `_HOLDER` row, in the snapshot that read it."""
    cfg = Config.from_values(dict(driver.rows(_SETTINGS)))
    price = _price(_PointsPool(*driver.rows(_POINTS_POOL)[0]), cfg)
    waiting = driver.rows(_WAITING, (holder.id,))[0]
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
    from storage.models import Withdrawal

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
        user = _find(session, query)
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
    """When `identity` last wrote (moved at most hourly, `_touch`), or None."""
    return db.read(lambda s: s.execute(select(Identity.last_seen_at).where(
        Identity.identity == identity)).scalar_one_or_none())


def identity_on(db: Database, handle: str, prefix: str) -> str | None:
    """The user's first identity on one channel (`prefix` such as `wx`), or None."""
    return db.read(lambda s: s.execute(
        select(Identity.identity).join(User, User.id == Identity.user_id)
        .where(User.handle == handle, Identity.identity.like(f"{prefix}:%"))
        .order_by(Identity.identity).limit(1)).scalar_one_or_none())


# -- broadcast ------------------------------------------------------------------------------

def broadcast(db: Database, *, text: str, actor: str, key: str,
              at: datetime | None = None) -> dict[str, Any]:
    """One outbox row (kind `broadcast`) per user who is not blocked, journaled with who sent
    it; the same `key` never broadcasts twice."""
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        book = Book(session)
        if (done := book.already(key)) is not None:
            return done
        users = session.execute(select(User.id, User.lang).where(User.blocked.is_(False))
                                .order_by(User.id)).all()
        n = book.head.last_txn + 1
        params = journal.canonical({"text": text})
        if users:
            # Core insert: one statement for every recipient, however many there are.
            session.execute(insert(Outbox), [
                {"key": f"broadcast:{n}:{uid}", "user_id": uid, "kind": "broadcast",
                 "params": params, "lang": lang or "zh", "status": "pending", "attempts": 0,
                 "next_at": when, "created_at": when} for uid, lang in users])
        result = {"broadcast": n, "recipients": len(users)}
        book.record(key=key, kind="broadcast", at=when, actor=actor,
                    body={"text": text, "recipients": len(users)}, result=result)
        return result

    return db.run(work)
