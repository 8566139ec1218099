"""Channel checkouts (SPEC §8): an order waiting for a payment, named by an unguessable token.

`open_checkout` records the order (any points it uses are spent now, at checkout) and its
`Checkout` row in one transaction. `precheck` is the channel's last question before it
charges the buyer. `record_payment` records every channel's charge, exactly once per charge.
A charge the shop cannot match is refused — the books stay as they were — and, since real
money moved outside them, every operator is owed a `payment_flag` message through the outbox.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Checkout, Identity, Order, OrderLine, User

from . import inbox, journal, orders, outbox
from .book import Book
from .errors import Refusal
from .times import now
from .users import store_config

TOKEN_BYTES = 24  # 192 random bits, 32 URL-safe characters
TTL = timedelta(minutes=30)
# A buyer who passed the pre-checkout question just before expiry may still be charged a
# moment later; unpaid orders are only cancelled this long after their checkout expired.
GRACE = timedelta(minutes=10)


def payment_key(channel: str, charge_id: str) -> str:
    """The payment's idempotency key: one charge is recorded once, whatever the retries.
    WeChat Pay's transaction id is `wx:txn:<id>` (it is at most 64 printable characters)."""
    if channel == "wechat":
        return f"wx:txn:{charge_id}"
    return charge_key(channel, charge_id)


def charge_key(channel: str, charge_id: str) -> str:
    """`<channel>:charge:<id>`, or the id's SHA-256 when it is long or not printable."""
    key = f"{channel}:charge:{charge_id}"
    if len(key) > 150 or not charge_id.isprintable():
        key = f"{channel}:charge:sha256:{hashlib.sha256(charge_id.encode()).hexdigest()}"
    return key


def open_checkout(db: Database, *, user: str, sku: object = None, qty: object = 1,
                  lines: object = None, pay_points: object = None, channel: str, method: str,
                  key: str, at: datetime | None = None, ttl: timedelta = TTL,
                  replaces: str | None = None) -> dict[str, Any]:
    """An order awaiting payment plus its checkout token (expires after `ttl`). When points
    pay the whole total there is nothing to collect: the order is recorded as paid at once
    and `token` is None. The same `key` returns the same order and token. `sku`/`qty`, or
    `lines=[{"sku", "qty"}, ...]` (SPEC §9): exactly one of the two. Its units are taken
    from stock now (`out_of_stock`) and come back if it expires unpaid.

    `replaces`: the buyer's open order this one takes the place of (the points button under
    its invoice), cancelled in the same transaction (`orders.cancel_open`), its checkout
    closed, so the buyer never holds two invoices for one purchase."""
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        book = Book(session)
        if replaces is not None:
            cancel_replaced(book, ref=replaces, user=user, at=when, key=key)
        result = orders.open_unpaid_order(book, user=user, sku=sku, qty=qty, lines=lines,
                                          at=when, pay_points=pay_points, method=method,
                                          key=key)
        ref = result["order"]
        row = session.execute(select(Checkout).where(Checkout.order_ref == ref)
                              ).scalar_one_or_none()
        if row is not None:
            return {**result, "token": row.token, "expires_at": row.expires_at}
        if result["cash"] == 0:
            if result["status"] == "awaiting_payment":
                result = orders.confirm_payment(book, ref=ref, amount=0,
                                                currency=book.cfg.currency,
                                                payment_ref="points", at=when,
                                                key=f"{key}:points")
            return {**result, "token": None, "expires_at": None}
        token = secrets.token_urlsafe(TOKEN_BYTES)
        session.add(Checkout(token=token, order_ref=ref, channel=channel[:8],
                             amount=result["cash"], currency=book.cfg.currency, status="open",
                             created_at=when, expires_at=when + ttl))
        return {**result, "token": token, "expires_at": when + ttl,
                "currency": book.cfg.currency}

    return db.run(work)


def cancel_replaced(book: Book, *, ref: str, user: str, at: datetime, key: str) -> None:
    """The open order `ref` that purchase `key` replaces, cancelled and its checkout closed
    (locked first, as every payment locks it); nothing when `key` is a repeated tap."""
    if book.stored(key) is not None:
        return
    cancel_with_checkout(book, ref=ref, user=user, at=at)


def cancel_with_checkout(book: Book, *, ref: str, user: str, at: datetime) -> None:
    """Cancel the open order `ref` (`orders.cancel_open`: its points and stock given back)
    and close its checkout, locked first as every payment locks it."""
    row = book.s.execute(select(Checkout).where(Checkout.order_ref == ref)
                         .with_for_update()).scalar_one_or_none()
    orders.cancel_open(book, ref=ref, user=user, at=at)
    if row is not None and row.status == "open":
        row.status = "cancelled"


def pay_with_wallet(db: Database, *, user: str, order: object, key: str,
                    at: datetime | None = None) -> dict[str, Any]:
    """Pay this open order from the buyer's wallet (`orders.pay_from_wallet`) and close its
    checkout, so the channel's invoice for it can no longer be paid (`precheck` says
    `closed`). Never opens a second order: a button under an invoice acts on that order."""
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        # the checkout row first, as `record_payment` locks it: one lock order for all payments
        row = session.execute(select(Checkout).where(Checkout.order_ref == order)
                              .with_for_update()).scalar_one_or_none() \
            if isinstance(order, str) else None
        result = orders.pay_from_wallet(Book(session), ref=order, user=user, at=when, key=key)
        if row is not None and row.status == "open":
            row.status = "paid"
        return result

    return db.run(work)


def open_order_line(db: Database, *, user: str, order: object,
                    replaced_by: str | None = None) -> tuple[str, int, bool]:
    """The product and quantity of `user`'s order `order` (its first line) while it awaits
    payment; else `unknown_order` (not theirs, or none) or `not_payable` — unless the
    checkout keyed `replaced_by` already replaced it (a repeated tap answers the same
    invoice): then the third item is True. A cart's order: `open_order_lines`."""
    lines, done = open_order_lines(db, user=user, order=order, replaced_by=replaced_by)
    return lines[0]["sku"], lines[0]["qty"], done


def open_order_lines(db: Database, *, user: str, order: object,
                     replaced_by: str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """`open_order_line` for every line: `[{"sku", "qty"}]` as `open_checkout(lines=…)`
    takes them, and whether `replaced_by` already replaced the order."""
    def work(session: Session) -> tuple[list[dict[str, Any]], bool]:
        row = session.execute(select(Order).where(Order.ref == order)).scalar_one_or_none() \
            if isinstance(order, str) else None
        if row is None or row.user_id != session.execute(
                select(User.id).where(User.handle == user)).scalar_one_or_none():
            raise Refusal("unknown_order", str(order))
        done = replaced_by is not None and journal.find(session, replaced_by) is not None
        if not done and row.status != "awaiting_payment":
            raise Refusal("not_payable", row.status)
        lines = [{"sku": sku, "qty": qty} for sku, qty in session.execute(
            select(OrderLine.sku, OrderLine.qty).where(OrderLine.order_no == row.no)
            .order_by(OrderLine.line_no)).all()]
        return lines or [{"sku": row.sku, "qty": row.qty}], done

    return db.read(work)


def _buyer_id(session: Session, identity: str) -> int | None:
    return session.execute(select(Identity.user_id).where(Identity.identity == identity)
                           ).scalar_one_or_none()


def precheck(db: Database, *, token: object, amount: object, currency: object,
             identity: str, at: datetime | None = None) -> str | None:
    """None when the channel may charge; else why not: `unknown`, `closed`, `expired`,
    `paused` (sales are paused: an order opened before the pause is not charged during it),
    `mismatch` (amount or currency), `wrong_buyer`."""
    when = at or now()

    def work(session: Session) -> str | None:
        if not isinstance(token, str) or not 0 < len(token) <= 64:
            return "unknown"
        row = session.get(Checkout, token)
        if row is None:
            return "unknown"
        order = session.execute(select(Order).where(Order.ref == row.order_ref)).scalar_one()
        if row.status != "open" or order.status != "awaiting_payment":
            return "closed"
        if when >= row.expires_at:
            return "expired"
        if store_config(session).paused:
            return "paused"
        if amount != order.cash or currency != order.currency:
            return "mismatch"
        if _buyer_id(session, identity) != order.user_id:
            return "wrong_buyer"
        return None

    return db.read(work)


def record_payment(db: Database, *, channel: str, charge_id: str, amount: int, currency: str,
                   buyer: str, token: object = None, order: str | None = None,
                   operators: Iterable[str] = (), at: datetime | None = None,
                   inbox_update: int | None = None) -> dict[str, Any]:
    """A channel took the buyer's money: record it, exactly once per charge (`payment_key`).

    Every channel's payment comes here — Telegram's `successful_payment` and the charge spool
    (naming the checkout by its `token`), WeChat Pay's notification (naming the `order`). In
    one transaction: the checkout is locked and closed, the order confirmed and settled when
    due (`orders.confirm_payment`), a payment taken while sales are paused flagged to every
    operator (`paused_payment`: the money is real, so it is recorded), and `inbox_update`,
    the inbox row the charge came in (engine/inbox.py), marked done.

    An invoice (a `token`) was sent to one buyer: a charge by anyone else is refused. WeChat
    Pay's payer may be anyone who scanned the code. Returns the order result with `ok`
    True, or `ok` False and the refusal `code`: nothing was recorded, and every operator is
    owed a `payment_flag` (once per charge; the inbox row is marked with it)."""
    when = at or now()
    key = payment_key(channel, charge_id)
    charge = charge_id[:128]

    def work(session: Session) -> dict[str, Any]:
        # the checkout row first, as `pay_with_wallet` and `expire_due` lock it
        if token is not None:
            row = session.execute(select(Checkout).where(Checkout.token == token)
                                  .with_for_update()).scalar_one_or_none() \
                if isinstance(token, str) else None
            if row is None:
                raise Refusal("unknown_order", "no such checkout")
            if journal.find(session, key) is None and _buyer_id(session, buyer) != \
                    session.execute(select(Order.user_id).where(Order.ref == row.order_ref)
                                    ).scalar_one():
                raise Refusal("payment_mismatch", "paid by another user")
            ref = row.order_ref
        else:
            assert order is not None, "a payment names its checkout or its order"
            row = session.execute(select(Checkout).where(Checkout.order_ref == order)
                                  .with_for_update()).scalar_one_or_none()
            ref = order
        result = orders.confirm_payment(Book(session), ref=ref, amount=amount,
                                        currency=currency, payment_ref=charge, at=when,
                                        key=key)
        if row is not None and row.status == "open":
            row.status = "paid"
        if result.get("paid_while_paused"):
            _flag_rows(session, operators, key=f"paused:{key}", kind="paused_payment",
                       at=when, params={"order": result["order"], "amount": amount,
                                        "currency": currency, "charge": charge,
                                        "channel": channel, "buyer": buyer})
        if inbox_update is not None:
            inbox.mark(session, inbox_update, at=when)
        return {**result, "ok": True}

    try:
        return db.run(work, label="record_payment")
    except Refusal as exc:
        ref = order if token is None else _order_of(db, token)
        flag_operators(db, operators, key=key, at=when, params={
            "code": exc.code, "order": ref, "amount": amount, "currency": currency,
            "charge": charge, "channel": channel, "buyer": buyer},
            inbox_update=inbox_update)
        return {"ok": False, "code": exc.code, "order": ref}


def _order_of(db: Database, token: object) -> str | None:
    if not isinstance(token, str):
        return None
    return db.read(lambda s: s.execute(select(Checkout.order_ref).where(
        Checkout.token == token)).scalar_one_or_none())


def flag_operators(db: Database, operators: Iterable[str], *, key: str, params: dict[str, Any],
                   at: datetime | None = None, inbox_update: int | None = None) -> int:
    """A `payment_flag` outbox row for each operator identity (once per `key`); the identity
    is in the params, since an operator need not have a shop account. `inbox_update`: the
    inbox row the charge came in, marked done in the same transaction."""
    when = at or now()
    targets = sorted(set(operators))

    def work(session: Session) -> int:
        if inbox_update is not None:
            inbox.mark(session, inbox_update, at=when)
        return _flag_rows(session, targets, key=key, params=params, at=when,
                          kind="payment_flag")

    return db.run(work) if targets or inbox_update is not None else 0


def _flag_rows(session: Session, operators: Iterable[str], *, key: str, kind: str,
               params: dict[str, Any], at: datetime) -> int:
    return outbox.to_operators(session, operators, kind=kind, params=params, at=at,
                               row_key=lambda ident: f"flag:{key}:{ident}"[:200])


def expire_due(db: Database, *, at: datetime | None = None, batch: int = 200) -> int:
    """Cancel orders whose checkout expired (plus `GRACE`) unpaid; the points they spent come
    back to the buyer's wallet as their value (`cancel_unpaid`). Returns how many."""
    when = at or now()

    def work(session: Session) -> int:
        book = Book(session)
        rows = session.execute(select(Checkout).where(
            Checkout.status == "open", Checkout.expires_at <= when - GRACE)
            .order_by(Checkout.expires_at).limit(batch).with_for_update()).scalars().all()
        for row in rows:
            status = session.execute(select(Order.status).where(
                Order.ref == row.order_ref)).scalar_one()
            if status == "awaiting_payment":
                orders.cancel_unpaid(book, ref=row.order_ref, at=when)
            row.status = "expired"
        return len(rows)

    total = 0
    while (n := db.run(work)) > 0:
        total += n
        if n < batch:
            break
    return total
