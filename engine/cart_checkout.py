"""Buying the cart (docs/cart.md): one order for all its lines, through the one purchase path
with `lines=` (`checkout.open_checkout` for a channel's payment, `orders.record_paid_order`
from the wallet). What the cart holds, and how a paid order takes its lines out of it:
engine/cart.py.

A cart has at most one order awaiting payment: a new checkout replaces the cart's earlier
unpaid order (`replaces=`), and the order is remembered (`CartOrder`) so that its payment
empties the cart. Racing checkouts, or a checkout racing a payment of the same cart, each
see no order to replace: afterwards only the newest unpaid order stays payable, and only
while the cart still holds its lines; the others are cancelled (`_one_open`).
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import CartOrder, Order, Product

from . import checkout, orders, receipt
from .book import Book
from .cart import UNPAID, apply_paid_orders, find_buyer, items_of, order_lines, view_of
from .errors import Refusal
from .times import now


def _ready(db: Database, user: str) -> tuple[list[dict[str, Any]], str | None]:
    """The cart's lines to buy, and its order still awaiting payment (replaced by the new
    one: a buyer never holds two invoices for one cart). Refused: `cart_empty`, and the
    first line's `product_inactive` / `out_of_stock` (the engine checks stock again, under
    lock, when it records the order)."""
    def work(session: Session) -> tuple[list[dict[str, Any]], str | None]:
        buyer = find_buyer(session, user, lock=True)
        apply_paid_orders(session, buyer)
        seen = view_of(session, buyer)
        if not seen["lines"]:
            raise Refusal("cart_empty")
        for line in seen["lines"]:
            if line["problem"]:
                raise Refusal(line["problem"], line["sku"])
        open_ref = session.execute(
            select(Order.ref).join(CartOrder, CartOrder.order_ref == Order.ref)
            .where(CartOrder.user_id == buyer.id, Order.status == UNPAID)
            .order_by(CartOrder.created_at.desc())).scalars().first()
        return [{"sku": line["sku"], "qty": line["qty"]} for line in seen["lines"]], open_ref

    return db.run(work)


def _replayed(db: Database, key: str) -> dict[str, Any] | None:
    """The order recorded under `key` before (`receipt.replayed`), if any."""
    return db.run(lambda session: receipt.replayed(Book(session), key))


def _remember(db: Database, user: str, order: str, at: datetime) -> None:
    """The order came from the cart (once), then `apply_paid_orders`: an order paid at once
    (points for all of it, or the wallet) takes its lines out now."""
    def work(session: Session) -> None:
        buyer = find_buyer(session, user, lock=True)
        if session.get(CartOrder, order) is None:
            session.add(CartOrder(order_ref=order, user_id=buyer.id, created_at=at))
            session.flush()
        apply_paid_orders(session, buyer)

    db.run(work)


def _cancel(session: Session, *, ref: str, user: str, at: datetime) -> bool:
    """Cancel the cart's order `ref` still awaiting payment as `replaces=` does; False when
    it was paid or cancelled meanwhile."""
    try:
        checkout.cancel_with_checkout(Book(session), ref=ref, user=user, at=at)
    except Refusal:
        return False
    return True


def _losers(db: Database, user: str) -> list[str]:
    """Racing checkouts or a payment of the same cart: of the cart's orders awaiting payment
    all but the newest (each racer saw none to replace), and the newest too when the cart no
    longer holds its lines (a payment raced it and took them out)."""
    def work(session: Session) -> list[str]:
        buyer = find_buyer(session, user)
        unpaid = list(session.execute(
            select(Order).join(CartOrder, CartOrder.order_ref == Order.ref)
            .where(CartOrder.user_id == buyer.id, Order.status == UNPAID)
            .order_by(Order.no.desc())).scalars())
        held = {i.sku: i.qty for i in items_of(session, buyer.id)}
        return [o.ref for n, o in enumerate(unpaid) if n > 0 or any(
            held.get(sku, 0) < qty for sku, qty in order_lines(session, o))]

    return db.read(work)


def _one_open(db: Database, user: str, at: datetime) -> list[str]:
    """Of the cart's orders awaiting payment only the newest stays payable, and only while
    the cart still holds its lines; the others are cancelled. Returns the cancelled refs."""
    return [r for r in _losers(db, user)
            if db.run(partial(_cancel, ref=r, user=user, at=at))]


def open_checkout(db: Database, *, user: str, pay_points: object = None, channel: str,
                  method: str, key: str, at: datetime | None = None) -> dict[str, Any]:
    """One order awaiting a channel's payment for the whole cart (`checkout.open_checkout`
    with `lines=`), replacing the cart's earlier unpaid order; `token` None when points paid
    it all. The cart keeps its lines until the order is paid. The same `key` answers the same
    order. Returns `checkout.open_checkout`'s result plus `goods` (an address is needed)."""
    when = at or now()
    done = _replayed(db, key)
    if done is not None:  # a repeated tap: the same order, whatever the cart holds now
        lines, open_ref = [{"sku": x["sku"], "qty": x["qty"]} for x in done["lines"]], None
    else:
        lines, open_ref = _ready(db, user)
    opened = checkout.open_checkout(db, user=user, lines=lines, pay_points=pay_points,
                                    channel=channel, method=method, key=key, at=when,
                                    replaces=open_ref if open_ref else None)
    _remember(db, user, opened["order"], when)
    if done is None and opened["order"] in _one_open(db, user, when):
        # a newer checkout of the cart won, or a payment took the cart's lines meanwhile
        raise Refusal("not_payable", "cancelled")
    return {**opened, "goods": _ships(db, opened["order"])}


def pay_from_wallet(db: Database, *, user: str, pay_points: object = None, key: str,
                    at: datetime | None = None) -> dict[str, Any]:
    """Buy the whole cart now from the wallet (points first, if given): one transaction
    cancels the cart's order still awaiting payment (its invoice can no longer be paid, as
    `checkout.open_checkout(replaces=…)`) and records the cart's order as paid
    (`orders.record_paid_order` with `lines=`); then the cart is emptied of its lines."""
    when = at or now()
    done = _replayed(db, key)
    if done is not None:  # a repeated tap: the same receipt, though the cart is empty now
        return done
    lines, open_ref = _ready(db, user)

    def work(session: Session) -> dict[str, Any]:
        book = Book(session)
        if open_ref is not None:
            checkout.cancel_replaced(book, ref=open_ref, user=user, at=when, key=key)
        return orders.record_paid_order(book, user=user, lines=lines, at=when,
                                        pay_points=pay_points, method="wallet", key=key)

    result = db.run(work, label="cart_wallet")
    _remember(db, user, result["order"], when)
    _one_open(db, user, when)  # a checkout that raced this payment: its invoice closed
    return result


def _ships(db: Database, order: str) -> bool:
    """Whether a line of `order` is physical goods (the channel asks for an address)."""
    def work(session: Session) -> bool:
        row = session.execute(select(Order).where(Order.ref == order)).scalar_one()
        skus = {sku for sku, _ in order_lines(session, row)}
        kinds = session.execute(select(Product.kind).where(Product.sku.in_(skus))).scalars()
        return any(kind == "goods" for kind in kinds)

    return db.read(work)
