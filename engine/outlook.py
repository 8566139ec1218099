"""What a purchase will earn, said before the buyer pays (SPEC §3, §4, §8, §9).

`outlook` reads the terms an order will settle on — an open order's frozen terms, line by
line, or a product's at today's settings — and works out, for the cash part only (points paid
earn nothing, SPEC §4), what each line would be granted as settlement grants it (SPEC §9,
`engine/settlement.py`): a queue line gets an entry of its own cash when the order's queue
cash (its queue lines' cash together) reaches `min_order`, maturing by its own product's
lock, and the referrer's acceleration on it; a points line mints, line after line, each at
the price the line before left. Estimates, not promises: the entry's `seq`, the price it
mints at and the pool that caps acceleration are those of the settlement (SPEC §8).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Order, OrderLine, Pool, Product, User

from .config import Config, stored
from .errors import Refusal
from .lines import line_terms
from .money import into_pool, out_of_pool, parse_rate
from .points import Price, price_of
from .times import local_midnight_after, now

QUEUE_SCHEMES = ("queue", "both")
POINTS_SCHEMES = ("points", "both")


@dataclass(frozen=True)
class _Line:
    sku: str
    scheme: str
    lock_days: int
    cash: int


@dataclass(frozen=True)
class _Rates:
    min_order: int
    accel_rate: Fraction
    pool_rate: Fraction
    mint_rate: Fraction


def outlook(db: Database, *, user: str, order: str | None = None, sku: str | None = None,
            qty: int = 1, points_value: int = 0, at: datetime | None = None) -> dict[str, Any]:
    """For the open order `order` (each of its lines), or for `qty` of `sku` with
    `points_value` paid in points.

    Returns `scheme` (the lines' together: `both` when some line has a queue part and some
    a points part), `cash`, `points_value`, `queue` (some line has a queue part), `entry`
    (the entries' amount, 0 for none), `min_order`, `queue_cash`, `lock_days` and
    `matures_at` (of the entry maturing first; None without), `points` (micro, from today's
    price), `price_micro`, `accel` (fen, up to; 0 without a referrer or an entry),
    `referrer` (their name), `settle_days`, `settles_at` (None without a return window) and
    `lines`: per line `sku`, `scheme`, `cash`, `entry`, `matures_at`, `points`, `accel`."""
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        cfg = stored(session)
        buyer = session.execute(select(User).where(User.handle == user)).scalar_one()
        if order is not None:
            lines, value, rates = _order_lines(session, buyer, order)
        else:
            lines, value, rates = _product_line(session, cfg, sku, qty, points_value)
        pool = session.get(Pool, "points")
        assert pool is not None
        price = price_of(pool, cfg.initial_price)
        # never the buyer's own account (as settlement)
        referrer = session.get(User, buyer.referrer_id) \
            if buyer.referrer_id and buyer.referrer_id != buyer.id else None
        each = _per_line(lines, rates, price, (pool.balance, pool.supply), referrer is not None,
                         when, cfg)
        return _summary(lines, each, value, rates, price, referrer, when, cfg)

    return db.read(work)


def _order_lines(session: Session, buyer: User, ref: str) -> tuple[list[_Line], int, _Rates]:
    row = session.execute(select(Order).where(Order.ref == ref)).scalar_one_or_none()
    if row is None or row.user_id != buyer.id:
        raise Refusal("unknown_order", str(ref))
    terms = json.loads(row.terms)
    stored: list[tuple[str, int]] = [
        (s, c) for s, c in session.execute(select(OrderLine.sku, OrderLine.cash)
                                           .where(OrderLine.order_no == row.no)
                                           .order_by(OrderLine.line_no))]
    per_line = line_terms(terms)
    if len(stored) != len(per_line):  # no line stored (an order older than its lines): one
        stored = [(row.sku, row.cash)]
    lines = [_Line(s, t["scheme"], int(t["lock_days"]), int(cash))
             for (s, cash), t in zip(stored, per_line, strict=True)]
    rates = _Rates(int(terms["min_order"]), *(parse_rate(terms[k]) for k in
                                              ("accel_rate", "pool_rate", "mint_rate")))
    return lines, row.points_value, rates


def _product_line(session: Session, cfg: Config, sku: str | None, qty: int,
                  points_value: int) -> tuple[list[_Line], int, _Rates]:
    product = session.get(Product, sku)
    if product is None:
        raise Refusal("unknown_product", str(sku))
    cash = max(product.price * qty - points_value, 0)
    return ([_Line(product.sku, product.scheme, product.lock_days, cash)], points_value,
            _Rates(cfg.min_order, cfg.accel_rate, cfg.pool_rate, cfg.mint_rate))


def _per_line(lines: list[_Line], rates: _Rates, price: Price, pool: tuple[int, int],
              referred: bool, when: datetime, cfg: Config) -> list[dict[str, Any]]:
    """What settlement would grant each line (engine/settlement.py `_settle_line`)."""
    queue_cash = sum(line.cash for line in lines if line.scheme in QUEUE_SCHEMES)
    enters = queue_cash >= rates.min_order
    balance, supply = pool
    out = []
    for line in lines:
        entry = line.cash if line.scheme in QUEUE_SCHEMES and enters and line.cash > 0 else 0
        minted = 0
        if line.scheme in POINTS_SCHEMES and line.cash > 0:
            c = into_pool(line.cash * rates.pool_rate)
            minted = price.points_for(out_of_pool(c * rates.mint_rate))
            balance, supply = balance + c, supply + minted  # the next line's price
            if supply > 0:
                price = Price(balance, supply)
        out.append({"sku": line.sku, "scheme": line.scheme, "cash": line.cash, "entry": entry,
                    "matures_at": local_midnight_after(when, line.lock_days, cfg.timezone)
                    if entry else None,
                    "lock_days": line.lock_days, "points": minted,
                    "accel": out_of_pool(entry * rates.accel_rate) if entry and referred
                    else 0})
    return out


def _summary(lines: list[_Line], each: list[dict[str, Any]], value: int, rates: _Rates,
             price: Price, referrer: User | None, when: datetime,
             cfg: Config) -> dict[str, Any]:
    queue = any(line.scheme in QUEUE_SCHEMES for line in lines)
    minting = any(line.scheme in POINTS_SCHEMES for line in lines)
    scheme = "both" if queue and minting else "queue" if queue else \
        "points" if minting else lines[0].scheme
    entered = [e for e in each if e["entry"]]
    first = min(entered, key=lambda e: e["matures_at"]) if entered else None
    accel = sum(e["accel"] for e in each)
    return {
        "scheme": scheme, "cash": sum(line.cash for line in lines), "points_value": value,
        "queue": queue, "entry": sum(e["entry"] for e in each), "min_order": rates.min_order,
        "queue_cash": sum(line.cash for line in lines if line.scheme in QUEUE_SCHEMES),
        "lock_days": first["lock_days"] if first else
        next((line.lock_days for line in lines if line.scheme in QUEUE_SCHEMES),
             lines[0].lock_days),
        "matures_at": first["matures_at"] if first else None,
        "points": sum(e["points"] for e in each), "price_micro": price.display_micro(),
        "accel": accel,
        "referrer": (referrer.display_name or referrer.handle)
        if accel and referrer is not None else None,
        "settle_days": cfg.settle_days,
        "settles_at": local_midnight_after(when, cfg.settle_days, cfg.timezone)
        if cfg.settle_days else None,
        "lines": each,
    }
