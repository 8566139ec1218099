"""What the buyer is told about an order, and finding one by its ref (SPEC §8, §9)."""

from __future__ import annotations

import json
from typing import Any

from storage import queries
from storage.rows import OrderRow

from .book import Book
from .errors import Refusal
from .lines import line_results


def find(book: Book, ref: object, *, lock: bool = True) -> OrderRow | None:
    """The order with this ref: one recorded in this transaction, or from the database."""
    if not isinstance(ref, str):
        return None
    for order in book.rows.known(OrderRow):
        if order.ref == ref:
            return order
    return queries.order_by_ref(book.rows, ref, lock=lock)


def locked(book: Book, ref: object) -> OrderRow:
    order = find(book, ref)
    if order is None:
        raise Refusal("unknown_order", str(ref))
    return order


def order_result(book: Book, order: OrderRow) -> dict[str, Any]:
    """What the buyer is told about an order; rebuilt from the rows for idempotent retries.
    `sku`, `qty`, `entry` and `matures_at` are the first line's; `minted` and `accelerated`
    the whole order's; `lines` each line's."""
    user = book.user_by_id(order.user_id)
    referrer = book.handle_of(user.referrer_id) if user.referrer_id else None
    tz = book.cfg.timezone

    def local(at: Any) -> str | None:
        return at.astimezone(tz).isoformat() if at else None

    return {
        "order": order.ref, "status": order.status, "user": user.handle, "sku": order.sku,
        "qty": order.qty, "total": order.total, "cash": order.cash,
        "points_used": order.points_used, "points_value": order.points_value,
        "settles_at": local(order.settles_at), "matures_at": local(order.matures_at),
        "received_at": local(order.received_at),
        "entry": order.entry_seq, "minted": order.minted, "accelerated": order.accelerated,
        "referrer": referrer,
        "lines": line_results(book, order),
    }


def replayed(book: Book, key: str | None) -> dict[str, Any] | None:
    """The result of the order recorded under this idempotency key before, if any."""
    if key is None:
        return None
    found = book.stored(key)
    if found is None:
        return None
    body = json.loads(found[0])
    order = find(book, body.get("order"), lock=False)
    assert order is not None, key
    result = {**order_result(book, order), "replayed": True}
    if body.get("paid_while_paused"):
        result["paid_while_paused"] = True
    return result
