"""What a purchase will earn, said before the buyer pays (SPEC §3, §4, §8).

`outlook` reads the terms an order will settle on — an open order's frozen terms, or a
product's at today's settings — and works out, for its cash part only (points paid earn
nothing, SPEC §4): the queue entry (or that the cash is below `min_order`), its maturity, the
points it would mint at today's price, the acceleration the referrer would get, and when a
return window grants it all. Estimates, not promises: the entry's `seq`, the price it mints
at and the pool that caps acceleration are those of the settlement (SPEC §8).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Order, Product, User

from .errors import Refusal
from .money import into_pool, out_of_pool, parse_rate
from .times import local_midnight_after, now
from .users import current_price, store_config


def outlook(db: Database, *, user: str, order: str | None = None, sku: str | None = None,
            qty: int = 1, points_value: int = 0, at: datetime | None = None) -> dict[str, Any]:
    """For the open order `order`, or for `qty` of `sku` with `points_value` paid in points.

    Returns `scheme`, `cash`, `points_value`, `queue` (the scheme has a queue part), `entry`
    (the entry's amount, 0 for none), `min_order`, `lock_days`, `matures_at`, `points` (micro,
    at today's price), `price_micro`, `accel` (fen, up to; 0 without a referrer or an entry),
    `referrer` (their name), `settle_days` and `settles_at` (None without a return window)."""
    when = at or now()

    def work(session: Session) -> dict[str, Any]:
        cfg = store_config(session)
        buyer = session.execute(select(User).where(User.handle == user)).scalar_one()
        if order is not None:
            row = session.execute(select(Order).where(Order.ref == order)).scalar_one_or_none()
            if row is None or row.user_id != buyer.id:
                raise Refusal("unknown_order", str(order))
            terms = json.loads(row.terms)
            cash, value = row.cash, row.points_value
            scheme, lock, min_order = terms["scheme"], int(terms["lock_days"]), \
                int(terms["min_order"])
            accel_rate, pool_rate, mint_rate = (parse_rate(terms[k]) for k in
                                                ("accel_rate", "pool_rate", "mint_rate"))
        else:
            product = session.get(Product, sku)
            if product is None:
                raise Refusal("unknown_product", str(sku))
            value = points_value
            cash = max(product.price * qty - value, 0)
            scheme, lock, min_order = product.scheme, product.lock_days, cfg.min_order
            accel_rate, pool_rate, mint_rate = cfg.accel_rate, cfg.pool_rate, cfg.mint_rate
        price = current_price(session, cfg)
        queue = scheme in ("queue", "both")
        entry = cash if queue and cash > 0 and cash >= min_order else 0
        minted = 0
        if scheme in ("points", "both") and cash > 0:
            minted = price.points_for(out_of_pool(into_pool(cash * pool_rate) * mint_rate))
        # never the buyer's own account (as `orders._settle`)
        referrer = session.get(User, buyer.referrer_id) \
            if buyer.referrer_id and buyer.referrer_id != buyer.id else None
        accel = out_of_pool(entry * accel_rate) if entry and referrer is not None else 0
        tz = cfg.timezone
        return {
            "scheme": scheme, "cash": cash, "points_value": value, "queue": queue,
            "entry": entry, "min_order": min_order, "lock_days": lock,
            "matures_at": local_midnight_after(when, lock, tz) if entry else None,
            "points": minted, "price_micro": price.display_micro(), "accel": accel,
            "referrer": (referrer.display_name or referrer.handle)
            if accel and referrer is not None else None,
            "settle_days": cfg.settle_days,
            "settles_at": local_midnight_after(when, cfg.settle_days, tz)
            if cfg.settle_days else None,
        }

    return db.read(work)
