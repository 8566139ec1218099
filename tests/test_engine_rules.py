"""The money rules of SPEC §3–§5 and §8, one test per rule, on the engine's service API."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine import service
from engine.errors import Refusal
from tests.helpers import at, seed_shop, state


def test_static_release_stops_at_first_unpayable_entry(memdb):
    seed_shop(memdb, users=("A", "B", "C"), products=[("tea", "100.00", "0", 0, "queue"),
                                                        ("cup", "40.00", "0", 0, "queue")],
              config={"queue": {"min_order": "10.00"}}, queue_seed="150.00")
    for user, sku in (("A", "tea"), ("B", "tea"), ("C", "cup")):
        service.buy(memdb, user=user, sku=sku, at=at(1))
    result = service.release(memdb, at=at(2, 0))
    s = state(memdb)
    assert [e["status"] for e in s["entries"]] == ["released", "waiting", "waiting"]
    assert s["pools"]["queue"] == "50.00"  # the 40.00 behind the blocked 100.00 waits its turn
    assert result["blocked"] is True and result["paid"] == 1


def test_unmatured_entries_neither_block_nor_get_paid(memdb):
    seed_shop(memdb, products=[("long", "100.00", "0", 30, "queue"),
                               ("short", "100.00", "0", 1, "queue")], queue_seed="100.00")
    service.buy(memdb, user="A", sku="long", at=at(1))
    service.buy(memdb, user="B", sku="short", at=at(1))
    service.release(memdb, at=at(3, 0))
    entries = state(memdb)["entries"]
    assert [(e["user"], e["status"]) for e in entries] == [("A", "waiting"), ("B", "released")]


def test_acceleration_fills_referrer_entries_in_seq_order_capped_by_pool(memdb):
    seed_shop(memdb, users=("A", "B"), referrals={"B": "A"},
              products=[("tea", "100.00", "0", 15, "queue")], queue_seed="30.00",
              config={"queue": {"accel_rate": "0.50"}})
    service.buy(memdb, user="A", sku="tea", at=at(1))
    service.buy(memdb, user="A", sku="tea", at=at(1, 11))
    service.buy(memdb, user="B", sku="tea", at=at(2))  # wants 50.00, the pool holds 30.00
    s = state(memdb)
    assert [e["released"] for e in s["entries"]] == ["30.00", "0.00", "0.00"]
    assert s["users"]["A"]["wallet"] == "30.00" and s["pools"]["queue"] == "0.00"


def test_acceleration_needs_the_buyer_to_get_an_entry(memdb):
    seed_shop(memdb, users=("A", "B"), referrals={"B": "A"},
              products=[("tea", "100.00", "0", 15, "queue"), ("gum", "5.00", "0", 15, "queue")],
              queue_seed="1000.00")
    service.buy(memdb, user="A", sku="tea", at=at(1))
    service.buy(memdb, user="B", sku="gum", at=at(2))  # below min_order: no entry
    assert state(memdb)["users"]["A"]["wallet"] == "0.00"


def test_referral_pays_one_level_only(memdb):
    seed_shop(memdb, users=("A", "B", "C"), referrals={"B": "A", "C": "B"},
              products=[("tea", "100.00", "0", 15, "queue")], queue_seed="1000.00")
    for u in ("A", "B"):
        service.buy(memdb, user=u, sku="tea", at=at(1))
    service.buy(memdb, user="C", sku="tea", at=at(2))
    users = state(memdb)["users"]
    assert users["B"]["wallet"] == "20.00" and users["A"]["wallet"] == "20.00"  # A from B only


def test_pool_contribution_rounds_up_and_acceleration_rounds_down(memdb):
    seed_shop(memdb, users=("A", "B"), referrals={"B": "A"},
              products=[("odd", "100.01", "0.333", 15, "queue")],
              config={"queue": {"accel_rate": "0.333"}})
    service.buy(memdb, user="A", sku="odd", at=at(1))
    # ceil(10001 × 0.333 × 0.20) = ceil(666.0666) = 667
    assert state(memdb)["pools"]["queue"] == "6.67"
    service.buy(memdb, user="B", sku="odd", at=at(2))
    # pool 1334, accel floor(10001 × 0.333) = 3330 capped at 1334
    s = state(memdb)
    assert s["users"]["A"]["wallet"] == "13.34" and s["pools"]["queue"] == "0.00"


def test_only_the_cash_part_earns_rebates_when_paying_with_points(memdb):
    seed_shop(memdb, users=("A",), products=[("tea", "100.00", "0.50", 15, "both")])
    service.buy(memdb, user="A", sku="tea", at=at(1))  # mints 21 points at 1.00
    before = state(memdb)
    service.buy(memdb, user="A", sku="tea", pay_points="10", at=at(2))
    s = state(memdb)
    # price 30.00/21 → 10 points are worth floor(14.2857…) = 14.28; cash 85.72 < min_order
    assert len(s["entries"]) == 1
    assert s["users"]["A"]["basis"] != before["users"]["A"]["basis"]
    assert s["points"]["supply"] != before["points"]["supply"]


def test_points_may_not_pay_more_than_the_order_total(memdb):
    seed_shop(memdb, users=("A",), products=[("tea", "100.00", "0.50", 15, "both"),
                                              ("gum", "1.00", "0.50", 15, "both")])
    service.buy(memdb, user="A", sku="tea", at=at(1))
    with pytest.raises(Refusal) as refused:
        service.buy(memdb, user="A", sku="gum", pay_points="5", at=at(2))
    assert refused.value.code == "points_exceed_total"


def test_price_while_supply_is_zero_is_the_price_when_it_last_reached_zero(memdb):
    seed_shop(memdb, users=("A",), products=[("tea", "100.00", "0.50", 0, "points")],
              config={"points": {"exit_multiple": "0"}})
    service.buy(memdb, user="A", sku="tea", at=at(1))
    price = state(memdb)["points"]["price"]
    service.withdraw_points(memdb, user="A", points="21")
    s = state(memdb)
    assert s["points"]["supply"] == "0.000000" and s["points"]["price"] == price
    service.buy(memdb, user="A", sku="tea", at=at(2))  # mints at that price, not 1.00
    assert state(memdb)["users"]["A"]["points"] == "14.700000"


def test_deposit_into_the_points_pool_lifts_the_price(memdb):
    seed_shop(memdb, users=("A",), products=[("tea", "100.00", "0.50", 0, "points")])
    service.buy(memdb, user="A", sku="tea", at=at(1))
    service.deposit(memdb, pool="points", amount="9.00")
    assert state(memdb)["points"]["price"] == "1.857142"


def test_transfer_moves_basis_pro_rata_and_leaves_the_pool_alone(memdb):
    seed_shop(memdb, users=("A", "B"), products=[("tea", "100.00", "0.50", 0, "points")])
    service.buy(memdb, user="A", sku="tea", at=at(1))
    before = state(memdb)
    service.transfer_points(memdb, sender="A", receiver="B", points="7")
    s = state(memdb)
    assert s["pools"] == before["pools"] and s["points"] == before["points"]
    assert s["users"]["B"] == {"wallet": "0.00", "points": "7.000000", "basis": "33.33",
                               "referrer": None}
    assert s["users"]["A"]["basis"] == "66.67"


def test_wallet_pays_for_orders_and_refuses_more_than_it_holds(memdb):
    seed_shop(memdb, users=("A", "B"), referrals={"B": "A"},
              products=[("tea", "100.00", "0", 15, "queue"), ("gum", "5.00", "0", 0, "none")],
              queue_seed="1000.00")
    service.buy(memdb, user="A", sku="tea", at=at(1))
    service.buy(memdb, user="B", sku="tea", at=at(2))  # A's wallet gets 20.00
    service.buy(memdb, user="A", sku="gum", qty=4, method="wallet", at=at(3))
    assert state(memdb)["users"]["A"]["wallet"] == "0.00"
    with pytest.raises(Refusal) as refused:
        service.buy(memdb, user="A", sku="gum", method="wallet", at=at(3))
    assert refused.value.code == "insufficient_balance"


def test_wallet_withdrawal_is_held_then_paid_out_or_returned(memdb):
    seed_shop(memdb, users=("A", "B"), referrals={"B": "A"},
              products=[("tea", "100.00", "0", 15, "queue")], queue_seed="1000.00")
    service.buy(memdb, user="A", sku="tea", at=at(1))
    service.buy(memdb, user="B", sku="tea", at=at(2))
    w1 = service.request_withdrawal(memdb, user="A", amount="5.00")
    w2 = service.request_withdrawal(memdb, user="A", amount="15.00")
    assert state(memdb)["users"]["A"]["wallet"] == "0.00"
    service.decide_withdrawal(memdb, withdrawal_id=w1["withdrawal"], approve=True, actor="op")
    service.decide_withdrawal(memdb, withdrawal_id=w2["withdrawal"], approve=False, actor="op")
    assert state(memdb)["users"]["A"]["wallet"] == "15.00"
    with pytest.raises(Refusal) as refused:
        service.decide_withdrawal(memdb, withdrawal_id=w1["withdrawal"], approve=False,
                                  actor="op")
    assert refused.value.code == "already_decided"


def test_terms_are_frozen_when_the_order_is_recorded(memdb):
    seed_shop(memdb, users=("A",), products=[("tea", "100.00", "0.50", 15, "both")],
              config={"store": {"settle_days": "7"}})
    service.buy(memdb, user="A", sku="tea", at=at(1))
    service.configure(memdb, {"queue": {"pool_share": "1"}, "points": {"pool_rate": "1"}})
    service.upsert_product(memdb, sku="tea", price="999.00", margin="1", lock_days=99,
                           scheme="none")
    service.settle(memdb, at=at(8, 0))
    s = state(memdb)
    assert s["pools"] == {"queue": "10.00", "points": "30.00"}
    assert s["entries"][0]["matures_at"] == "2026-08-16T00:00:00+08:00"


def test_matures_at_is_store_local_midnight_of_the_local_payment_date(memdb):
    seed_shop(memdb, users=("A",), products=[("tea", "100.00", "0", 15, "queue")])
    # 20:00 UTC on 1 Aug is 04:00 on 2 Aug in Shanghai: matures 17 Aug 00:00 +08:00
    service.buy(memdb, user="A", sku="tea", at=datetime(2026, 8, 1, 20, tzinfo=UTC))
    assert state(memdb)["entries"][0]["matures_at"] == "2026-08-17T00:00:00+08:00"


def test_refund_returns_the_points_value_and_grants_no_rebate(memdb):
    seed_shop(memdb, users=("A",), products=[("tea", "100.00", "0.50", 15, "both")])
    service.buy(memdb, user="A", sku="tea", at=at(1))
    service.configure(memdb, {"store": {"settle_days": "3"}})
    service.buy(memdb, user="A", sku="tea", pay_points="10", order="o2", at=at(2))
    before = state(memdb)
    service.refund(memdb, order="o2", at=at(4))
    after = state(memdb)
    assert after["pools"] == before["pools"] and after["points"] == before["points"]
    assert after["users"]["A"]["wallet"] == "14.28"
    service.settle(memdb, at=at(30))
    assert len(state(memdb)["entries"]) == 1


def test_forced_exit_goes_cheapest_first_and_ties_to_the_earliest_user(memdb):
    seed_shop(memdb, users=("A", "B", "C"), products=[("box", "100.00", "0.5", 0, "points")],
              config={"points": {"pool_rate": "0.50", "mint_rate": "0.20"}})
    service.buy(memdb, user="A", sku="box", at=at(1))
    service.transfer_points(memdb, sender="A", receiver="B", points="5")  # same exit price
    service.deposit(memdb, pool="points", amount="149.99")  # price 19.999: nobody yet
    assert state(memdb)["users"]["A"]["points"] == "5.000000"
    service.deposit(memdb, pool="points", amount="0.01")  # price 20.00: both at 2x exactly
    s = state(memdb)
    assert s["users"]["A"]["points"] == "0.000000" and s["users"]["B"]["points"] == "0.000000"
    assert s["users"]["A"]["wallet"] == "90.00"  # A first: 5 × 20.00 less 10%
    assert s["users"]["B"]["wallet"] == "99.00"  # A's fee lifted the price to 22.00 for B


def test_a_refused_event_changes_nothing(memdb):
    seed_shop(memdb, users=("A",), products=[("tea", "100.00", "0.50", 15, "both")])
    service.buy(memdb, user="A", sku="tea", at=at(1))
    before = state(memdb)
    head = memdb.read(lambda s: s.execute(__import__("sqlalchemy").text(
        "select last_txn, last_hash from head")).one())
    for call in (lambda: service.withdraw_points(memdb, user="A", points="22"),
                 lambda: service.buy(memdb, user="A", sku="tea", pay_points="1000", at=at(2)),
                 lambda: service.transfer_points(memdb, sender="A", receiver="A", points="1"),
                 lambda: service.deposit(memdb, pool="moon", amount="1.00"),
                 lambda: service.configure(memdb, {"queue": {"accel_rate": "2"}})):
        with pytest.raises(Refusal):
            call()
    assert state(memdb) == before
    assert memdb.read(lambda s: s.execute(__import__("sqlalchemy").text(
        "select last_txn, last_hash from head")).one()) == head


# -- issue 13: a points deposit while nobody holds points (SPEC §4, §7) ----------------------


def test_points_deposit_is_refused_while_nobody_holds_points(db):
    """The attack: `/deposit points 500` on a new shop, then one 100.00 purchase minted 21
    points worth 5× their basis, and the buyer's forced exit took 477.00 of the deposit."""
    seed_shop(db, users=("A",), products=[("tea", "100.00", "0.50", 15, "points")])
    before = state(db)
    with pytest.raises(Refusal) as refused:
        service.deposit(db, pool="points", amount="500.00", key="dep-500")
    assert refused.value.code == "no_points_holders"
    assert state(db) == before
    service.buy(db, user="A", sku="tea", at=at(1))
    s = state(db)
    assert s["users"]["A"] == {"wallet": "0.00", "points": "21.000000", "basis": "100.00",
                               "referrer": None}  # no forced exit: nothing to take
    assert s["pools"]["points"] == "30.00" and s["points"]["price"] == "1.428571"
    # once someone holds points, a deposit lifts their price as before
    assert service.deposit(db, pool="points", amount="1.00", key="dep-1")["balance"] == 3100
    assert state(db)["points"]["price"] == "1.476190"


def test_points_deposit_is_refused_again_once_the_last_points_left(memdb):
    seed_shop(memdb, users=("A",), products=[("tea", "100.00", "0.50", 0, "points")])
    service.buy(memdb, user="A", sku="tea", at=at(1))
    service.withdraw_points(memdb, user="A", points="21")
    with pytest.raises(Refusal, match="no_points_holders"):
        service.deposit(memdb, pool="points", amount="1.00")
    service.deposit(memdb, pool="queue", amount="1.00")  # the queue pool takes it any time


@pytest.mark.parametrize("pool,amount,code", [
    ("moon", "-1", "invalid_amount"), ("moon", "abc", "invalid_amount"),
    ("points", "1.001", "invalid_amount"), ("moon", "1.00", "unknown_pool"),
    ("points", "1.00", "no_points_holders")])
def test_deposit_refusals_come_in_the_order_spec_7_lists_them(memdb, pool, amount, code):
    seed_shop(memdb, users=("A",))
    with pytest.raises(Refusal) as refused:
        service.deposit(memdb, pool=pool, amount=amount)
    assert refused.value.code == code


def test_replay_names_the_refused_points_deposit(memdb):
    from engine.replay import Replayer

    lines = ['{"op": "product", "sku": "P", "price": "100.00", "margin": "0.50", '
             '"lock_days": 0, "scheme": "points"}',
             '{"op": "join", "user": "a"}',
             '{"op": "deposit", "pool": "points", "amount": "500.00"}',
             '{"op": "buy", "user": "a", "sku": "P", "at": "2026-05-01T09:00:00Z"}']
    out = Replayer(memdb).run(lines)
    assert out["errors"] == [{"line": 3, "code": "no_points_holders"}]
    assert out["users"]["a"]["wallet"] == "0.00" and out["pools"]["points"] == "30.00"
