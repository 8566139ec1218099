"""Random cart scenarios (SPEC §9) replayed through the engine and through an independent
model of the rules (tests/cart_model.py): the final state, the refusals and every product's
stock must be the same, on SQLite and PostgreSQL. Multi-line buys, the shorthand, both forms
at once, stock running out and coming back, refunds, receipts, `settle_from` receipt and
payment switched mid-scenario, points paying part of a cart."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine.replay import Replayer
from engine.verify import verify
from storage.db import Database
from storage.models import Product
from tests.cart_model import Model
from tests.conftest import migrated
from tests.helpers import examples_on_postgres

USERS = ["A", "B", "C", "D"]
SKUS = ["q", "p", "b", "n"]
T0 = datetime(2026, 6, 1, 9, tzinfo=timezone(timedelta(hours=8)))
PRODUCTS = {"q": ("60.00", "0.40", 3, "queue"), "p": ("40.00", "0.30", 0, "points"),
            "b": ("30.00", "0.50", 2, "both"), "n": ("9.99", "0.10", 0, "none")}

stock = st.one_of(st.none(), st.integers(0, 6))


def setup(draw: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"op": "config", "points": {"exit_multiple": "0"},
         "store": {"settle_days": draw(st.sampled_from(["0", "1", "2"])),
                   "settle_from": draw(st.sampled_from(["payment", "receipt"]))}}]
    for sku, (price, margin, lock, scheme) in PRODUCTS.items():
        ev = {"op": "product", "sku": sku, "price": price, "margin": margin,
              "lock_days": lock, "scheme": scheme}
        if draw(st.booleans()):
            ev["stock"] = draw(stock)
        events.append(ev)
    if draw(st.booleans()):
        events.append({"op": "config", "queue": {"min_order": "50.00"}})
    events += [{"op": "join", "user": "A"}, {"op": "join", "user": "B", "referrer": "A"},
               {"op": "join", "user": "C", "referrer": "B"}, {"op": "join", "user": "D"},
               {"op": "deposit", "pool": "queue", "amount": draw(st.sampled_from(
                   ["20.00", "80.00", "300.00"]))}]
    return events


def cart_line(draw: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"sku": draw(st.sampled_from(SKUS))}
    if draw(st.integers(0, 29)) == 0:
        line["sku"] = "nope"
    if draw(st.booleans()):
        line["qty"] = draw(st.sampled_from([1, 1, 2, 2, 3, 1, 2, 3, 1, 0]))
    return line


def buy(draw: Any, at: str, bought: int) -> dict[str, Any]:
    ev: dict[str, Any] = {"op": "buy", "user": draw(st.sampled_from(USERS * 8 + ["ZZ"])),
                          "at": at}
    form = draw(st.integers(0, 29))
    if form < 9:
        ev["sku"] = draw(st.sampled_from(SKUS))
        if draw(st.booleans()):
            ev["qty"] = draw(st.sampled_from([1, 2, 3, 2, 0]))
    else:
        ev["lines"] = [cart_line(draw) for _ in range(draw(st.integers(1, 4)))]
    if form == 29:
        ev["sku"] = "q"  # both forms
    if draw(st.integers(0, 29)) == 0:
        ev["lines"] = []
    if draw(st.integers(0, 5)) == 0:
        ev["pay_points"] = draw(st.sampled_from(["0.5", "3", "12.345678", "1.2", "40", "0"]))
    pick = draw(st.integers(0, 29))
    if pick < 26:
        ev["order"] = f"o{bought + 1}"  # the next new id
    elif pick < 28:
        ev["order"] = f"o{draw(st.integers(1, bought + 1))}"  # perhaps a duplicate
    elif pick == 28:
        ev["order"] = "bad id"
    return ev


def later_event(draw: Any, at: str, bought: int) -> dict[str, Any]:
    kind = draw(st.integers(0, 19))
    order = f"o{draw(st.integers(1, bought + 1))}" if draw(st.integers(0, 5)) else \
        draw(st.sampled_from(["N1", "N3", "N9"]))
    if kind < 8:
        return buy(draw, at, bought)
    if kind < 11:
        early = draw(st.integers(0, 7)) == 0  # before any payment: not receivable
        return {"op": "receive", "order": order, "at": T0.isoformat() if early else at}
    if kind < 13:
        return {"op": "refund", "order": order, "at": at}
    if kind == 13:
        return {"op": draw(st.sampled_from(["settle", "release"])), "at": at}
    if kind == 14:
        sku = draw(st.sampled_from(SKUS))
        price, margin, lock, scheme = PRODUCTS[sku]
        ev = {"op": "product", "sku": sku, "price": draw(st.sampled_from([price, "50.00"])),
              "margin": margin, "lock_days": lock, "scheme": scheme}
        choice = draw(st.integers(0, 3))
        if choice < 2:
            ev["stock"] = draw(stock)
        elif choice == 2:
            ev["stock"] = draw(st.sampled_from([-1, 2_000_000_000, "3", True]))
        return ev
    if kind == 15:
        return {"op": "deposit", "pool": draw(st.sampled_from(["queue", "points"])),
                "amount": draw(st.sampled_from(["5.00", "30.00"]))}
    if kind == 16:
        return {"op": "config", "queue": {"min_order": draw(st.sampled_from(
            ["50.00", "100.00", "150.00"]))}}
    return {"op": "config", "store": draw(st.sampled_from([
        {"settle_from": "receipt"}, {"settle_from": "payment"}, {"settle_from": "shipping"},
        {"settle_days": "0"}, {"settle_days": "1"}, {"settle_days": "3"}]))}


@st.composite
def scenarios(draw: Any, most: int = 30) -> list[dict[str, Any]]:
    n = draw(st.integers(1, most))
    minutes = sorted(draw(st.lists(st.integers(0, 12 * 24 * 60), min_size=n, max_size=n)))
    events = setup(draw)
    bought = 0
    for m in minutes:
        ev = later_event(draw, (T0 + timedelta(minutes=m)).isoformat(), bought)
        bought += ev["op"] == "buy"
        events.append(ev)
    return events


def normalised(state: dict[str, Any]) -> dict[str, Any]:
    for entry in state["entries"]:
        entry["matures_at"] = datetime.fromisoformat(entry["matures_at"]).timestamp()
    return state


def stock_of(db: Database) -> dict[str, int | None]:
    return dict(db.read(lambda s: s.execute(select(Product.sku, Product.stock)
                                            .order_by(Product.sku)).all()))


def check(db: Database, events: list[dict[str, Any]]) -> None:
    model = Model()
    for number, ev in enumerate(events, start=1):
        model.apply(number, ev)
    state = Replayer(db).run(json.dumps(ev) for ev in events)
    assert normalised(state) == normalised(model.state()), events
    assert stock_of(db) == model.stock(), events
    report = verify(db)
    assert report.ok, report.lines()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_carts_replay_exactly_as_the_model_says_on_sqlite(events):
    with migrated("sqlite://") as db:
        check(db, events)


@pytest.mark.pg
@pytest.mark.slow
def test_random_carts_replay_exactly_as_the_model_says_on_postgres(pg_admin):
    examples_on_postgres(pg_admin, scenarios(most=20), check)


def test_the_model_agrees_with_the_shared_cart_vector():
    """The model itself is checked against SPEC §9's vector before it judges the engine."""
    from tests.test_vectors import VECTORS, expected

    model = Model()
    with open(VECTORS / "cart-stock-receipt.jsonl", encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if text.strip() and not text.startswith("#"):
                model.apply(number, json.loads(text))
    assert normalised(model.state()) == expected("cart-stock-receipt")
