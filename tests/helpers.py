"""Small builders for tests: a shop in a known state, in a few lines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from engine import service
from engine.state import snapshot
from storage.db import Database

CST = timezone(timedelta(hours=8))


def at(day: int, hour: int = 10, month: int = 8) -> datetime:
    return datetime(2026, month, day, hour, 0, tzinfo=CST)


OPENED = at(1, 0)  # when a seeded shop opens: 1 Aug 2026, 00:00 store-local
Product = tuple[str, str, str, int, str] | tuple[str, str, str, int, str, str]
DEFAULT_PRODUCTS: tuple[Product, ...] = (("tea", "100.00", "0.50", 15, "both"),)


def seed_shop(db: Database, *, users: Iterable[str] = ("A", "B"),
              referrals: Mapping[str, str] | None = None,
              products: Iterable[Product] = DEFAULT_PRODUCTS, config: dict[str, Any] | None = None,
              queue_seed: str | None = None, langs: Mapping[str, str] | None = None,
              at: datetime | None = OPENED) -> None:
    """The one shop builder: through the engine's service API, in this order, the `config`
    sections, the `products` ((sku, price, margin, lock_days, scheme[, name])), the `users`
    (each with its referrer in `referrals` and language in `langs`), and `queue_seed` paid
    into the queue pool; all `at` the given time (None: now)."""
    if config:
        service.configure(db, config, at=at)
    for sku, price, margin, lock, scheme, *name in products:
        service.upsert_product(db, sku=sku, price=price, margin=margin, lock_days=lock,
                               scheme=scheme, name=name[0] if name else None, at=at)
    referrals, langs = referrals or {}, langs or {}
    for u in users:
        service.join(db, user=u, referrer=referrals.get(u), lang=langs.get(u), at=at)
    if queue_seed:
        service.deposit(db, pool="queue", amount=queue_seed, at=at)


def state(db: Database) -> dict:
    return db.read(snapshot)
