"""Digital goods (issue 16): codes uploaded by operators, one given to each unit paid, exactly
once (docs/digital.md).

- `add` (`/codes SKU`): new codes of a digital product; units paid while none was left
  (owed) get theirs first; the product's stock becomes its unused codes less the units
  orders awaiting payment hold.
- `deliver` is called by every payment (`orders._pay`), in the transaction that records it:
  each unit of a digital line takes the oldest unused code, and the buyer's message with
  the codes is written to the outbox in the same transaction. A crash before the commit
  leaves nothing (the payment's retry delivers); after it, the codes are the order's and
  the outbox sends the message once. Buyers are serialised by the journal head lock every
  writer holds, and a code is taken only while it is still unused, so two buyers never get
  one code.
- `refunded`: a refund does not take back codes already given (they may have been used);
  the stock the refund put back for them is taken out again, and units still owed are
  owed no more.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, insert, select, update
from sqlalchemy.orm import Session

from storage import queries
from storage.db import Database
from storage.models import Code, Order, OrderLine, Product
from storage.rows import OrderLineRow, OrderRow, UserRow

from . import accounts
from .accounts import KINDS
from .book import Book
from .errors import Refusal
from .lines import line_terms, lines_of
from .times import now

DIGITAL = "digital"
GOODS = "goods"
MAX_CODE = 255
MAX_UPLOAD = 5000
NOTICE = "digital_codes"  # the buyer's message (handlers/notify.py renders it)
_CHUNK = 500


def parse(text: str) -> list[str]:
    """Codes, one a line: blank lines skipped, spaces around a code trimmed, a code repeated
    in the text kept once. `invalid_code` for a code longer than 255 characters or with
    characters that cannot be printed, or more than 5000 in one upload."""
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        code = line.strip()
        if not code:
            continue
        if len(code) > MAX_CODE or not code.isprintable():
            raise Refusal("invalid_code", code[:40])
        if code not in seen:
            seen.add(code)
            out.append(code)
    if len(out) > MAX_UPLOAD:
        raise Refusal("invalid_code", f"at most {MAX_UPLOAD} codes in one upload")
    return out


def _digital(book: Book, sku: object) -> str:
    product = book.product(sku)
    if product is None:
        raise Refusal("unknown_product", str(sku))
    if product.kind != DIGITAL:
        raise Refusal("not_digital", product.sku)
    return product.sku


def _kinds(book: Book, lines: Iterable[OrderLineRow]) -> list[str]:
    return [p.kind if (p := book.product(line.sku)) is not None else GOODS for line in lines]


def deliver(book: Book, order: OrderRow, buyer: UserRow, at: datetime) -> bool:
    """Inside the transaction recording `order`'s payment: one unused code for each unit of
    its digital lines (owed when none is left), and the buyer's message with them. Returns
    whether the order is thereby received (every unit delivered, no goods to ship). An
    order without digital lines reads nothing."""
    lines = lines_of(book, order)
    kinds = _kinds(book, lines)
    if DIGITAL not in kinds:
        return False
    s = book.s
    given: list[list[str]] = []
    owed = 0
    for line, kind in zip(lines, kinds, strict=True):
        if kind != DIGITAL:
            continue
        found = s.execute(select(Code.id, Code.code)
                          .where(Code.sku == line.sku, Code.order_no.is_(None))
                          .order_by(Code.id).limit(line.qty).with_for_update()).all()
        if found:
            ids = [r.id for r in found]
            taken = cast(CursorResult[Any], s.execute(
                update(Code).where(Code.id.in_(ids), Code.order_no.is_(None))
                .values(order_no=order.no, line_no=line.line_no, delivered_at=at))).rowcount
            # never one code twice: a code is taken only while unused (and the head lock
            # serialises the buyers); anything else rolls the payment back
            assert taken == len(ids), (taken, ids)
            given.extend([line.sku, r.code] for r in found)
        short = line.qty - len(found)
        if short:
            s.execute(insert(Code), [{"sku": line.sku, "code": None, "added_at": at,
                                      "order_no": order.no, "line_no": line.line_no}
                                     for _ in range(short)])
            owed += short
    book.notify(buyer, NOTICE, f"codes:{order.ref}", at, order=order.ref, codes=given,
                owed=owed)
    return owed == 0 and GOODS not in kinds


def add(book: Book, *, sku: object, codes: list[str], at: datetime, actor: str | None,
        key: str) -> dict[str, Any]:
    """New codes for a digital product (`/codes SKU`). Codes it has already are skipped;
    units owed get the first new codes (oldest first, each buyer told); the product's stock
    is recounted. One `codes` journal entry (who added how many), keyed by the request."""
    if (done := book.already(key)) is not None:
        return done
    sku = _digital(book, sku)
    if not codes:
        raise Refusal("invalid_code", "no codes")
    s = book.s
    known: set[str | None] = set()
    for i in range(0, len(codes), _CHUNK):
        known.update(s.execute(select(Code.code).where(
            Code.sku == sku, Code.code.in_(codes[i:i + _CHUNK]))).scalars())
    new = [c for c in codes if c not in known]
    owed = s.execute(select(Code).where(Code.sku == sku, Code.order_no.is_not(None),
                                        Code.code.is_(None))
                     .order_by(Code.id).limit(len(new)).with_for_update()).scalars().all()
    filled: dict[int, list[Code]] = {}
    for row, code in zip(owed, new, strict=False):
        row.code, row.added_at, row.added_by, row.delivered_at = code, at, actor, at
        filled.setdefault(cast(int, row.order_no), []).append(row)
    rest = new[len(owed):]
    if rest:
        s.execute(insert(Code), [{"sku": sku, "code": c, "added_at": at, "added_by": actor}
                                 for c in rest])
    s.flush()
    for order_no, rows in sorted(filled.items()):
        _late(book, order_no, rows, at, actor)
    stock = _recount(book, sku)
    result = {"sku": sku, "added": len(new), "repeated": len(codes) - len(new),
              "filled": len(owed), "stock": stock}
    book.record(key=key, kind="codes", at=at, actor=actor,
                body={"sku": sku, "added": len(new), "filled": len(owed)}, result=result)
    return result


def _late(book: Book, order_no: int, rows: list[Code], at: datetime, actor: str | None) -> None:
    """Owed units of one order just got their codes: tell the buyer; the order is received
    once nothing is owed and nothing is to ship."""
    from .orders import receive  # orders calls `deliver`; this is the way back

    order = book.rows.one(OrderRow, order_no)
    assert order is not None, order_no
    buyer = book.user_by_id(order.user_id)
    still = book.s.execute(select(func.count()).select_from(Code).where(
        Code.order_no == order_no, Code.code.is_(None))).scalar_one()
    book.notify(buyer, NOTICE, f"codes:{order.ref}:{rows[0].id}", at, order=order.ref,
                codes=[[r.sku, r.code] for r in rows], owed=int(still))
    lines = lines_of(book, order)
    if not still and GOODS not in _kinds(book, lines) and order.status == "pending" \
            and order.received_at is None:
        receive(book, ref=order.ref, at=at, actor=actor)


def _recount(book: Book, sku: str) -> int:
    """The product's stock: its unused codes less the units of orders awaiting payment
    (they took stock when they were opened, and take codes when they are paid)."""
    s = book.s
    unused = s.execute(select(func.count()).select_from(Code).where(
        Code.sku == sku, Code.order_no.is_(None))).scalar_one()
    held = s.execute(select(func.coalesce(func.sum(OrderLine.qty), 0))
                     .join(Order, Order.no == OrderLine.order_no)
                     .where(OrderLine.sku == sku, Order.status == "awaiting_payment")
                     ).scalar_one()
    stock = max(0, int(unused) - int(held))
    s.execute(update(Product).where(Product.sku == sku).values(stock=stock))
    book.catalog_changed()  # a product counting its stock from now on is cached as such
    return stock


def refunded(book: Book, order: OrderRow) -> None:
    """A refunded order keeps the codes it was given (they may be used already): the stock
    the refund put back for them is taken out again; units still owed are owed no more."""
    terms = json.loads(order.terms)
    lines = lines_of(book, order)
    if DIGITAL not in _kinds(book, lines):
        return
    s = book.s
    s.execute(delete(Code).where(Code.order_no == order.no, Code.code.is_(None)))
    given: dict[int | None, int] = {line_no: n for line_no, n in s.execute(
        select(Code.line_no, func.count()).where(Code.order_no == order.no)
        .group_by(Code.line_no))}
    moves = [(-int(given[line.line_no]), line.sku)
             for line, t in zip(lines, line_terms(terms), strict=True)
             if t.get("took_stock") and given.get(line.line_no)]
    if moves:
        queries.move_stock(book.rows, moves)


def set_kind(book: Book, *, sku: object, kind: object, at: datetime,
             actor: str | None) -> dict[str, Any]:
    """What delivering a product means (SPEC §9 `kind`: goods, digital, service), changed
    from chat (`/kind SKU digital`): a `product` journal entry like any product change,
    everything else about the product kept. Asking for the kind it has records nothing."""
    info = book.product(sku)
    if info is None:
        raise Refusal("unknown_product", str(sku))
    if kind not in KINDS:
        raise Refusal("invalid_event", "kind is goods, digital or service")
    if info.kind == kind:
        return {"sku": info.sku, "kind": kind, "changed": False}
    row = accounts.upsert_product(book, sku=info.sku, price=info.price, margin=info.margin,
                                  lock_days=info.lock_days, scheme=info.scheme, kind=kind,
                                  at=at, actor=actor)
    return {"sku": row.sku, "kind": row.kind, "changed": True}


# -- in their own transaction ----------------------------------------------------------------
def change_kind(db: Database, *, sku: object, kind: object, actor: str | None,
                at: datetime | None = None) -> dict[str, Any]:
    """`set_kind` in its own transaction."""
    return db.run(lambda s: set_kind(Book(s), sku=sku, kind=kind, at=at or now(),
                                     actor=actor), label="kind")


def upload(db: Database, *, sku: object, codes: list[str], actor: str | None, key: str,
           at: datetime | None = None) -> dict[str, Any]:
    """`add` in its own transaction."""
    return db.run(lambda s: add(Book(s), sku=sku, codes=codes, at=at or now(), actor=actor,
                                key=key), label="codes")


def mine(db: Database, *, user_id: int, limit: int = 20) -> dict[str, Any]:
    """A buyer's codes, latest first, and how many units they are still owed."""

    def work(session: Session) -> dict[str, Any]:
        rows = session.execute(
            select(Order.ref, Code.sku, Code.code, Code.delivered_at)
            .join(Order, Order.no == Code.order_no)
            .where(Order.user_id == user_id, Code.code.is_not(None))
            .order_by(Code.delivered_at.desc(), Code.id.desc()).limit(limit)).all()
        owed = session.execute(select(func.count()).select_from(Code)
                               .join(Order, Order.no == Code.order_no)
                               .where(Order.user_id == user_id, Code.code.is_(None))).scalar_one()
        return {"codes": [{"order": r.ref, "sku": r.sku, "code": r.code, "at": r.delivered_at}
                          for r in rows], "owed": int(owed)}

    return db.read(work)


def summary(db: Database) -> list[dict[str, Any]]:
    """Every digital product: its stock, unused codes, codes given and units owed."""

    def work(session: Session) -> list[dict[str, Any]]:
        counts: dict[str, dict[str, int]] = {}
        for sku, unused, given, owed in session.execute(
                select(Code.sku,
                       func.count().filter(Code.order_no.is_(None)),
                       func.count().filter(Code.order_no.is_not(None), Code.code.is_not(None)),
                       func.count().filter(Code.code.is_(None)))
                .group_by(Code.sku)):
            counts[sku] = {"unused": int(unused), "given": int(given), "owed": int(owed)}
        products = session.execute(select(Product.sku, Product.name, Product.stock)
                                   .where(Product.kind == DIGITAL).order_by(Product.sku)).all()
        return [{"sku": p.sku, "name": p.name, "stock": p.stock,
                 **counts.get(p.sku, {"unused": 0, "given": 0, "owed": 0})} for p in products]

    return db.read(work)
