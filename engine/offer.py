"""What the shop offers, before any checkout: the active products with their rebate in plain
numbers (`catalogue`), and what a purchase would cost a buyer now and how many of their points
could pay for it (`quote`). Nothing here writes; `checkout.open_checkout` records the order.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Product, User

from .catalogue import product_named
from .config import Config
from .lines import requested
from .money import into_pool, out_of_pool
from .points import Price
from .users import current_price, store_config


def _points_for_one(cash: int, cfg: Config, price: Price) -> int:
    """Points a cash amount would mint at today's price (SPEC §4), for the catalogue."""
    c = into_pool(cash * cfg.pool_rate)
    return price.points_for(out_of_pool(c * cfg.mint_rate))


PAGE_SIZE = 8


def catalogue(db: Database, page: int = 0, per_page: int = PAGE_SIZE) -> dict[str, Any]:
    """One page of the active products, in SKU order (stable: every product is on exactly
    one page), with their rebate in plain numbers: the queue entry one unit earns (from
    `min_order` up) and about how many points it mints at today's price. `page` is 0-based
    and clamped to the last page; `pages` and `count` say how many there are."""
    def work(session: Session) -> dict[str, Any]:
        cfg = store_config(session)
        price = current_price(session, cfg)
        active = Product.active.is_(True)
        count = session.execute(select(func.count()).select_from(Product).where(active)
                                ).scalar_one()
        pages = max(1, -(-count // per_page))
        at = min(max(page, 0), pages - 1)
        rows = session.execute(select(Product).where(active).order_by(Product.sku)
                               .offset(at * per_page).limit(per_page)).scalars().all()
        items = [{"sku": p.sku, "name": p.name, "price": p.price, "scheme": p.scheme,
                  "lock_days": p.lock_days, "margin": p.margin, "stock": p.stock,
                  "kind": p.kind,
                  "queue": p.scheme in ("queue", "both"),
                  "enters_queue": p.price >= cfg.min_order,
                  "points": _points_for_one(p.price, cfg, price)
                  if p.scheme in ("points", "both") else 0}
                 for p in rows]
        return {"products": items, "page": at, "pages": pages, "count": count,
                "currency": cfg.currency, "min_order": cfg.min_order,
                "settle_days": cfg.settle_days, "paused": cfg.paused,
                "price_micro": price.display_micro()}

    return db.read(work)


def quote(db: Database, *, user: str, sku: object = None, qty: int = 1, lines: object = None,
          pay_points: int | None = None) -> dict[str, Any]:
    """What buying would cost this user now: the value of `pay_points` at today's price, and
    the most points that can pay (all they hold, but no more than the total is worth).
    `sku`/`qty` or `lines` (SPEC §9); `sku`, `name` and `qty` are the first line's, `lines`
    each line's (`sku`, `name`, `qty`, `total`, `stock`, `kind`, `active`); `active` is
    whether every line is on sale."""
    asked = requested(sku, qty, lines)

    def work(session: Session) -> dict[str, Any]:
        products = [product_named(session, s) for s, _q in asked]
        counts = [q if isinstance(q, int) and not isinstance(q, bool) else 1 for _s, q in asked]
        buyer = session.execute(select(User).where(User.handle == user)).scalar_one()
        cfg = store_config(session)
        price = current_price(session, cfg)
        each: list[dict[str, Any]] = [
            {"sku": p.sku, "name": p.name, "qty": n, "total": p.price * n, "stock": p.stock,
             "kind": p.kind, "active": p.active} for p, n in zip(products, counts, strict=True)]
        total = sum(p.price * n for p, n in zip(products, counts, strict=True))
        usable = min(buyer.points, price.most_points_within(total))
        first = products[0]
        return {"sku": first.sku, "name": first.name, "qty": counts[0], "total": total,
                "currency": cfg.currency, "wallet": buyer.wallet, "points": buyer.points,
                "usable_points": usable, "usable_value": price.value_of(usable),
                "points_value": price.value_of(pay_points or 0),
                "active": all(bool(p.active) for p in products), "lines": each}

    return db.read(work)
