"""Delivery of physical goods (SPEC §9; docs/delivery.md): where an order goes, its shipping,
and its receipt, which under `store.settle_from = receipt` starts its return window.

One function per action, each one database transaction:
- `record_address`: the name, phone and address a channel collected for an order (Telegram's
  `order_info` at payment); also kept as the buyer's saved address.
- `save_address`: the buyer confirms an address in chat (WeChat 收货地址, `/address`): kept
  for next time, and attached to their paid goods orders that have none yet.
- `ship`: an operator marks a paid goods order shipped (carrier, tracking); the buyer is owed
  an `order_shipped` message through the outbox, in the same transaction.
- `hold`: an operator holds (or releases) an order's automatic receipt — the complaint flag.
- `confirm_receipt`: the buyer says a shipped order arrived.
- `auto_receive_due`: shipped orders nobody confirmed after `days` are received (scheduler).
A receipt marks the shipment received and, while the order is pending, is SPEC §9's
`receive` (`orders.receive`: the order's receipt date, then whatever is due settles).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from storage import queries
from storage.db import Database
from storage.models import (
    Checkout,
    Identity,
    Order,
    OrderLine,
    Product,
    SavedAddress,
    Shipment,
    User,
)
from storage.rows import OrderRow

from . import orders
from .book import Book
from .errors import Refusal
from .times import now, parse_at

log = logging.getLogger(__name__)

PAID = ("pending", "settled")  # an order paid for and not refunded
PHONE = re.compile(r"^\+?[0-9][0-9 ()-]{4,30}$")
CARRIER = re.compile(r"^[^\s:]{1,40}$")
TRACKING = re.compile(r"^[A-Za-z0-9-]{3,64}$")
NAME_MAX, ADDRESS_MAX = 64, 400
BY_BUYER, BY_AUTO = "buyer", "auto"


# -- what an address is ---------------------------------------------------------------------

def _one_line(text: object, most: int) -> str | None:
    if not isinstance(text, str):
        return None
    s = " ".join(text.split())
    return s if 0 < len(s) <= most and s.isprintable() else None


def clean_address(name: object, phone: object, address: object) -> tuple[str, str, str]:
    """(name, phone, address) on one line each, or `invalid_address`: a name of 1–64
    characters, a phone of 5–31 digits (spaces, dashes, brackets and a leading + allowed),
    an address of 4–400 characters."""
    n, p, a = _one_line(name, NAME_MAX), _one_line(phone, 32), _one_line(address, ADDRESS_MAX)
    if n is None or p is None or not PHONE.match(p) or a is None or len(a) < 4:
        raise Refusal("invalid_address")
    return n, p, a


# -- which orders ship ----------------------------------------------------------------------

def is_goods(session: Session, order_no: int) -> bool:
    """An order ships when any of its lines is a product of kind `goods` (SPEC §9)."""
    return bool(session.execute(select(exists().where(
        OrderLine.order_no == order_no, Product.sku == OrderLine.sku,
        Product.kind == "goods"))).scalar())


def _paid_goods(book: Book, ref: object) -> OrderRow:
    """The order, locked; `unknown_order`, or `not_shippable` unless it is paid goods."""
    order = queries.order_by_ref(book.rows, ref, lock=True) if isinstance(ref, str) else None
    if order is None:
        raise Refusal("unknown_order", str(ref))
    if order.status not in PAID or not is_goods(book.s, order.no):
        raise Refusal("not_shippable", order.status)
    return order


def _shipment(session: Session, order: OrderRow, at: datetime) -> Shipment:
    """The order's shipment row, made when it has none; without an address of its own it
    takes the buyer's saved one (the next goods order goes where the last one went)."""
    row = session.get(Shipment, order.ref)
    if row is None:
        row = Shipment(order_ref=order.ref, user_id=order.user_id, held=False,
                       created_at=at, updated_at=at)
        session.add(row)
    if row.address is None and (saved := session.get(SavedAddress, order.user_id)):
        row.name, row.phone, row.address = saved.name, saved.phone, saved.address
    return row


def shipment_facts(row: Shipment | None) -> dict[str, Any]:
    """A shipment as the chat shows it (all None when there is none)."""
    fields = ("name", "phone", "address", "carrier", "tracking", "shipped_at", "held",
              "received_at", "received_by")
    return {f: (getattr(row, f) if row is not None else None) for f in fields}


# -- addresses ------------------------------------------------------------------------------

def _keep(session: Session, user_id: int, name: str, phone: str, address: str,
          at: datetime) -> None:
    saved = session.get(SavedAddress, user_id)
    if saved is None:
        session.add(SavedAddress(user_id=user_id, name=name, phone=phone, address=address,
                                 updated_at=at))
    else:
        saved.name, saved.phone, saved.address, saved.updated_at = name, phone, address, at


def _record(session: Session, row: Order | None, name: str, phone: str, address: str,
            at: datetime) -> None:
    if row is None:
        raise Refusal("unknown_order")
    ship = session.get(Shipment, row.ref)
    if ship is not None and ship.shipped_at is not None:
        raise Refusal("already_shipped", row.ref)
    if ship is None:
        ship = Shipment(order_ref=row.ref, user_id=row.user_id, held=False, created_at=at)
        session.add(ship)
    ship.name, ship.phone, ship.address, ship.updated_at = name, phone, address, at
    _keep(session, row.user_id, name, phone, address, at)


def record_address(db: Database, *, order: str, name: str, phone: str, address: str,
                   at: datetime | None = None) -> None:
    """Where order `order` goes, as its channel collected it, and the buyer's saved address
    from now on. The order may still await its payment. Refused: `invalid_address`,
    `unknown_order`, `already_shipped` (the parcel has left)."""
    n, p, a = clean_address(name, phone, address)
    when = at or now()
    db.run(lambda s: _record(s, s.execute(select(Order).where(Order.ref == order)
                                          .with_for_update()).scalar_one_or_none()
                             if isinstance(order, str) else None, n, p, a, when),
           label="record_address")


def record_checkout_address(db: Database, *, token: str, identity: str, name: str,
                            phone: str, address: str, at: datetime | None = None) -> None:
    """`record_address` for the order of the checkout `token` (Telegram's `order_info`
    arrives with the payment, named by the invoice's payload), if `identity` is its buyer:
    recorded before the payment, so a payment recorded is never without its address."""
    n, p, a = clean_address(name, phone, address)
    when = at or now()

    def work(session: Session) -> None:
        row = session.execute(
            select(Order).join(Checkout, Checkout.order_ref == Order.ref)
            .join(Identity, Identity.user_id == Order.user_id)
            .where(Checkout.token == token, Identity.identity == identity)
            .with_for_update(of=Order)).scalar_one_or_none()
        _record(session, row, n, p, a, when)

    db.run(work, label="record_address")


def save_address(db: Database, *, user: str, name: str, phone: str, address: str,
                 at: datetime | None = None) -> dict[str, Any]:
    """The buyer's confirmed address, kept for next time and attached to each of their paid
    goods orders not shipped yet that has no address (`attached`, their refs)."""
    n, p, a = clean_address(name, phone, address)
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        uid = session.execute(select(User.id).where(User.handle == user)).scalar_one_or_none()
        if uid is None:
            raise Refusal("unknown_user", user)
        _keep(session, uid, n, p, a, when)
        attached = []
        # locked as `ship` locks them: a parcel leaving meanwhile keeps its address
        for o in session.execute(select(Order).where(
                Order.user_id == uid, Order.status.in_(PAID)).order_by(Order.no)
                .with_for_update()).scalars():
            ship = session.get(Shipment, o.ref)
            if (ship is not None and (ship.address or ship.shipped_at)) or \
                    not is_goods(session, o.no):
                continue
            if ship is None:
                ship = Shipment(order_ref=o.ref, user_id=uid, held=False, created_at=when)
                session.add(ship)
            ship.name, ship.phone, ship.address, ship.updated_at = n, p, a, when
            attached.append(o.ref)
        return {"name": n, "phone": p, "address": a, "attached": attached}

    return db.run(work, label="save_address")


def saved_address(db: Database, *, user: str) -> dict[str, Any] | None:
    def work(session: Session) -> dict[str, Any] | None:
        row = session.execute(select(SavedAddress).join(User, User.id == SavedAddress.user_id)
                              .where(User.handle == user)).scalar_one_or_none()
        return None if row is None else {"name": row.name, "phone": row.phone,
                                         "address": row.address}

    return db.read(work)


# -- shipping -------------------------------------------------------------------------------

def ship(db: Database, *, order: str, carrier: str, tracking: str, at: datetime | None = None,
         actor: str | None = None) -> dict[str, Any]:
    """An operator shipped a paid goods order: carrier and tracking number recorded, the
    buyer owed an `order_shipped` message (in this transaction, once: key `ship:<ref>`).
    Journaled (kind `ship`, no postings) with who did it. The same carrier and number again
    answers the first result (`replayed`); another is `already_shipped`."""
    if not isinstance(carrier, str) or not CARRIER.match(carrier) or \
            not isinstance(tracking, str) or not TRACKING.match(tracking):
        raise Refusal("invalid_event", "carrier or tracking number")
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        book = Book(session)
        o = _paid_goods(book, order)
        row = _shipment(session, o, when)
        if row.shipped_at is not None or row.received_at is not None:
            if (row.carrier, row.tracking) == (carrier, tracking):
                return {"order": o.ref, **shipment_facts(row), "replayed": True}
            raise Refusal("already_shipped", o.ref)
        row.carrier, row.tracking, row.shipped_at, row.shipped_by = carrier, tracking, when, actor
        row.updated_at = when
        buyer = book.user_by_id(o.user_id)
        key = f"ship:{o.ref}"
        book.record(key=key, kind="ship", at=when, actor=actor,
                    body={"order": o.ref, "carrier": carrier, "tracking": tracking})
        book.notify(buyer, "order_shipped", key, when, order=o.ref, carrier=carrier,
                    tracking=tracking)
        return {"order": o.ref, "user": buyer.handle, **shipment_facts(row)}

    return db.run(work, label="ship")


def hold(db: Database, *, order: str, on: bool = True, at: datetime | None = None,
         actor: str | None = None) -> dict[str, Any]:
    """Hold (or release) an order's automatic receipt: the buyer complained, so the shop will
    not count it received for them. Journaled (kind `hold`) when it changes anything."""
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        book = Book(session)
        o = _paid_goods(book, order)
        row = _shipment(session, o, when)
        changed = bool(row.held) != on
        if changed:
            row.held, row.updated_at = on, when
            book.record(key=f"hold:{o.ref}:{book.head.last_txn + 1}", kind="hold", at=when,
                        actor=actor, body={"order": o.ref, "held": on})
        return {"order": o.ref, "held": on, "changed": changed,
                "received": row.received_at is not None}

    return db.run(work, label="hold")


# -- receipt --------------------------------------------------------------------------------

def _receive(book: Book, o: OrderRow, row: Shipment | None, at: datetime,
             by: str) -> dict[str, Any]:
    """The shipment (if any) received `by` someone; a pending order is also SPEC §9's
    `receive` (its receipt date; then every order due by `at` settles). Anyone but the
    buyer themselves gets told (`order_received`, key `received:<ref>`)."""
    if o.status == "pending" and o.received_at is None:
        orders.receive(book, ref=o.ref, at=at, actor=None if by == BY_BUYER else by)
    if row is not None:
        row.received_at, row.received_by, row.updated_at = at, by, at
    if by != BY_BUYER:
        book.notify(book.user_by_id(o.user_id), "order_received", f"received:{o.ref}", at,
                    order=o.ref, by=by,
                    settles_at=o.settles_at.astimezone(book.cfg.timezone).isoformat()
                    if o.settles_at else None)
    return {"order": o.ref, "status": o.status, "received_at": at, "received_by": by,
            "settles_at": o.settles_at, "already": False}


def confirm_receipt(db: Database, *, order: str, user: str,
                    at: datetime | None = None) -> dict[str, Any]:
    """The buyer says their order arrived (the `recv:v1:ORDER` button, 确认收货): goods once
    shipped; an order with nothing to ship (a service) once paid, while pending. Refused:
    `unknown_order` (none, or not theirs), `not_receivable` (not paid, refunded; or nothing
    to ship and settled already), `not_shipped`. Said twice, the second answers the first
    (`already`)."""
    when = parse_at(at or now())

    def work(session: Session) -> dict[str, Any]:
        book = Book(session)
        buyer = book.user(user)
        o = queries.order_by_ref(book.rows, order, lock=True) if isinstance(order, str) else None
        if o is None or o.user_id != buyer.id:
            raise Refusal("unknown_order", str(order))
        row = session.get(Shipment, o.ref)
        received = row.received_at if row is not None else o.received_at
        if received is not None:
            return {"order": o.ref, "status": o.status, "received_at": received,
                    "received_by": row.received_by if row is not None else None,
                    "settles_at": o.settles_at, "already": True}
        if o.status not in PAID:
            raise Refusal("not_receivable", o.status)
        if not is_goods(session, o.no):
            if o.status != "pending":
                raise Refusal("not_receivable", o.status)
            return _receive(book, o, None, when, BY_BUYER)
        if row is None or row.shipped_at is None:
            raise Refusal("not_shipped", o.ref)
        return _receive(book, o, row, when, BY_BUYER)

    return db.run(work, label="confirm_receipt")


def receivable_due(db: Database, *, at: datetime, days: int, limit: int = 200) -> list[str]:
    """Shipped orders, paid and not refunded, nobody confirmed within `days` of shipping and
    no operator holds: oldest shipment first."""
    cutoff = at - timedelta(days=days)
    return list(db.read(lambda s: s.execute(
        select(Shipment.order_ref).join(Order, Order.ref == Shipment.order_ref)
        .where(Shipment.received_at.is_(None), Shipment.shipped_at.is_not(None),
               Shipment.shipped_at <= cutoff, Shipment.held.is_(False),
               Order.status.in_(PAID))
        .order_by(Shipment.shipped_at, Shipment.order_ref).limit(limit)).scalars().all()))


def auto_receive(db: Database, *, order: str, at: datetime, days: int) -> bool:
    """Receive one order for its buyer (`auto`) if it is still due (checked again under
    its lock: the buyer may have confirmed, or an operator held it, meanwhile)."""
    def work(session: Session) -> bool:
        book = Book(session)
        o = queries.order_by_ref(book.rows, order, lock=True)
        row = session.get(Shipment, order)
        if o is None or row is None or o.status not in PAID or row.received_at is not None \
                or row.held or row.shipped_at is None \
                or row.shipped_at > at - timedelta(days=days):
            return False
        _receive(book, o, row, at, BY_AUTO)
        return True

    return bool(db.run(work, label="auto_receive"))


def auto_receive_due(db: Database, *, at: datetime | None = None, days: int = 10) -> list[str]:
    """The scheduler's job: every shipped order due (`receivable_due`) received, each in its
    own transaction, so one that cannot be does not stop the others. Returns their refs."""
    when = at or now()
    done: list[str] = []
    tried: set[str] = set()
    while True:
        due = [ref for ref in receivable_due(db, at=when, days=days) if ref not in tried]
        if not due:
            return done
        for ref in due:
            tried.add(ref)  # once per run: a refused one waits for the next run
            try:
                if auto_receive(db, order=ref, at=when, days=days):
                    done.append(ref)
            except Refusal as exc:
                log.warning("auto-receive of order %s refused: %s", ref, exc)
