"""`engine.outlook` for a cart's order, line by line (SPEC §9): what it says before paying is
what settlement then grants each line — entries of the queue lines when the order's queue
cash reaches `min_order`, each maturing by its own lock, the referrer's acceleration per
line, and each points line minted at the price the line before left."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import select

from engine.outlook import outlook
from engine.replay import Replayer
from storage.db import Database
from storage.models import Order, OrderLine

SETUP = [
    {"op": "config", "queue": {"min_order": "100.00", "pool_share": "0.20",
                               "accel_rate": "0.20"},
     "points": {"pool_rate": "0.30", "mint_rate": "0.70", "initial_price": "1.00"},
     "store": {"timezone": "Asia/Shanghai", "settle_days": "2"}},
    {"op": "product", "sku": "A", "price": "60.00", "margin": "0.50", "lock_days": 10,
     "scheme": "queue"},
    {"op": "product", "sku": "B", "price": "40.00", "margin": "0.30", "lock_days": 0,
     "scheme": "points"},
    {"op": "product", "sku": "C", "price": "30.00", "margin": "0.40", "lock_days": 5,
     "scheme": "both"},
    {"op": "deposit", "pool": "queue", "amount": "1000.00"},
    {"op": "join", "user": "r"},
    # the referrer's entry of 300.00, still waiting when the buyer's order settles
    {"op": "buy", "user": "r", "sku": "A", "qty": 5, "at": "2026-06-01T10:00:00+08:00"},
    {"op": "settle", "at": "2026-06-03T00:00:00+08:00"},
    {"op": "join", "user": "b", "referrer": "r"},
]
BOUGHT = "2026-06-04T09:00:00+08:00"
SETTLED = "2026-06-06T00:00:00+08:00"


def _shop(db: Database, lines: list[dict[str, object]], **buy: object) -> dict:
    events = [*SETUP, {"op": "buy", "user": "b", "lines": lines, "at": BOUGHT, "order": "b1",
                       **buy}]
    Replayer(db).run([json.dumps(e) for e in events])
    return outlook(db, user="b", order="b1", at=datetime.fromisoformat(BOUGHT))


def _granted(db: Database) -> tuple[Order, list[OrderLine]]:
    Replayer(db).run([json.dumps({"op": "settle", "at": SETTLED})])

    def read(s):
        order = s.execute(select(Order).where(Order.ref == "b1")).scalar_one()
        lines = s.execute(select(OrderLine).where(OrderLine.order_no == order.no)
                          .order_by(OrderLine.line_no)).scalars().all()
        return order, list(lines)

    return db.read(read)


def test_a_three_line_cart_is_estimated_as_settlement_grants_it(db: Database):
    said = _shop(db, [{"sku": "A"}, {"sku": "C", "qty": 2}, {"sku": "B"}])
    assert [(e["sku"], e["cash"], e["entry"]) for e in said["lines"]] == [
        ("A", 6000, 6000), ("C", 6000, 6000), ("B", 4000, 0)]
    assert said["queue_cash"] == 12000 and said["entry"] == 12000
    assert said["scheme"] == "both" and said["queue"]
    order, lines = _granted(db)
    assert order.status == "settled"
    for estimate, line in zip(said["lines"], lines, strict=True):
        assert (estimate["entry"] > 0) == (line.entry_seq is not None), line.sku
        assert estimate["points"] == line.minted, line.sku
        assert estimate["accel"] == line.accelerated, line.sku
        assert estimate["matures_at"] == (line.matures_at if line.entry_seq else None), line.sku
    assert said["points"] == order.minted > 0
    assert said["accel"] == order.accelerated == 2400  # 20% of each queue line's cash
    # the entry maturing first is the one named: C's 5-day lock before A's 10
    assert said["lock_days"] == 5 and said["matures_at"] == lines[1].matures_at
    # the second points line mints at the price the first left, as settlement does: less
    # than B's 8.40 of minting value would buy at the price before (1.00 a point)
    assert 0 < lines[2].minted < 8_400_000


def test_the_queue_cash_not_the_order_cash_decides_the_entry(db: Database):
    # 100.00 in all reaches min_order, but only 60.00 of it is queue cash: no entry
    said = _shop(db, [{"sku": "A"}, {"sku": "B"}])
    assert said["cash"] == 10000 and said["queue_cash"] == 6000
    assert said["entry"] == 0 and said["accel"] == 0 and said["matures_at"] is None
    order, lines = _granted(db)
    assert [line.entry_seq for line in lines] == [None, None]
    assert order.accelerated == 0
    assert said["points"] == order.minted == lines[1].minted > 0
