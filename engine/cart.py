"""The cart (docs/cart.md): a buyer's lines kept between messages, bought in one order.

A cart holds at most `MAX_LINES` lines, one per product, each 1–`orders.MAX_QTY` units, in
the order they were first added. Nothing here moves money: a cart is bought through the one
purchase path with `lines=` (`checkout.open_checkout` for a channel's payment,
`service.buy` from the wallet), and the order it opened is remembered (`CartOrder`).

The cart empties when its order is recorded as paid, not when an invoice is merely opened:
every cart action first looks at the cart's orders (`_tidy`) — a paid one takes its lines
out of the cart, one cancelled unpaid is forgotten and leaves the cart as it was. The
payment paths call `tidy` right after a payment commits, so the cart is empty at once; if
that call is lost, the buyer's next look at the cart does the same. Either way exactly once:
the `CartOrder` row is deleted in the transaction that takes the lines out.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
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

from . import checkout, orders, receipt
from .book import Book
from .errors import Refusal
from .money import into_pool, out_of_pool
from .orders import MAX_QTY
from .times import now
from .views import current_price, store_config

MAX_LINES = 50
UNPAID = "awaiting_payment"
FORGOTTEN = "cancelled"  # an order that was never paid: the cart stays as it was


def _buyer(session: Session, user: str, *, lock: bool = False) -> User:
    """The buyer's row; locked, it orders every change to one cart (two taps at once)."""
    stmt = select(User).where(User.handle == user)
    row = session.execute(stmt.with_for_update() if lock else stmt).scalar_one_or_none()
    if row is None:
        raise Refusal("unknown_user", user)
    return row


def _items(session: Session, user_id: int) -> list[CartItem]:
    return list(session.execute(select(CartItem).where(CartItem.user_id == user_id)
                                .order_by(CartItem.position, CartItem.id)).scalars())


def _order_lines(session: Session, order: Order) -> list[tuple[str, int]]:
    rows = session.execute(select(OrderLine.sku, OrderLine.qty).where(
        OrderLine.order_no == order.no).order_by(OrderLine.line_no)).all()
    return [(sku, qty) for sku, qty in rows] or [(order.sku, order.qty)]


def _tidy(session: Session, buyer: User) -> int:
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
            items = {i.sku: i for i in _items(session, buyer.id)}
            for sku, qty in _order_lines(session, order):
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
    return db.run(lambda s: _tidy(s, _buyer(s, user, lock=True)))


def _product(session: Session, sku: object) -> Product:
    product = session.get(Product, sku) if isinstance(sku, str) else None
    if product is None and isinstance(sku, str):
        # SKUs are typed by people: accept a unique case-insensitive match (as `quote`)
        found = session.execute(select(Product).where(func.lower(Product.sku) == sku.lower())
                                ).scalars().all()
        product = found[0] if len(found) == 1 else None
    if product is None:
        raise Refusal("unknown_product", str(sku))
    return product


def _change(db: Database, user: str, sku: object, delta: int, at: datetime | None,
            *, adding: bool = False) -> dict[str, Any]:
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        buyer = _buyer(session, user, lock=True)
        _tidy(session, buyer)
        items = _items(session, buyer.id)
        product = _product(session, sku)
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
        return _view(session, buyer)

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
        buyer = _buyer(session, user, lock=True)
        _tidy(session, buyer)
        if isinstance(sku, str):
            session.execute(delete(CartItem).where(CartItem.user_id == buyer.id,
                                                   CartItem.sku == sku))
        return _view(session, buyer)

    return db.run(work)


def empty(db: Database, *, user: str) -> dict[str, Any]:
    """Take every line out of the cart."""
    def work(session: Session) -> dict[str, Any]:
        buyer = _buyer(session, user, lock=True)
        _tidy(session, buyer)
        session.execute(delete(CartItem).where(CartItem.user_id == buyer.id))
        return _view(session, buyer)

    return db.run(work)


def view(db: Database, *, user: str) -> dict[str, Any]:
    """The cart as the buyer sees it (after `_tidy`):

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
        buyer = _buyer(session, user, lock=True)
        _tidy(session, buyer)
        return _view(session, buyer)

    return db.run(work)


def _view(session: Session, buyer: User) -> dict[str, Any]:
    cfg = store_config(session)
    price = current_price(session, cfg)
    lines: list[dict[str, Any]] = []
    held = _held(session, buyer)
    for item in _items(session, buyer.id):
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


def _ready(db: Database, user: str) -> tuple[list[dict[str, Any]], str | None]:
    """The cart's lines to buy, and its order still awaiting payment (replaced by the new
    one: a buyer never holds two invoices for one cart). Refused: `cart_empty`, and the
    first line's `product_inactive` / `out_of_stock` (the engine checks stock again, under
    lock, when it records the order)."""
    def work(session: Session) -> tuple[list[dict[str, Any]], str | None]:
        buyer = _buyer(session, user, lock=True)
        _tidy(session, buyer)
        seen = _view(session, buyer)
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
    """The order came from the cart (once), then `_tidy`: an order paid at once (points
    for all of it, or the wallet) takes its lines out now."""
    def work(session: Session) -> None:
        buyer = _buyer(session, user, lock=True)
        if session.get(CartOrder, order) is None:
            session.add(CartOrder(order_ref=order, user_id=buyer.id, created_at=at))
            session.flush()
        _tidy(session, buyer)

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
        buyer = _buyer(session, user)
        unpaid = list(session.execute(
            select(Order).join(CartOrder, CartOrder.order_ref == Order.ref)
            .where(CartOrder.user_id == buyer.id, Order.status == UNPAID)
            .order_by(Order.no.desc())).scalars())
        held = {i.sku: i.qty for i in _items(session, buyer.id)}
        return [o.ref for n, o in enumerate(unpaid) if n > 0 or any(
            held.get(sku, 0) < qty for sku, qty in _order_lines(session, o))]

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
        skus = {sku for sku, _ in _order_lines(session, row)}
        kinds = session.execute(select(Product.kind).where(Product.sku.in_(skus))).scalars()
        return any(kind == "goods" for kind in kinds)

    return db.read(work)
