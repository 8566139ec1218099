"""Small builders for tests: a shop in a known state, in a few lines."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import text

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


def examples_on_postgres(pg_admin: str, strategy: Any, check: Callable[[Database, Any], None],
                         examples: int = 8) -> None:
    """Hypothesis on PostgreSQL: `check(db, example)` for `examples` examples drawn from
    `strategy`, each on a fresh migrated schema of its own."""
    from hypothesis import HealthCheck, given, settings

    from tests.conftest import migrated, pg_schema

    @settings(max_examples=examples, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(strategy)
    def run(example: Any) -> None:
        with pg_schema(pg_admin) as url, migrated(url) as db:
            check(db, example)

    run()


def tamper(db: Database, sql: str) -> None:
    """Change the books behind the engine's back (what verify must find)."""
    with db.engine.begin() as conn:
        conn.execute(text(sql))


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago, for a server another process binds.

    It comes from below the kernel's ephemeral range (`ip_local_port_range`): a port the kernel
    hands out itself can be taken, between this check and the server's bind, as the local end
    of any outgoing connection (a browser's, a database client's). No port is handed out twice
    in one run."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(max(1024, low - 20000), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def telegram_checkout(db: Database, identity: str = "tg:30") -> str:
    """TEA (20.00) on sale and `identity` shopping: the token of their open Telegram checkout
    for one TEA, as a `/buy TEA` leaves it."""
    from engine import checkout, users

    service.upsert_product(db, sku="TEA", price="20.00", margin="0.30", lock_days=15,
                           scheme="both", name="Tea", actor="test")
    users.resolve(db, identity, lang="en")
    return str(checkout.open_checkout(db, user=identity, sku="TEA", channel="telegram",
                                      method="telegram", key=f"open:{identity}")["token"])
