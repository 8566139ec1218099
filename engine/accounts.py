"""Users, pools, wallets and the catalogue (SPEC §3–§5, §7)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from storage.models import Product, Setting, User, Withdrawal
from storage.rows import UserRow

from . import journal, ledger, payouts, points, transfers
from .book import Book
from .config import validate_update
from .errors import Refusal
from .money import AmountError, parse_fen, parse_micro, parse_rate

SKU = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HANDLE = re.compile(r"^[^\s]{1,96}$")
SCHEMES = ("queue", "points", "both", "none")
KINDS = ("goods", "digital", "service")  # SPEC §9: what delivering one means
MAX_STOCK = 1_000_000_000
KEEP: Any = type("Keep", (), {"__repr__": lambda _self: "KEEP"})()  # stock left as it is


def parse_stock(stock: object) -> int | None:
    """SPEC §9: a whole number 0-1,000,000,000, or None for unlimited; else `invalid_event`."""
    if stock is None:
        return None
    if isinstance(stock, bool) or not isinstance(stock, int) or not 0 <= stock <= MAX_STOCK:
        raise Refusal("invalid_event", "stock is a whole number 0-1000000000")
    return stock


def _amount(value: object, parse: Callable[[object], int]) -> int:
    """A positive int already in the unit, or a plain decimal string; else `invalid_amount`."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    try:
        return parse(value)
    except AmountError as exc:
        raise Refusal("invalid_amount", str(exc)) from exc


def fen_amount(value: object) -> int:
    return _amount(value, parse_fen)


def micro_amount(value: object) -> int:
    return _amount(value, parse_micro)


def _points_held(holder: UserRow, amount: object) -> int:
    """`amount` as micro-points, refused when `holder` holds fewer."""
    q = micro_amount(amount)
    if q > holder.points:
        raise Refusal("insufficient_points")
    return q


def configure(book: Book, sections: Any, at: datetime, actor: str | None = None) -> dict[str, str]:
    """Change store parameters; the whole change is refused if any key is bad."""
    flat = validate_update(sections)
    for key, value in flat.items():
        row = book.s.get(Setting, key)
        if row is None:
            book.s.add(Setting(key=key, value=value))
        else:
            row.value = value
    book.catalog_changed()
    n = book.head.last_txn + 1
    book.record(key=f"config:{n}", kind="config", at=at, body=flat, actor=actor)
    points.forced_exits(book, at, "config")
    return flat


def upsert_product(book: Book, *, sku: object, price: object, margin: object, lock_days: object,
                   scheme: object, name: str | None = None, active: bool | None = None,
                   stock: object = KEEP, kind: object = None, at: datetime,
                   actor: str | None = None) -> Product:
    """Add a product or change one (SPEC §7 `product`, §9 `stock`). `active` None: a new
    product is on sale, a changed one stays on or off sale as it was (`set_on_sale` switches
    it). `stock` KEEP: a new product is unlimited, a changed one keeps its count; None makes
    it unlimited. `kind` None: `goods` for a new product, else kept."""
    if not isinstance(sku, str) or not SKU.fullmatch(sku):
        raise Refusal("invalid_event", "sku is 1-64 of A-Za-z0-9_-")
    if scheme not in SCHEMES:
        raise Refusal("invalid_event", "scheme is queue, points, both or none")
    try:
        m = parse_rate(margin)
    except AmountError as exc:
        raise Refusal("invalid_event", "margin is a decimal 0-1") from exc
    if m > 1:
        raise Refusal("invalid_event", "margin is a decimal 0-1")
    if isinstance(lock_days, bool) or not isinstance(lock_days, int) or not 0 <= lock_days <= 3650:
        raise Refusal("invalid_event", "lock_days is a whole number 0-3650")
    units = None if stock is KEEP else parse_stock(stock)
    if kind is not None and kind not in KINDS:
        raise Refusal("invalid_event", "kind is goods, digital or service")
    fen = fen_amount(price)
    row = book.s.get(Product, sku)
    if row is None:
        row = Product(sku=sku, name=name or sku, price=fen, margin=str(margin),
                      lock_days=lock_days, scheme=str(scheme), active=active is not False,
                      updated_at=at, stock=units, kind=str(kind or "goods"))
        book.s.add(row)
    else:
        row.price, row.margin, row.lock_days, row.scheme = fen, str(margin), lock_days, str(scheme)
        row.updated_at = at
        if active is not None:
            row.active = active
        if name:
            row.name = name
        if stock is not KEEP:
            row.stock = units
        if kind is not None:
            row.kind = str(kind)
    book.catalog_changed()
    n = book.head.last_txn + 1
    body = {"sku": sku, "price": fen, "margin": str(margin), "lock_days": lock_days,
            "scheme": scheme, "name": row.name, "active": bool(row.active)}
    if stock is not KEEP:
        body["stock"] = units
    if kind is not None:
        body["kind"] = kind
    book.record(key=f"product:{n}", kind="product", at=at, actor=actor, body=body)
    return row


def set_on_sale(book: Book, *, sku: object, active: bool, at: datetime,
                actor: str | None = None) -> dict[str, Any]:
    """Take a product off sale (`/shop` hides it, buying it is refused `product_inactive`)
    or put it back. Orders already recorded keep their terms. Journaled with who did it;
    asking for the state it is already in changes and records nothing."""
    row = book.s.get(Product, sku) if isinstance(sku, str) else None
    if row is None:
        raise Refusal("unknown_product", str(sku))
    result = {"sku": row.sku, "name": row.name, "active": active, "changed": row.active != active}
    if not result["changed"]:
        return result
    row.active, row.updated_at = active, at
    book.catalog_changed()
    n = book.head.last_txn + 1
    book.record(key=f"product:{n}", kind="product_sale", at=at, actor=actor,
                body={"sku": row.sku, "active": active})
    return result


def set_stock(book: Book, *, sku: object, stock: object, at: datetime,
              actor: str | None = None) -> dict[str, Any]:
    """An operator's count of a product's units left to sell (SPEC §9 `stock`; None makes it
    unlimited), keeping every other term. A digital product's stock is its unused codes
    (engine/codes.py), so it is refused `stock_is_codes`. Journaled with who did it."""
    row = book.s.get(Product, sku) if isinstance(sku, str) else None
    if row is None:
        raise Refusal("unknown_product", str(sku))
    units = parse_stock(stock)
    if row.kind == "digital":
        raise Refusal("stock_is_codes", row.sku)
    row.stock, row.updated_at = units, at
    book.catalog_changed()
    n = book.head.last_txn + 1
    book.record(key=f"product:{n}", kind="product_stock", at=at, actor=actor,
                body={"sku": row.sku, "stock": units})
    return {"sku": row.sku, "name": row.name, "stock": units}


def join(book: Book, *, user: object, referrer: object = None, at: datetime,
         lang: str | None = None, display_name: str | None = None) -> User:
    """A new user; the referrer is fixed now and never changes (SPEC §5)."""
    if not isinstance(user, str) or not HANDLE.fullmatch(user):
        raise Refusal("invalid_event", "bad user handle")
    if book.s.execute(select(User.id).where(User.handle == user)).first() is not None:
        raise Refusal("duplicate_user", user)
    ref_id = None
    if referrer is not None:
        if referrer == user:
            raise Refusal("self_referral")
        if not isinstance(referrer, str):
            raise Refusal("unknown_user")
        ref_id = book.user(referrer).id
    row = User(handle=user, referrer_id=ref_id, lang=lang, display_name=display_name,
               created_at=at, wallet=0, held=0, points=0, basis=0)
    book.s.add(row)
    book.s.flush()
    book.record(key=f"join:{user}", kind="join", at=at,
                body={"user": user, "referrer": referrer})
    return row


def deposit(book: Book, *, pool: object, amount: object, at: datetime,
            actor: str | None = None, key: str | None = None) -> dict[str, Any]:
    """Operator seed money into a pool. Into the points pool it lifts the price, so it is
    refused while nobody holds points (SPEC §4): the next buyer's few points would own the
    whole deposit. Checks in SPEC §7's order: amount, pool, holders."""
    if (done := book.already(key)) is not None:
        return done
    fen = fen_amount(amount)
    if pool not in ("queue", "points"):
        raise Refusal("unknown_pool", str(pool))
    row = book.pool(str(pool))
    if pool == "points" and row.supply <= 0:
        raise Refusal("no_points_holders")
    p = journal.Postings()
    p.fen(journal.DEPOSITS_IN, ledger.pool(book, str(pool)), fen)
    n = book.head.last_txn + 1
    result = {"pool": pool, "amount": fen, "balance": row.balance}
    book.record(key=key or f"deposit:{n}", kind="deposit", at=at, postings=p, actor=actor,
                body={"pool": pool, "amount": fen}, result=result)
    points.forced_exits(book, at, "deposit")
    return result


def withdraw_points(book: Book, *, user: object, amount: object, at: datetime,
                    key: str | None = None) -> dict[str, Any]:
    if (done := book.already(key)) is not None:
        return done
    holder = book.user(user)  # type: ignore[arg-type]
    q = _points_held(holder, amount)
    p = journal.Postings()
    n = book.head.last_txn + 1
    net, fee = points.withdraw(book, holder, q, p, f"sell:{n}")
    result = {"user": holder.handle, "points": q, "paid": net, "fee": fee}
    book.record(key=key or f"sell:{n}", kind="withdraw_points", at=at, postings=p,
                body={"user": holder.handle, "points": q, "fee": fee}, result=result)
    points.forced_exits(book, at, "withdraw_points")
    return result


def transfer_points(book: Book, *, sender: object, receiver: object, amount: object,
                    at: datetime, key: str | None = None) -> dict[str, Any]:
    if (done := book.already(key)) is not None:
        return done
    src = book.user(sender)  # type: ignore[arg-type]
    dst = book.user(receiver)  # type: ignore[arg-type]
    if src.id == dst.id:
        raise Refusal("self_transfer")
    q = _points_held(src, amount)
    p = journal.Postings()
    n = book.head.last_txn + 1
    points.transfer(src, dst, q, p, f"transfer:{n}")
    result = {"from": src.handle, "to": dst.handle, "points": q}
    book.record(key=key or f"transfer:{n}", kind="transfer", at=at, postings=p,
                body=result, result=result)
    book.notify(dst, "points_received", f"transfer:{n}", at, points=q,
                sender=src.display_name or src.handle)
    points.forced_exits(book, at, "transfer")
    return result


def request_withdrawal(book: Book, *, user: object, amount: object, at: datetime,
                       key: str | None = None) -> dict[str, Any]:
    """Hold the amount at once; an operator pays it out or returns it."""
    if (done := book.already(key)) is not None:
        return done
    owner = book.user(user)  # type: ignore[arg-type]
    fen = fen_amount(amount)
    if fen > owner.wallet:
        raise Refusal("insufficient_balance")
    method, payee = payouts.checked_request(book, owner.id, fen, at)
    w = Withdrawal(user_id=owner.id, amount=fen, status="pending", requested_at=at,
                   method=method, payee=payee)
    book.s.add(w)
    book.s.flush()
    p = journal.Postings()
    p.fen(ledger.wallet(owner), ledger.held(owner), fen, f"withdrawal:{w.id}")
    result = {"withdrawal": w.id, "user": owner.handle, "amount": fen, "status": "pending",
              "method": method, "payee": payee}
    book.record(key=key or f"withdrawal:{w.id}", kind="withdrawal_request", at=at, postings=p,
                body={"withdrawal": w.id, "user": owner.handle, "amount": fen}, result=result)
    return result


def decide_withdrawal(book: Book, *, withdrawal_id: object, approve: bool, at: datetime,
                      actor: str | None, reference: str | None = None) -> dict[str, Any]:
    """Approve (paid out by hand, `reference` noting how; or, to a WeChat balance, a
    merchant transfer started: engine/transfers.py) or reject (returned) a withdrawal."""
    w = book.s.execute(
        select(Withdrawal).where(Withdrawal.id == withdrawal_id).with_for_update()
    ).scalar_one_or_none() if isinstance(withdrawal_id, int) else None
    if w is None:
        raise Refusal("unknown_withdrawal", str(withdrawal_id))
    if w.status != "pending":
        raise Refusal("already_decided", w.status)
    owner = book.user_by_id(w.user_id)
    if approve and w.method == "wechat":
        return _start_transfer(book, w, owner, at, actor)
    if approve:
        payouts.check_shop_total(book, w.amount, at)
        w.reference = reference[:64] if reference else None
    p = journal.Postings()
    p.fen(ledger.held(owner), journal.PAYOUTS_OUT if approve else ledger.wallet(owner), w.amount,
          f"withdrawal:{w.id}")
    w.status = "approved" if approve else "rejected"
    w.decided_at, w.decided_by = at, actor
    key = f"withdrawal:{w.id}:{w.status}"
    result = {"withdrawal": w.id, "user": owner.handle, "amount": w.amount, "status": w.status}
    body: dict[str, Any] = {"withdrawal": w.id, "amount": w.amount}
    if w.reference:  # how the operator paid it by hand (issue 17)
        body["reference"] = w.reference
    book.record(key=key, kind=f"withdrawal_{w.status}", at=at, postings=p, actor=actor,
                body=body, result=result)
    book.notify(owner, f"withdrawal_{w.status}", key, at, withdrawal=w.id, amount=w.amount)
    return result


def _start_transfer(book: Book, w: Withdrawal, owner: Any, at: datetime,
                    actor: str | None) -> dict[str, Any]:
    """Approved to a WeChat balance: the hold stays until the transfer ends."""
    started = transfers.start(book, w, owner, at)
    w.decided_at, w.decided_by = at, actor
    key = f"withdrawal:{w.id}:transfer"
    result = {"withdrawal": w.id, "user": owner.handle, "amount": w.amount, "status": w.status,
              "out_bill_no": started["out_bill_no"]}
    book.record(key=key, kind="withdrawal_transfer", at=at, actor=actor,
                body={"withdrawal": w.id, "amount": w.amount, **started}, result=result)
    book.notify(owner, "transfer_started", key, at, withdrawal=w.id, amount=w.amount)
    return result
