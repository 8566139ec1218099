"""The purchases every purchase benchmark makes: a realistic mix, the same in every row.

Three products — a queue product, a points product and one with both schemes — bought by users
of whom most were referred (so a referee's purchase accelerates the referrer's entries), one
purchase in ten paid partly with points. Every purchase goes through `engine.service.buy`,
one durable transaction each, exactly as a chat purchase paid in cash is recorded.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from engine import service
from engine.errors import Refusal
from storage.db import Database

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 1, 1, 9, tzinfo=CST)


@dataclass(frozen=True)
class Product:
    sku: str
    price: int  # fen
    margin: str
    lock_days: int
    scheme: str

    @property
    def margin_permille(self) -> int:
        whole, _, frac = self.margin.partition(".")
        return int(whole) * 1000 + int(frac.ljust(3, "0")[:3])


PRODUCTS = (
    Product("tea", 10_000, "0.40", 15, "queue"),
    Product("rice", 5_000, "0.30", 0, "points"),
    Product("sofa", 30_000, "0.30", 30, "both"),
)
MIX = (("tea", 0.4), ("rice", 0.3), ("sofa", 0.3))
PAY_POINTS_SHARE = 0.10
PAY_POINTS = "0.10"  # a tenth of a point: even the last of 100k holders has that much


def setup_catalogue(db: Database) -> None:
    for p in PRODUCTS:
        service.upsert_product(db, sku=p.sku, price=f"{p.price // 100}.{p.price % 100:02d}",
                               margin=p.margin, lock_days=p.lock_days, scheme=p.scheme, at=T0)


def setup_shop(db: Database, users: int, *, prefix: str = "b") -> list[str]:
    """A small shop made through the engine: catalogue, `users` users (70% referred), a
    seeded queue pool, and one points purchase each so everyone can pay with points."""
    setup_catalogue(db)
    rng = random.Random(users)
    handles = [f"{prefix}{i}" for i in range(users)]
    for i, h in enumerate(handles):
        referrer = handles[rng.randrange(i)] if i >= 3 and rng.random() < 0.7 else None
        service.join(db, user=h, referrer=referrer, at=T0)
    service.deposit(db, pool="queue", amount="5000.00", at=T0, key=f"{prefix}:seed")
    for h in handles:
        service.buy(db, user=h, sku="rice", qty=2, at=T0, key=f"{prefix}:setup:{h}")
    return handles


@dataclass
class Purchases:
    """An endless, reproducible stream of `service.buy` keyword arguments."""

    buyers: Sequence[str]
    start: datetime
    run: str  # makes every idempotency key new, so no purchase is a replay
    holders: frozenset[str] | None = None  # who may pay with points (None: everyone)
    seed: int = 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed)
        skus = [s for s, _ in MIX]
        weights = [w for _, w in MIX]
        i = 0
        while True:
            i += 1
            user = rng.choice(self.buyers)
            pays = rng.random() < PAY_POINTS_SHARE and (
                self.holders is None or user in self.holders)
            yield {"user": user, "sku": rng.choices(skus, weights)[0],
                   "qty": 1 if rng.random() < 0.8 else 2,
                   "at": self.start + timedelta(seconds=i),
                   "pay_points": PAY_POINTS if pays else None,
                   "key": f"bench:{self.run}:{i}"}


def buy(db: Database, kwargs: dict[str, Any]) -> bool:
    """One purchase; False when the engine refused it (a holder who ran out of points after a
    forced exit), which leaves nothing behind and is counted apart."""
    try:
        service.buy(db, **kwargs)
    except Refusal:
        return False
    return True
