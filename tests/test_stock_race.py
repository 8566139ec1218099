"""Two buyers racing for the last unit (issue 16): through the real engine entries, from
threads on separate connections, exactly one gets it and the other is told `out_of_stock`;
the books verify clean and the stock ends at zero, never below."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import pytest

from engine import checkout, service
from engine.errors import Refusal
from engine.verify import verify
from storage.db import Database
from storage.models import Product
from tests.helpers import at, seed_shop

ROUNDS = 12


def race(db: Database, attempts: list[Any]) -> list[Any]:
    """Run each attempt in its own thread, released together; their results or refusals."""
    start = threading.Barrier(len(attempts))
    out: list[Any] = [None] * len(attempts)

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = attempts[i]()
        except Refusal as refusal:
            out[i] = refusal

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(attempts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


@pytest.mark.pg
def test_two_buyers_race_for_the_last_unit_and_exactly_one_gets_it(pg_db: Database):
    seed_shop(pg_db, users=("x", "y"), products=(("last", "100.00", "0.50", 15, "both"),))
    won = {"x": 0, "y": 0}
    for n in range(ROUNDS):
        service.upsert_product(pg_db, sku="last", price="100.00", margin="0.50",
                               lock_days=15, scheme="both", stock=1, at=at(1))
        when = at(1 + n)
        # one buys it paid at once, the other opens a channel's checkout for it (and a cart)
        results = race(pg_db, [
            partial(service.buy, pg_db, user="x", sku="last", at=when, key=f"x{n}"),
            partial(checkout.open_checkout, pg_db, user="y", lines=[{"sku": "last"}],
                    channel="wechat", method="wechat", key=f"y{n}", at=when)])
        refused = [r for r in results if isinstance(r, Refusal)]
        got = [r for r in results if isinstance(r, dict)]
        assert len(got) == 1 and len(refused) == 1, results
        assert refused[0].code == "out_of_stock"
        won[got[0]["user"]] += 1
        assert pg_db.read(lambda s: s.get(Product, "last").stock) == 0
    assert sum(won.values()) == ROUNDS
    assert verify(pg_db).ok


@pytest.mark.pg
def test_many_buyers_for_three_units_three_get_one_each(pg_db: Database):
    users = tuple(f"u{i}" for i in range(8))
    seed_shop(pg_db, users=users, products=(("few", "20.00", "0.50", 0, "queue"),))
    service.upsert_product(pg_db, sku="few", price="20.00", margin="0.50", lock_days=0,
                           scheme="queue", stock=3, at=at(1))
    results = race(pg_db, [
        (lambda u=u: service.buy(pg_db, user=u, lines=[{"sku": "few"}], at=at(2), key=u))
        for u in users])
    assert sum(isinstance(r, dict) for r in results) == 3
    assert all(r.code == "out_of_stock" for r in results if isinstance(r, Refusal))
    assert pg_db.read(lambda s: s.get(Product, "few").stock) == 0
    assert verify(pg_db).ok
