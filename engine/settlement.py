"""Settlement (SPEC §8, §9): an order's rebates, granted line by line when it settles.

A line whose scheme has `queue` adds its contribution to the queue pool, then — when the
order's queue cash (its queue lines' cash together) reaches `min_order` and the line's cash
is above zero — gets an entry of its own cash, maturing by its product's lock from the
payment date, and pays the referrer's acceleration. A line whose scheme has `points` and
whose cash is above zero then mints. A one-line order is exactly SPEC §3 and §4.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from storage import queries
from storage.rows import OrderLineRow, OrderRow, UserRow

from . import journal, points, queue
from .book import Book
from .lines import line_terms, lines_of
from .money import parse_rate

QUEUE_SCHEMES = ("queue", "both")
POINTS_SCHEMES = ("points", "both")


def settle_due(book: Book, at: datetime) -> list[OrderRow]:
    """Settle every pending order due by `at`, in the order they were recorded (SPEC §8),
    each followed by the forced exit; the orders settled (`order_result` tells each: a
    purchase that settles itself does not ask)."""
    settled: list[OrderRow] = []
    after = 0
    while True:
        batch = queries.orders_due(book.rows, at, after)
        more = len(batch) == queries.DUE_PAGE
        upto = batch[-1].no if more else None
        # Orders recorded (or changed) in this transaction are in memory, not yet stored.
        due = {o.no: o for o in batch}
        due.update((o.no, o) for o in book.rows.known(OrderRow)
                   if o.no > after and (upto is None or o.no <= upto))
        for no in sorted(due):
            order = due[no]
            if order.status != "pending" or order.settles_at is None or order.settles_at > at:
                continue
            settle(book, order, at)
            settled.append(order)
            points.forced_exits(book, at, f"settle:{order.ref}")
        if not more:
            return settled
        after = batch[-1].no


@dataclass
class _Granted:
    """What an order's settlement paid, over its lines."""

    entries: list[int] = field(default_factory=list)  # entry seqs, in line order
    entered: int = 0  # cash that became entries
    accelerated: list[tuple[int, int]] = field(default_factory=list)  # (seq, paid)
    due: int = 0  # acceleration owed before the pool's cap
    capped: queue.Acceleration | None = None  # the first acceleration the pool capped


def settle(book: Book, order: OrderRow, at: datetime) -> None:
    """Grant an order's rebates on the terms frozen when it was recorded, line by line."""
    terms = json.loads(order.terms)
    buyer = book.user_by_id(order.user_id)
    lines = lines_of(book, order)
    per_line = line_terms(terms)
    queue_cash = sum(line.cash for line, t in zip(lines, per_line, strict=True)
                     if t["scheme"] in QUEUE_SCHEMES)
    # never to the buyer's own account (linking drops such an edge; belt and braces)
    referrer = book.user_by_id(buyer.referrer_id) \
        if buyer.referrer_id is not None and buyer.referrer_id != buyer.id else None
    p = journal.Postings()
    granted = _Granted()
    enters = queue_cash >= int(terms["min_order"])
    for line, t in zip(lines, per_line, strict=True):
        _settle_line(book, order, line, t, terms, buyer, referrer, enters, p, granted, at)
    order.entry_seq = granted.entries[0] if granted.entries else None
    order.minted = sum(line.minted for line in lines)
    order.accelerated = sum(line.accelerated for line in lines)
    order.status = "settled"
    order.settled_at = at
    key = f"settle:{order.ref}"
    body: dict[str, Any] = {"order": order.ref, "entry": order.entry_seq, "minted": order.minted,
                            "accelerated": [list(a) for a in granted.accelerated]}
    if len(lines) > 1:
        body["lines"] = [{"entry": line.entry_seq, "minted": line.minted,
                          "accelerated": line.accelerated} for line in lines]
    book.record(key=key, kind="settle", at=at, postings=p, body=body)
    _tell(book, order, buyer, referrer, granted, terms, at)


def _settle_line(book: Book, order: OrderRow, line: OrderLineRow, t: dict[str, Any],
                 terms: dict[str, Any], buyer: UserRow, referrer: UserRow | None, enters: bool,
                 p: journal.Postings, granted: _Granted, at: datetime) -> None:
    ref = f"order:{order.ref}"
    cash = line.cash
    if t["scheme"] in QUEUE_SCHEMES:
        queue.contribute(book, cash, parse_rate(t["margin"]), parse_rate(terms["pool_share"]),
                         p, ref)
        if enters and cash > 0:
            matures = line.matures_at or order.matures_at
            assert matures is not None
            entry = queue.add_entry(book, buyer, order.no, cash, matures, at)
            line.entry_seq = entry.seq
            granted.entries.append(entry.seq)
            granted.entered += cash
            if referrer is not None:
                accel = queue.accelerate(book, referrer, cash, parse_rate(terms["accel_rate"]),
                                         p, at)
                line.accelerated = sum(paid for _seq, paid in accel.paid)
                granted.accelerated += accel.paid
                granted.due += accel.due
                if accel.capped_by_pool and granted.capped is None:
                    granted.capped = accel
    if t["scheme"] in POINTS_SCHEMES and cash > 0:
        line.minted = points.mint(book, buyer, cash, parse_rate(terms["pool_rate"]),
                                  parse_rate(terms["mint_rate"]), p, ref)


def _tell(book: Book, order: OrderRow, buyer: UserRow, referrer: UserRow | None,
          granted: _Granted, terms: dict[str, Any], at: datetime) -> None:
    """The buyer's and the referrer's messages, in the settlement's transaction."""
    key = f"settle:{order.ref}"
    book.notify(buyer, "order_settled", key, at, order=order.ref, entry=order.entry_seq,
                amount=granted.entered,
                matures_at=order.matures_at.astimezone(book.cfg.timezone).isoformat()
                if order.matures_at else None,  # store-local, as the buyer reads it
                minted=order.minted)
    capped = granted.capped
    if referrer is not None and granted.entries and (order.accelerated or capped is not None):
        # A payment the pool capped (down to nothing, even) is explained with its figures.
        extra = ({"due": granted.due, "pool": capped.pool, "cash": granted.entered,
                  "rate": terms["accel_rate"]} if capped is not None else {})
        book.notify(referrer, "acceleration", f"accel:{order.ref}", at, amount=order.accelerated,
                    buyer=buyer.display_name or buyer.handle, order=order.ref, **extra)
