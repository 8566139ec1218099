"""Two buyers at once never get the same code (PostgreSQL, real concurrent transactions)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from engine import service
from engine.errors import Refusal
from storage.db import Database
from storage.models import Code, Product
from tests.helpers import at
from tests.test_codes import digital, upload

BUYERS = [f"tg:{n}" for n in range(100, 116)]


def test_concurrent_buyers_never_get_the_same_code(pg_db: Database):
    digital(pg_db)
    for user in BUYERS:
        service.join(pg_db, user=user, at=at(1, 3))
    upload(pg_db, *[f"PG-{n}" for n in range(10)])

    def purchase(user: str) -> str:
        try:
            return str(service.buy(pg_db, user=user, sku="GAME", at=at(2), method="cash",
                                   key=f"pay:{user}")["order"])
        except Refusal as exc:
            return exc.code

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = Counter("sold" if r.startswith("N") else r for r in pool.map(purchase, BUYERS))
    assert outcomes == {"sold": 10, "out_of_stock": 6}
    given = pg_db.read(lambda s: s.execute(select(Code.code, Code.order_no)).all())
    assert len({c for c, _ in given}) == 10
    assert len({o for _, o in given}) == 10  # ten orders, one code each
    assert pg_db.read(lambda s: s.get(Product, "GAME").stock) == 0
