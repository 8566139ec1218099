"""Orders (SPEC §3, §4, §8): record a purchase, settle it, refund it while pending.

What happens when someone buys, top to bottom: `record_paid_order` (paid as it is recorded)
or `open_unpaid_order` then `confirm_payment` (a channel's payment, engine/checkout.py). Both
check the request in SPEC §7's order (`_checked`), record the order and spend any points at
checkout (`_new_order`); the payment is booked, and — when the return window is zero —
`settle_due` grants the rebates in the same transaction (docs/engine.md).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, NamedTuple

from storage import queries
from storage.rows import OrderRow, UserRow

from . import journal, ledger, points, queue
from .accounts import micro_amount
from .book import Book, ProductInfo
from .errors import Refusal
from .money import parse_rate
from .times import local_midnight_after, parse_at

ORDER_REF = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_QTY = 10_000
METHODS = ("cash", "wallet", "offline", "telegram", "wechat")


def check_ref(ref: object) -> str | None:
    if ref is None:
        return None
    if not isinstance(ref, str) or not ORDER_REF.fullmatch(ref):
        raise Refusal("invalid_event", "order id is 1-64 of A-Za-z0-9_-")
    return ref


def parse_qty(qty: object) -> int:
    if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
        raise Refusal("invalid_amount", "quantity is a whole number 1-10000")
    return qty


def parse_points_arg(value: object) -> int:
    return 0 if value is None else micro_amount(value)


def _order(book: Book, ref: object, *, lock: bool = True) -> OrderRow | None:
    """The order with this ref: one recorded in this transaction, or from the database."""
    if not isinstance(ref, str):
        return None
    for order in book.rows.known(OrderRow):
        if order.ref == ref:
            return order
    return queries.order_by_ref(book.rows, ref, lock=lock)


def _locked_order(book: Book, ref: object) -> OrderRow:
    order = _order(book, ref)
    if order is None:
        raise Refusal("unknown_order", str(ref))
    return order


def order_result(book: Book, order: OrderRow) -> dict[str, Any]:
    """What the buyer is told about an order; rebuilt from the row for idempotent retries."""
    user = book.user_by_id(order.user_id)
    referrer = book.handle_of(user.referrer_id) if user.referrer_id else None
    tz = book.cfg.timezone
    return {
        "order": order.ref, "status": order.status, "user": user.handle, "sku": order.sku,
        "qty": order.qty, "total": order.total, "cash": order.cash,
        "points_used": order.points_used, "points_value": order.points_value,
        "settles_at": order.settles_at.astimezone(tz).isoformat() if order.settles_at else None,
        "matures_at": order.matures_at.astimezone(tz).isoformat() if order.matures_at else None,
        "entry": order.entry_seq, "minted": order.minted, "accelerated": order.accelerated,
        "referrer": referrer,
    }


def _replayed(book: Book, key: str | None) -> dict[str, Any] | None:
    if key is None:
        return None
    found = book.stored(key)
    if found is None:
        return None
    body = json.loads(found[0])
    order = _order(book, body.get("order"), lock=False)
    assert order is not None, key
    result = {**order_result(book, order), "replayed": True}
    if body.get("paid_while_paused"):
        result["paid_while_paused"] = True
    return result


class _Request(NamedTuple):
    """A purchase request that passed SPEC §7's checks, priced: what both kinds of order
    are recorded from."""

    buyer: UserRow
    product: ProductInfo
    qty: int
    points: int  # micro-points spent at checkout
    value: int  # their value in fen at today's price
    total: int
    cash: int  # what is left to pay: total - value
    at: datetime


def _checked(book: Book, *, user: str, sku: str, qty: object, at: object, pay_points: object,
             ref: str | None, method: str) -> _Request:
    """Refuse a request in SPEC §7's order; else price it."""
    if ref is not None and _order(book, ref, lock=False) is not None:
        raise Refusal("duplicate_order", ref)
    buyer = book.user(user)
    product = book.product(sku)
    if product is None:
        raise Refusal("unknown_product", str(sku))
    n = parse_qty(qty)
    q = parse_points_arg(pay_points)
    when = parse_at(at)
    if q > buyer.points:
        raise Refusal("insufficient_points")
    total = product.price * n
    value = points.price(book).value_of(q) if q else 0
    if value > total:
        raise Refusal("points_exceed_total")
    if not product.active:
        raise Refusal("product_inactive", sku)
    if book.cfg.paused and method != "offline":
        raise Refusal("sales_paused")
    if method not in METHODS:
        raise Refusal("invalid_event", "unknown payment method")
    cash = total - value
    if method == "wallet" and cash > buyer.wallet:
        raise Refusal("insufficient_balance")
    return _Request(buyer, product, n, q, value, total, cash, when)


def _new_order(book: Book, req: _Request, ref: str | None, method: str,
               p: journal.Postings) -> OrderRow:
    """The order row, awaiting payment, on the terms of today (frozen for its settlement);
    any points it uses are spent now, at checkout (SPEC §8), their value to revenue."""
    book.head.last_order_no += 1
    no = book.head.last_order_no
    ref = ref or f"N{no}"
    cfg, product = book.cfg, req.product
    terms = {"margin": product.margin, "scheme": product.scheme, "lock_days": product.lock_days,
             "pool_share": cfg.raw["queue.pool_share"], "accel_rate": cfg.raw["queue.accel_rate"],
             "pool_rate": cfg.raw["points.pool_rate"], "mint_rate": cfg.raw["points.mint_rate"],
             "min_order": cfg.min_order, "unit_price": product.price}
    order = book.rows.add(OrderRow(
        no=no, ref=ref, user_id=req.buyer.id, sku=product.sku, qty=req.qty, total=req.total,
        points_used=req.points, points_value=req.value, cash=req.cash, method=method,
        currency=cfg.currency, status="awaiting_payment", created_at=req.at,
        terms=journal.canonical(terms), minted=0, accelerated=0))
    if req.points:
        burned = points.burn(book, req.buyer, req.points, p, f"order:{ref}")
        assert burned == req.value
        p.fen(ledger.points_pool(book), journal.REVENUE, req.value, f"order:{ref}")
    return order


def record_paid_order(book: Book, *, user: str, sku: str, qty: object = 1, at: object,
                      pay_points: object = None, ref: object = None, method: str = "cash",
                      key: str | None = None, actor: str | None = None) -> dict[str, Any]:
    """A purchase paid as it is recorded: cash the caller took, the buyer's wallet, or
    offline by staff. One `purchase` transaction; rebates are granted at settlement —
    in this very transaction when the return window is zero (`settle_due`)."""
    ref = check_ref(ref)
    try:
        due_by = parse_at(at)
    except Refusal:
        due_by = None  # refused below, in SPEC §7's order
    book.prefetch_purchase(user, key, due_by)
    if (done := _replayed(book, key)) is not None:
        return done
    req = _checked(book, user=user, sku=sku, qty=qty, at=at, pay_points=pay_points, ref=ref,
                   method=method)
    p = journal.Postings()
    order = _new_order(book, req, ref, method, p)
    _pay(book, order, req.buyer, req.at, p, from_wallet=method == "wallet",
         key=key or f"order:{order.ref}", actor=actor)
    return order_result(book, order)


def open_unpaid_order(book: Book, *, user: str, sku: str, qty: object = 1, at: object,
                      pay_points: object = None, ref: object = None, method: str,
                      key: str | None = None) -> dict[str, Any]:
    """An order that waits for a channel's payment (`confirm_payment`): any points it uses
    are spent now, in a `checkout` transaction (SPEC §8)."""
    ref = check_ref(ref)
    book.prefetch_purchase(user, key, None)
    if (done := _replayed(book, key)) is not None:
        return done
    req = _checked(book, user=user, sku=sku, qty=qty, at=at, pay_points=pay_points, ref=ref,
                   method=method)
    p = journal.Postings()
    order = _new_order(book, req, ref, method, p)
    book.record(key=key or f"checkout:{order.ref}", kind="checkout", at=req.at, postings=p,
                body={"order": order.ref, "user": req.buyer.handle, "points": req.points,
                      "value": req.value})
    points.forced_exits(book, req.at, f"order:{order.ref}")
    return order_result(book, order)


def _pay(book: Book, order: OrderRow, buyer: UserRow, at: datetime, p: journal.Postings, *,
         from_wallet: bool, key: str, actor: str | None, payment: str | None = None,
         paused: bool = False) -> None:
    """Every way an order is paid ends here: its return window and lock start now (SPEC §8),
    the cash moves to revenue (from the buyer's wallet, or from the world) in one `purchase`
    transaction with the postings `p` already holds, then whatever is due settles, each
    settlement followed by the forced exit — or, when none was due, the forced exit once."""
    tz = book.cfg.timezone
    terms = json.loads(order.terms)
    order.status = "pending"
    order.paid_at = at
    order.payment_ref = payment
    order.settles_at = local_midnight_after(at, book.cfg.settle_days, tz)
    order.matures_at = local_midnight_after(at, int(terms["lock_days"]), tz)
    source = ledger.wallet(buyer) if from_wallet else journal.PAYMENTS_IN
    p.fen(source, journal.REVENUE, order.cash, f"order:{order.ref}")
    body = {"order": order.ref, "user": buyer.handle, "sku": order.sku, "qty": order.qty,
            "total": order.total, "cash": order.cash, "points": order.points_used,
            "method": order.method}
    if payment is not None:
        body["payment"] = payment
    if paused:
        body["paid_while_paused"] = True
    book.record(key=key, kind="purchase", at=at, postings=p, actor=actor, body=body)
    if not settle_due(book, at):
        points.forced_exits(book, at, f"order:{order.ref}")


def confirm_payment(book: Book, *, ref: str, amount: int, currency: str, payment_ref: str,
                    at: object, key: str, actor: str | None = None) -> dict[str, Any]:
    """A channel says an order was paid. Exactly once per payment key; an amount or currency
    that is not the order's is refused (`payment_mismatch`) and nothing is recorded."""
    if (done := _replayed(book, key)) is not None:
        return done
    order = _locked_order(book, ref)
    when = parse_at(at)
    if order.status != "awaiting_payment":
        raise Refusal("not_payable", order.status)
    if amount != order.cash or currency != order.currency:
        raise Refusal("payment_mismatch", f"{amount} {currency} for {order.cash} {order.currency}")
    # Sales paused after this order was opened, and the buyer paid anyway (the channel asked
    # before the pause, or the payer's screen was already open): the money is real, so it is
    # recorded as usual, and the journal says it came in while paused (docs/engine.md).
    paused = book.cfg.paused
    _pay(book, order, book.user_by_id(order.user_id), when, journal.Postings(),
         from_wallet=False, key=key, actor=actor, payment=payment_ref, paused=paused)
    result = order_result(book, order)
    return {**result, "paid_while_paused": True} if paused else result


def cancel_unpaid(book: Book, *, ref: str, at: object, actor: str | None = None) -> dict[str, Any]:
    """An order whose payment never came: the points it spent come back as their value."""
    order = _locked_order(book, ref)
    when = parse_at(at)
    if order.status != "awaiting_payment":
        raise Refusal("not_refundable", order.status)
    buyer = book.user_by_id(order.user_id)
    order.status = "cancelled"
    p = journal.Postings()
    p.fen(journal.REVENUE, ledger.wallet(buyer), order.points_value, f"order:{ref}")
    book.record(key=f"cancel:{ref}", kind="cancel", at=when, postings=p, actor=actor,
                body={"order": ref, "returned": order.points_value})
    return order_result(book, order)


def cancel_open(book: Book, *, ref: object, user: str, at: object) -> dict[str, Any]:
    """The buyer gives up their own order awaiting payment (it is being replaced):
    `cancel_unpaid`, after checking it is theirs (`unknown_order`) and still open
    (`not_payable`)."""
    buyer = book.user(user)
    order = _order(book, ref)
    if order is None or order.user_id != buyer.id:
        raise Refusal("unknown_order", str(ref))
    if order.status != "awaiting_payment":
        raise Refusal("not_payable", order.status)
    return cancel_unpaid(book, ref=order.ref, at=at)


def settle_due(book: Book, at: datetime) -> list[dict[str, Any]]:
    """Settle every pending order due by `at`, in the order they were recorded (SPEC §8)."""
    settled: list[dict[str, Any]] = []
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
            settled.append(_settle(book, order, at))
            points.forced_exits(book, at, f"settle:{order.ref}")
        if not more:
            return settled
        after = batch[-1].no


def _settle(book: Book, order: OrderRow, at: datetime) -> dict[str, Any]:
    """Grant an order's rebates on the terms frozen when it was recorded."""
    terms = json.loads(order.terms)
    buyer = book.user_by_id(order.user_id)
    scheme = terms["scheme"]
    cash = order.cash
    p = journal.Postings()
    ref = f"order:{order.ref}"
    accelerated: list[tuple[int, int]] = []
    accel: queue.Acceleration | None = None
    referrer: UserRow | None = None
    if scheme in ("queue", "both"):
        queue.contribute(book, cash, parse_rate(terms["margin"]), parse_rate(terms["pool_share"]),
                         p, ref)
        if cash >= int(terms["min_order"]) and cash > 0:
            assert order.matures_at is not None
            entry = queue.add_entry(book, buyer, order.no, cash, order.matures_at, at)
            order.entry_seq = entry.seq
            # never to the buyer's own account (linking drops such an edge; belt and braces)
            if buyer.referrer_id is not None and buyer.referrer_id != buyer.id:
                referrer = book.user_by_id(buyer.referrer_id)
                accel = queue.accelerate(book, referrer, cash,
                                         parse_rate(terms["accel_rate"]), p, at)
                accelerated = accel.paid
    if scheme in ("points", "both"):
        order.minted = points.mint(book, buyer, cash, parse_rate(terms["pool_rate"]),
                                   parse_rate(terms["mint_rate"]), p, ref)
    order.accelerated = sum(paid for _seq, paid in accelerated)
    order.status = "settled"
    order.settled_at = at
    key = f"settle:{order.ref}"
    book.record(key=key, kind="settle", at=at, postings=p,
                body={"order": order.ref, "entry": order.entry_seq, "minted": order.minted,
                      "accelerated": [list(a) for a in accelerated]})
    book.notify(buyer, "order_settled", key, at, order=order.ref, entry=order.entry_seq,
                amount=cash if order.entry_seq else 0,
                matures_at=order.matures_at.isoformat() if order.matures_at else None,
                minted=order.minted)
    if referrer is not None and accel is not None and (order.accelerated or accel.capped_by_pool):
        # A payment the pool capped (down to nothing, even) is explained with its figures.
        extra = ({"due": accel.due, "pool": accel.pool, "cash": cash,
                  "rate": terms["accel_rate"]} if accel.capped_by_pool else {})
        book.notify(referrer, "acceleration", f"accel:{order.ref}", at, amount=order.accelerated,
                    buyer=buyer.display_name or buyer.handle, order=order.ref, **extra)
    return order_result(book, order)


def refund(book: Book, *, ref: object, at: object, actor: str | None = None) -> dict[str, Any]:
    """SPEC §8: only a pending order before its settlement time. The cash goes back through
    its channel (outside the engine); the value of the points it spent comes back to the
    buyer's wallet; no rebate is ever granted for it."""
    order = _locked_order(book, ref)
    when = parse_at(at)
    if order.status != "pending" or order.settles_at is None or not when < order.settles_at:
        raise Refusal("not_refundable", order.status)
    buyer = book.user_by_id(order.user_id)
    order.status = "refunded"
    p = journal.Postings()
    r = f"order:{order.ref}"
    back = ledger.wallet(buyer) if order.method == "wallet" else journal.REFUNDS_OUT
    p.fen(journal.REVENUE, back, order.cash, r)
    p.fen(journal.REVENUE, ledger.wallet(buyer), order.points_value, r)
    key = f"refund:{order.ref}"
    book.record(key=key, kind="refund", at=when, postings=p, actor=actor,
                body={"order": order.ref, "cash": order.cash, "points_value": order.points_value,
                      "method": order.method})
    book.notify(buyer, "order_refunded", key, when, order=order.ref, cash=order.cash,
                points_value=order.points_value, method=order.method)
    return order_result(book, order)


def pay_from_wallet(book: Book, *, ref: object, user: str, at: object, key: str,
                    actor: str | None = None) -> dict[str, Any]:
    """Pay an order awaiting payment (a checkout its buyer opened) from the buyer's wallet:
    the same journal rules as a wallet purchase (`record_paid_order`, `method="wallet"`) — the cash
    moves wallet → revenue in one `purchase` transaction, the order becomes a wallet order
    (so a refund returns its cash to the wallet) and settles as any paid order (SPEC §8).

    Refused: `unknown_order` for an order that is not this user's (someone else's order is
    not theirs to learn about), `not_payable` once it no longer awaits payment,
    `sales_paused` (unlike a channel's charge, the wallet's money has not moved yet: the shop
    can still say no), `insufficient_balance`. Exactly once per `key`: a repeat answers the
    same result."""
    buyer = book.user(user)
    order = _order(book, ref)
    if order is None or order.user_id != buyer.id:
        raise Refusal("unknown_order", str(ref))
    if (done := _replayed(book, key)) is not None:
        return done
    when = parse_at(at)
    if order.status != "awaiting_payment":
        raise Refusal("not_payable", order.status)
    if book.cfg.paused:
        raise Refusal("sales_paused")
    if order.cash > buyer.wallet:
        raise Refusal("insufficient_balance")
    order.method = "wallet"
    _pay(book, order, buyer, when, journal.Postings(), from_wallet=True, key=key, actor=actor)
    return order_result(book, order)
