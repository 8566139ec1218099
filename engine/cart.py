"""The cart (docs/cart.md): a buyer's lines kept between messages, bought in one order.

A cart holds at most `MAX_LINES` lines, one per product, each 1–`orders.MAX_QTY` units, in
the order they were first added. Nothing here moves money: a cart is bought through the one
purchase path with `lines=` (engine/cart_checkout.py: `open_checkout` for a channel's
payment, `pay_from_wallet` from the wallet), and the order it opened is remembered
(`CartOrder`).

The cart empties when its order is recorded as paid, not when an invoice is merely opened:
every cart action first looks at the cart's orders (`apply_paid_orders`) — a paid one takes
its lines out of the cart, one cancelled unpaid is forgotten and leaves the cart as it was.
The payment paths call `tidy` right after a payment commits, so the cart is empty at once; if
that call is lost, the buyer's next look at the cart does the same. Either way exactly once:
the `CartOrder` row is deleted in the transaction that takes the lines out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import (
    CartItem,
    CartOrder,
    Order,
    OrderLine,
    Product,
    ProductText,
    User,
)

from .catalogue import product_named
from .errors import Refusal
from .money import into_pool, out_of_pool
from .orders import MAX_QTY
from .times import now
from .views import current_price, store_config

MAX_LINES = 50
UNPAID = "awaiting_payment"
FORGOTTEN = "cancelled"  # an order that was never paid: the cart stays as it was


def find_buyer(session: Session, user: str, *, lock: bool = False) -> User:
    """The buyer's row; locked, it orders every change to one cart (two taps at once)."""
    stmt = select(User).where(User.handle == user)
    row = session.execute(stmt.with_for_update() if lock else stmt).scalar_one_or_none()
    if row is None:
        raise Refusal("unknown_user", user)
    return row


def items_of(session: Session, user_id: int) -> list[CartItem]:
    """The cart's lines, in the order they were first added."""
    return list(session.execute(select(CartItem).where(CartItem.user_id == user_id)
                                .order_by(CartItem.position, CartItem.id)).scalars())


def order_lines(session: Session, order: Order) -> list[tuple[str, int]]:
    """An order's (sku, qty) lines; an order of one line may have no `OrderLine` row yet."""
    rows = session.execute(select(OrderLine.sku, OrderLine.qty).where(
        OrderLine.order_no == order.no).order_by(OrderLine.line_no)).all()
    return [(sku, qty) for sku, qty in rows] or [(order.sku, order.qty)]


def apply_paid_orders(session: Session, buyer: User) -> int:
    """Take the lines of the cart's paid orders out of the cart; forget the cancelled ones.
    Returns how many orders were paid."""
    marks = session.execute(select(CartOrder).where(CartOrder.user_id == buyer.id)
                            .order_by(CartOrder.created_at).with_for_update()).scalars().all()
    paid = 0
    for mark in marks:
        order = session.execute(select(Order).where(Order.ref == mark.order_ref)
                                ).scalar_one_or_none()
        if order is not None and order.status == UNPAID:
            continue
        if order is not None and order.status != FORGOTTEN:
            paid += 1
            items = {i.sku: i for i in items_of(session, buyer.id)}
            for sku, qty in order_lines(session, order):
                item = items.get(sku)
                if item is None:
                    continue
                item.qty -= qty
                if item.qty <= 0:
                    session.delete(item)
                    del items[sku]
        session.delete(mark)
    session.flush()
    return paid


def _held(session: Session, buyer: User) -> dict[str, int]:
    """Units the buyer's own cart order awaiting payment holds (its stock is taken): they
    come back when that order is replaced, so they count as left for this cart."""
    rows = session.execute(
        select(OrderLine.sku, func.sum(OrderLine.qty))
        .join(Order, Order.no == OrderLine.order_no)
        .join(CartOrder, CartOrder.order_ref == Order.ref)
        .where(CartOrder.user_id == buyer.id, Order.status == UNPAID)
        .group_by(OrderLine.sku)).all()
    return {sku: int(n) for sku, n in rows}


def _left(session: Session, buyer: User, product: Product) -> int | None:
    """How many units of `product` this buyer's cart may hold: None for unlimited."""
    if product.stock is None:
        return None
    return int(product.stock) + _held(session, buyer).get(product.sku, 0)


def tidy(db: Database, *, user: str) -> int:
    """After a payment: the lines of the buyer's paid cart orders leave the cart (see above)."""
    return db.run(lambda s: apply_paid_orders(s, find_buyer(s, user, lock=True)))


def _change(db: Database, user: str, sku: object, delta: int, at: datetime | None,
            *, adding: bool = False) -> dict[str, Any]:
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        buyer = find_buyer(session, user, lock=True)
        apply_paid_orders(session, buyer)
        items = items_of(session, buyer.id)
        product = product_named(session, sku)
        item = next((i for i in items if i.sku == product.sku), None)
        if item is None and not adding:
            raise Refusal("not_in_cart", product.sku)
        if delta > 0 and not product.active:
            raise Refusal("product_inactive", product.sku)
        qty = (item.qty if item else 0) + delta
        if qty > MAX_QTY:
            raise Refusal("invalid_amount", "quantity is a whole number 1-10000")
        left = _left(session, buyer, product)
        if delta > 0 and left is not None and qty > left:
            raise Refusal("out_of_stock", product.sku)
        if item is None:
            if len(items) >= MAX_LINES:
                raise Refusal("cart_full", str(MAX_LINES))
            last = max((i.position for i in items), default=0)
            session.add(CartItem(user_id=buyer.id, sku=product.sku, qty=qty,
                                 position=last + 1, updated_at=when))
        elif qty <= 0:
            session.delete(item)
        else:
            item.qty, item.updated_at = qty, when
        session.flush()
        return view_of(session, buyer)

    return db.run(work)


def add(db: Database, *, user: str, sku: object, qty: int = 1,
        at: datetime | None = None) -> dict[str, Any]:
    """Put `qty` of `sku` in the cart (added to its line if it has one). Refused:
    `unknown_product`, `product_inactive`, `invalid_amount` (a line above 10000),
    `out_of_stock` (more than the stock), `cart_full` (a 51st line). Returns `view`."""
    if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
        raise Refusal("invalid_amount", "quantity is a whole number 1-10000")
    return _change(db, user, sku, qty, at, adding=True)


def change(db: Database, *, user: str, sku: object, delta: int,
           at: datetime | None = None) -> dict[str, Any]:
    """The +/− buttons: one line's quantity up or down by `delta`; at 0 the line goes.
    Refused: `not_in_cart`, `invalid_amount`, `out_of_stock` (only when adding)."""
    if isinstance(delta, bool) or not isinstance(delta, int) or not -MAX_QTY <= delta <= MAX_QTY:
        raise Refusal("invalid_amount", "quantity is a whole number 1-10000")
    return _change(db, user, sku, delta, at)


def remove(db: Database, *, user: str, sku: object) -> dict[str, Any]:
    """Take one line out of the cart (nothing happens when it is not there)."""
    def work(session: Session) -> dict[str, Any]:
        buyer = find_buyer(session, user, lock=True)
        apply_paid_orders(session, buyer)
        if isinstance(sku, str):
            session.execute(delete(CartItem).where(CartItem.user_id == buyer.id,
                                                   CartItem.sku == sku))
        return view_of(session, buyer)

    return db.run(work)


def empty(db: Database, *, user: str) -> dict[str, Any]:
    """Take every line out of the cart."""
    def work(session: Session) -> dict[str, Any]:
        buyer = find_buyer(session, user, lock=True)
        apply_paid_orders(session, buyer)
        session.execute(delete(CartItem).where(CartItem.user_id == buyer.id))
        return view_of(session, buyer)

    return db.run(work)


def view(db: Database, *, user: str) -> dict[str, Any]:
    """The cart as the buyer sees it (after `apply_paid_orders`):

    `lines`: [{sku, name, name_en, qty, price, total, scheme, kind, stock, active, problem}] where
    `problem` is None, `product_inactive` or `out_of_stock` (more than is left); `stock` is
    what is left for this cart (None: unlimited; counting the units the cart's own unpaid
    order holds, which come back when it is replaced); `total`,
    `count` (lines), `currency`, `goods` (some line ships: ask for an address), `ready` (not
    empty and no problem), `paused`, the buyer's `wallet`, `points`, `usable_points` and
    `usable_value` (the most points that can pay, and their value), and `earns`: what paying
    it all in cash would earn at today's settings (SPEC §9: `entry` — the queue entries'
    amount, 0 below `min_order` — `queue_cash`, `min_order`, `points` micro at today's price,
    `price_micro`). Estimates, as `engine.outlook`: settlement decides."""
    def work(session: Session) -> dict[str, Any]:
        buyer = find_buyer(session, user, lock=True)
        apply_paid_orders(session, buyer)
        return view_of(session, buyer)

    return db.run(work)


def view_of(session: Session, buyer: User) -> dict[str, Any]:
    """`view` inside a transaction that has already applied the cart's paid orders."""
    cfg = store_config(session)
    price = current_price(session, cfg)
    lines: list[dict[str, Any]] = []
    held = _held(session, buyer)
    for item in items_of(session, buyer.id):
        p = session.get(Product, item.sku)
        if p is None:  # products are never deleted; a line for none is dropped
            continue
        texts = session.get(ProductText, item.sku)
        problem = None
        if not p.active:
            problem = "product_inactive"
        left = None if p.stock is None else p.stock + held.get(p.sku, 0)
        if problem is None and left is not None and item.qty > left:
            problem = "out_of_stock"
        lines.append({"sku": p.sku, "name": p.name or p.sku,
                      "name_en": texts.name_en if texts else None, "qty": item.qty,
                      "price": p.price, "total": p.price * item.qty, "scheme": p.scheme,
                      "kind": p.kind, "stock": left, "active": p.active,
                      "problem": problem})
    total = sum(line["total"] for line in lines)
    queue_cash = sum(line["total"] for line in lines if line["scheme"] in ("queue", "both"))
    minted = sum(price.points_for(out_of_pool(into_pool(line["total"] * cfg.pool_rate)
                                              * cfg.mint_rate))
                 for line in lines if line["scheme"] in ("points", "both"))
    usable = min(buyer.points, price.most_points_within(total))
    return {
        "lines": lines, "total": total, "count": len(lines), "currency": cfg.currency,
        "goods": any(line["kind"] == "goods" for line in lines),
        "ready": bool(lines) and all(line["problem"] is None for line in lines),
        "paused": cfg.paused, "wallet": buyer.wallet, "points": buyer.points,
        "usable_points": usable, "usable_value": price.value_of(usable),
        "earns": {"entry": queue_cash if queue_cash >= cfg.min_order else 0,
                  "queue_cash": queue_cash, "min_order": cfg.min_order, "points": minted,
                  "price_micro": price.display_micro()},
    }
