"""An order's lines and the stock they take (SPEC §9).

A request names its lines either as one `sku`/`qty` (the shorthand) or as a `lines` list;
`requested` turns either into `(sku, qty)` pairs. An order's cash is split over its lines
(`split_cash`); its terms (frozen when it is recorded) hold each line's product terms
(`line_terms`). A one-line order's line mirrors its order row, so `lines_of` knows it without
a read — the one-line purchase path costs one INSERT more than before, nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage import queries
from storage.rows import OrderLineRow, OrderRow

from .book import Book
from .errors import Refusal

MAX_LINES = 50


def requested(sku: object, qty: object, lines: object) -> list[tuple[object, object]]:
    """The request's lines as (sku, qty), unchecked; `invalid_event` when it gives both forms,
    neither, or a `lines` that is not a list of 1-50 objects with a `sku`."""
    if lines is None:
        if sku is None:
            raise Refusal("invalid_event", "a sku or lines")
        return [(sku, qty)]
    if sku is not None:
        raise Refusal("invalid_event", "a sku or lines, not both")
    if not isinstance(lines, list) or not 1 <= len(lines) <= MAX_LINES:
        raise Refusal("invalid_event", f"lines is a list of 1-{MAX_LINES} lines")
    out: list[tuple[object, object]] = []
    for line in lines:
        if not isinstance(line, dict) or "sku" not in line:
            raise Refusal("invalid_event", "a line is an object with a sku")
        out.append((line["sku"], line.get("qty", 1)))
    return out


def split_cash(cash: int, totals: Sequence[int]) -> list[int]:
    """SPEC §9: each line but the last gets `floor(cash × line total ÷ order total)`, the last
    the rest."""
    whole = sum(totals)
    shares = [cash * t // whole for t in totals[:-1]]
    return [*shares, cash - sum(shares)]


def line_terms(terms: dict[str, Any]) -> list[dict[str, Any]]:
    """Each line's frozen product terms (margin, scheme, lock_days, unit_price, sku); a
    one-line order's are its order's own."""
    found: list[dict[str, Any]] | None = terms.get("lines")
    return found if found is not None else [terms]


def lines_of(book: Book, order: OrderRow) -> list[OrderLineRow]:
    """The order's lines, in order: those this transaction holds (an order's lines are added
    or read together), else — one line — the line its order row mirrors (as stored: nothing
    to read), else read."""
    held = book.rows.peek(OrderLineRow, (order.no, 1))
    if held is not None:
        found = [held]
        while (held := book.rows.peek(OrderLineRow, (order.no, len(found) + 1))) is not None:
            found.append(held)
        return found
    if _MANY in order.terms:
        return queries.order_lines(book.rows, order.no)
    # The stored line equals the order's first-line columns as stored: settlement and
    # payment change both together, and the migration copied them (0012).
    stored = dict(zip(OrderRow.MUTABLE, order._saved or order._mutable(), strict=True))
    line = OrderLineRow(order_no=order.no, line_no=1, sku=order.sku, qty=order.qty,
                        unit_price=order.total // order.qty, total=order.total, cash=order.cash,
                        matures_at=stored["matures_at"], entry_seq=stored["entry_seq"],
                        minted=stored["minted"], accelerated=stored["accelerated"])
    return [book.rows.adopt(line)]


# Only an order of several lines has `lines` in its terms (canonical JSON; no value in them
# can hold a quote), so this tells without parsing them.
_MANY = '"lines":'


def line_results(book: Book, order: OrderRow) -> list[dict[str, Any]]:
    """What the buyer is told about each line."""
    return [{"sku": line.sku, "qty": line.qty, "total": line.total, "cash": line.cash,
             "entry": line.entry_seq, "minted": line.minted, "accelerated": line.accelerated}
            for line in lines_of(book, order)]


# -- stock ----------------------------------------------------------------------------------
def wanted(pairs: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Units asked for per sku (a sku may be on several lines)."""
    out: dict[str, int] = {}
    for sku, qty in pairs:
        out[sku] = out.get(sku, 0) + qty
    return out


def check_stock(book: Book, asked: dict[str, int]) -> list[tuple[int, str]]:
    """`out_of_stock` when any counted product has fewer units than asked for; else the
    moves that take them (for `move_stock`). Read under the head lock every writer holds, so
    two buyers of the last unit are served in turn."""
    counted = [sku for sku in asked if (p := book.product(sku)) is not None and p.limited]
    if not counted:
        return []
    have = queries.stock_of(book.rows, counted)
    for sku in counted:
        left = have.get(sku)
        if left is not None and asked[sku] > left:
            raise Refusal("out_of_stock", sku)
    return [(-asked[sku], sku) for sku in counted]


def take_stock(book: Book, moves: list[tuple[int, str]]) -> None:
    if moves:
        queries.move_stock(book.rows, moves)


def give_back(book: Book, order: OrderRow, terms: dict[str, Any]) -> None:
    """A refunded or cancelled order puts back the units it took (SPEC §9)."""
    back: dict[str, int] = {}
    for line, t in zip(lines_of(book, order), line_terms(terms), strict=True):
        if t.get("took_stock"):
            back[line.sku] = back.get(line.sku, 0) + line.qty
    if back:
        queries.move_stock(book.rows, [(n, sku) for sku, n in back.items()])
