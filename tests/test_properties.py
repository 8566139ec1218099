"""SPEC §6 invariants under random event sequences (hypothesis).

Every sequence keeps: pools ≥ 0 and equal to their postings, supply = Σ holdings, the points
price never falls, no entry is paid more than its amount, no journal transaction is unbalanced,
and a refused event changes nothing at all (state and journal head identical)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine.replay import Replayer
from engine.state import snapshot
from engine.verify import verify
from storage.db import Database
from storage.models import Entry, Head, Pool, User
from tests.conftest import migrated
from tests.helpers import examples_on_postgres

USERS = ["A", "B", "C", "D", "E"]
SKUS = ["q", "p", "b", "n", "big"]
T0 = datetime(2026, 8, 1, 9, tzinfo=timezone(timedelta(hours=8)))

money = st.builds(lambda y, f: f"{y}.{f:02d}", st.integers(0, 400), st.integers(0, 99))
points_amt = st.one_of(
    st.builds(lambda y, f: f"{y}.{f:06d}", st.integers(0, 60), st.integers(0, 999999)),
    st.sampled_from(["0", "-1", "1e3", "abc", "0.0000001"]))
rate = st.sampled_from(["0", "0.05", "0.1", "0.2", "0.3", "0.333", "0.5", "0.7", "1", "1.5"])


def event(day: int):
    at = (T0 + timedelta(days=day)).isoformat()
    user, other = st.sampled_from(USERS), st.sampled_from(USERS + ["ZZ"])
    return st.one_of(
        st.fixed_dictionaries({"op": st.just("buy"), "user": other, "sku": st.sampled_from(
            SKUS + ["nope"]), "qty": st.integers(0, 3), "at": st.just(at)},
            optional={"pay_points": points_amt, "order": st.sampled_from(
                ["o1", "o2", "o3", "o4", "bad id"])}),
        st.fixed_dictionaries({"op": st.just("deposit"), "pool": st.sampled_from(
            ["queue", "points", "moon"]), "amount": money}),
        st.fixed_dictionaries({"op": st.sampled_from(["release", "settle"]), "at": st.just(at)}),
        st.fixed_dictionaries({"op": st.just("refund"), "order": st.sampled_from(
            ["o1", "o2", "o3", "o4", "N1", "N2", "N3"]), "at": st.just(at)}),
        st.fixed_dictionaries({"op": st.just("withdraw_points"), "user": user,
                               "points": points_amt}),
        st.fixed_dictionaries({"op": st.just("transfer_points"), "from": user, "to": other,
                               "points": points_amt}),
        st.fixed_dictionaries({"op": st.just("withdraw_cash"), "user": user, "amount": money}),
        st.fixed_dictionaries({"op": st.just("config"), "queue": st.fixed_dictionaries(
            {}, optional={"accel_rate": rate, "pool_share": rate})}),
        st.fixed_dictionaries({"op": st.just("config"), "points": st.fixed_dictionaries(
            {}, optional={"withdraw_fee": rate, "exit_multiple": rate, "pool_rate": rate,
                          "mint_rate": rate})}),
        st.fixed_dictionaries({"op": st.just("config"), "store": st.fixed_dictionaries(
            {"settle_days": st.sampled_from(["0", "1", "3", "400"])})}),
    )


@st.composite
def scenarios(draw, max_events: int = 30):
    n = draw(st.integers(1, max_events))
    days = sorted(draw(st.lists(st.integers(0, 40), min_size=n, max_size=n)))
    return [draw(event(d)) for d in days]


def setup_lines() -> list[str]:
    products = [("q", "100.00", "0.40", 3, "queue"), ("p", "50.00", "0.35", 0, "points"),
                ("b", "120.00", "0.5", 2, "both"), ("n", "9.99", "0.1", 0, "none"),
                ("big", "999.99", "0.6", 5, "both")]
    lines = [json.dumps({"op": "product", "sku": s, "price": p, "margin": m, "lock_days": d,
                         "scheme": sc}) for s, p, m, d, sc in products]
    lines += [json.dumps({"op": "join", "user": "A"}), json.dumps({"op": "join", "user": "B"}),
              json.dumps({"op": "join", "user": "C", "referrer": "A"}),
              json.dumps({"op": "join", "user": "D", "referrer": "C"}),
              json.dumps({"op": "join", "user": "E", "referrer": "A"}),
              json.dumps({"op": "deposit", "pool": "queue", "amount": "150.00"})]
    return lines


def exact_price(db: Database) -> Fraction | None:
    pool = db.read(lambda s: s.execute(select(Pool).where(Pool.name == "points")).scalar_one())
    return Fraction(pool.balance, pool.supply) if pool.supply else None


def head(db: Database) -> tuple[int, str]:
    h = db.read(lambda s: s.execute(select(Head)).scalar_one())
    return h.last_txn, h.last_hash


def check_invariants(db: Database) -> None:
    def read(s):
        pools = {p.name: p for p in s.execute(select(Pool)).scalars()}
        users = s.execute(select(User)).scalars().all()
        entries = s.execute(select(Entry)).scalars().all()
        return pools, users, entries

    pools, users, entries = db.read(read)
    assert all(p.balance >= 0 for p in pools.values())
    assert pools["points"].supply == sum(u.points for u in users)
    assert all(u.points >= 0 and u.basis >= 0 and u.wallet >= 0 and u.held >= 0 for u in users)
    assert all(0 <= e.released <= e.amount for e in entries)
    assert all((e.status == "released") == (e.released == e.amount) for e in entries)


def run_scenario(db: Database, events: list[dict]) -> None:
    replayer = Replayer(db)
    replayer.run(setup_lines())
    last_price = exact_price(db)
    for number, ev in enumerate(events, start=100):
        before_state, before_head = db.read(snapshot), head(db)
        errors = len(replayer.errors)
        replayer.line(number, json.dumps(ev))
        if len(replayer.errors) > errors:  # refused: nothing changed, and it said why
            assert db.read(snapshot) == before_state, ev
            assert head(db) == before_head, ev
            assert replayer.errors[-1]["code"]
        check_invariants(db)
        price = exact_price(db)
        if price is not None and last_price is not None:
            assert price >= last_price, ev
        last_price = price if price is not None else last_price
    report = verify(db)
    assert report.ok, report.lines()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_sequences_keep_every_invariant_on_sqlite(events):
    with migrated("sqlite://") as db:
        run_scenario(db, events)


@pytest.mark.pg
def test_random_sequences_keep_every_invariant_on_postgres(pg_admin):
    examples_on_postgres(pg_admin, scenarios(max_events=15), run_scenario)
