"""What the chat shows about delivery (docs/delivery.md): read side only.

`buyer_orders` — a buyer's latest orders with where each stands (paid, shipped and how,
received, settled, refunded) and when its rebates come; `to_ship` — the operator's list of
paid goods orders not shipped yet, with where each goes. Each one read-only snapshot.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Order, OrderLine, Product, SavedAddress, Shipment, User

from .config import stored
from .delivery import PAID, shipment_facts

GOODS = exists().where(OrderLine.order_no == Order.no, Product.sku == OrderLine.sku,
                       Product.kind == "goods")


def _lines(session: Session, nos: list[int]) -> dict[int, list[tuple[str, int]]]:
    """Each order's lines (sku, qty) in line order."""
    out: dict[int, list[tuple[str, int]]] = {n: [] for n in nos}
    if nos:
        for no, sku, qty in session.execute(
                select(OrderLine.order_no, OrderLine.sku, OrderLine.qty)
                .where(OrderLine.order_no.in_(nos))
                .order_by(OrderLine.order_no, OrderLine.line_no)):
            out[no].append((sku, qty))
    return out


def _settle_days(terms: str, default: int) -> int:
    """The return window the order was recorded with (SPEC §9), else today's."""
    try:
        value = json.loads(terms).get("settle_days", default)
    except (ValueError, AttributeError):
        return default
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else default


def buyer_orders(db: Database, *, user: str, limit: int = 10) -> dict[str, Any]:
    """The buyer's latest `limit` orders, newest first: status, lines, delivery, and when
    the rebates come (`settles_at`; or, not received yet under `settle_from = receipt`,
    `settle_days` after receipt)."""
    def work(session: Session) -> dict[str, Any]:
        cfg = stored(session)
        uid = session.execute(select(User.id).where(User.handle == user)).scalar_one()
        rows = session.execute(
            select(Order, Shipment, GOODS.label("goods"))
            .outerjoin(Shipment, Shipment.order_ref == Order.ref)
            .where(Order.user_id == uid).order_by(Order.no.desc()).limit(limit)).all()
        lines = _lines(session, [o.no for o, _s, _g in rows])
        saved = session.get(SavedAddress, uid)
        items = []
        for o, ship, goods in rows:
            item = {
                "order": o.ref, "status": o.status, "lines": lines[o.no] or [(o.sku, o.qty)],
                "total": o.total, "cash": o.cash, "currency": o.currency, "goods": bool(goods),
                "paid_at": o.paid_at, "settles_at": o.settles_at, "matures_at": o.matures_at,
                "entry": o.entry_seq, "minted": o.minted,
                "settle_days": _settle_days(o.terms, cfg.settle_days), **shipment_facts(ship)}
            if item["received_at"] is None:  # received without a shipment (SPEC §9 receive)
                item["received_at"] = o.received_at
            if item["address"] is None and saved is not None:  # it ships there (docs)
                item.update(name=saved.name, phone=saved.phone, address=saved.address)
            items.append(item)
        return {"orders": items, "timezone": cfg.timezone, "settle_from": cfg.settle_from}

    return db.read(work)


def to_ship(db: Database, *, limit: int = 20) -> dict[str, Any]:
    """Paid goods orders (not refunded) not shipped or received yet, oldest payment first,
    with the buyer, the lines and the address (the order's own, else the buyer's saved one;
    None when neither is known) — and `count`, how many there are in all."""
    def work(session: Session) -> dict[str, Any]:
        waiting = (Order.status.in_(PAID), Order.received_at.is_(None), GOODS,
                   Shipment.shipped_at.is_(None), Shipment.received_at.is_(None))
        count = session.execute(select(func.count()).select_from(Order).outerjoin(
            Shipment, Shipment.order_ref == Order.ref).where(*waiting)).scalar_one()
        rows = session.execute(
            select(Order, Shipment, User.handle, User.display_name, SavedAddress)
            .join(User, User.id == Order.user_id)
            .outerjoin(Shipment, Shipment.order_ref == Order.ref)
            .outerjoin(SavedAddress, SavedAddress.user_id == Order.user_id)
            .where(*waiting).order_by(Order.paid_at, Order.no).limit(limit)).all()
        lines = _lines(session, [r[0].no for r in rows])
        items = []
        for o, ship, handle, display, saved in rows:
            where = ship if ship is not None and ship.address else saved
            items.append({
                "order": o.ref, "user": handle, "display_name": display, "paid_at": o.paid_at,
                "lines": lines[o.no] or [(o.sku, o.qty)], "total": o.total,
                "currency": o.currency, "held": bool(ship.held) if ship is not None else False,
                "name": where.name if where is not None else None,
                "phone": where.phone if where is not None else None,
                "address": where.address if where is not None else None})
        return {"orders": items, "count": count, "timezone": stored(session).timezone}

    return db.read(work)
