"""Small builders for engine tests: a shop in a known state, in a few lines."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from engine import service
from engine.state import snapshot
from storage.db import Database

CST = timezone(timedelta(hours=8))


def at(day: int, hour: int = 10, month: int = 8) -> datetime:
    return datetime(2026, month, day, hour, 0, tzinfo=CST)


def shop(db: Database, *, users=("A", "B"), referrals=None, products=None, config=None,
         queue_seed: str | None = None) -> None:
    if config:
        service.configure(db, config, at=at(1, 0))
    for sku, price, margin, lock, scheme in products or [("tea", "100.00", "0.50", 15, "both")]:
        service.upsert_product(db, sku=sku, price=price, margin=margin, lock_days=lock,
                               scheme=scheme, at=at(1, 0))
    referrals = referrals or {}
    for u in users:
        service.join(db, user=u, referrer=referrals.get(u), at=at(1, 0))
    if queue_seed:
        service.deposit(db, pool="queue", amount=queue_seed, at=at(1, 0))


def state(db: Database) -> dict:
    return db.read(snapshot)
