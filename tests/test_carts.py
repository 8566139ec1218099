"""SPEC §9 through the engine's service API: lines, the cash split, per-line rebates, stock
taken and given back, `receive` and `store.settle_from`."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from engine import checkout, offer, service
from engine.errors import Refusal
from engine.verify import verify
from storage.db import Database
from storage.models import Head, OrderLine, Product
from tests.helpers import at, seed_shop, state

PRODUCTS = (("A", "60.00", "0.50", 10, "queue"), ("B", "40.00", "0.30", 0, "points"),
            ("C", "30.00", "0.40", 5, "both"))


def shop(db: Database, **config: str) -> None:
    seed_shop(db, users=("r", "b"), referrals={"b": "r"}, products=PRODUCTS,
              config={"store": config} if config else None, queue_seed="1000.00")


def stock(db: Database, sku: str) -> int | None:
    return db.read(lambda s: s.get(Product, sku).stock)


def lines_stored(db: Database, ref: str) -> list[tuple]:
    def read(s):
        from storage.models import Order
        no = s.execute(select(Order.no).where(Order.ref == ref)).scalar_one()
        return [tuple(r) for r in s.execute(
            select(OrderLine.line_no, OrderLine.sku, OrderLine.qty, OrderLine.total,
                   OrderLine.cash, OrderLine.entry_seq, OrderLine.minted,
                   OrderLine.accelerated).where(OrderLine.order_no == no)
            .order_by(OrderLine.line_no)).all()]
    return db.read(read)


def test_cash_is_split_over_lines_and_each_queue_line_gets_its_own_entry(memdb):
    shop(memdb)
    r = service.buy(memdb, user="r", lines=[{"sku": "A"}, {"sku": "C", "qty": 2}],
                    at=at(1), order="r0")
    assert [(x["sku"], x["qty"], x["total"], x["cash"]) for x in r["lines"]] == [
        ("A", 1, 6000, 6000), ("C", 2, 6000, 6000)]
    # queue cash 120.00 reaches min_order: each queue line its own entry, by its own lock
    s = state(memdb)
    assert [(e["amount"], e["matures_at"]) for e in s["entries"]] == [
        ("60.00", "2026-08-11T00:00:00+08:00"), ("60.00", "2026-08-06T00:00:00+08:00")]
    assert r["entry"] == 1 and [x["entry"] for x in r["lines"]] == [1, 2]
    assert r["minted"] == r["lines"][1]["minted"] > 0
    assert lines_stored(memdb, "r0") == [(1, "A", 1, 6000, 6000, 1, 0, 0),
                                         (2, "C", 2, 6000, 6000, 2, r["minted"], 0)]


def test_points_paying_a_cart_leave_cash_split_floor_first_rest_last(memdb):
    shop(memdb)
    service.buy(memdb, user="b", sku="B", qty=5, at=at(1))  # b holds points now
    r = service.buy(memdb, user="b", lines=[{"sku": "C"}, {"sku": "B", "qty": 2}],
                    pay_points="3.5", at=at(2))
    cash = r["cash"]
    assert r["total"] == 11000 and cash == 11000 - r["points_value"]
    first = cash * 3000 // 11000
    assert [x["cash"] for x in r["lines"]] == [first, cash - first]


def test_below_min_order_no_line_enters_the_queue_but_points_still_mint(memdb):
    shop(memdb)
    r = service.buy(memdb, user="b", lines=[{"sku": "A"}, {"sku": "B"}], at=at(1))
    assert state(memdb)["entries"] == []
    assert r["entry"] is None and r["lines"][1]["minted"] > 0 and r["accelerated"] == 0


def test_a_one_line_order_is_one_line_the_same_as_the_shorthand(memdb, make_db):
    other = make_db("memory")
    shop(memdb)
    shop(other)
    a = service.buy(memdb, user="b", sku="C", qty=4, at=at(1), order="x")
    b = service.buy(other, user="b", lines=[{"sku": "C", "qty": 4}], at=at(1), order="x")
    assert a == b and state(memdb) == state(other)
    assert a["lines"] == [{"sku": "C", "qty": 4, "total": 12000, "cash": 12000, "entry": 1,
                           "minted": a["minted"], "accelerated": a["accelerated"]}]
    assert lines_stored(memdb, "x") == [(1, "C", 4, 12000, 12000, 1, a["minted"],
                                         a["accelerated"])]


@pytest.mark.parametrize("kwargs,code", [
    ({"sku": "A", "lines": [{"sku": "A"}]}, "invalid_event"),
    ({"lines": []}, "invalid_event"),
    ({"lines": [{"qty": 1}]}, "invalid_event"),
    ({"lines": "A"}, "invalid_event"),
    ({"lines": [{"sku": "A"}] * 51}, "invalid_event"),
    ({"lines": [{"sku": "A", "qty": 0}, {"sku": "NOPE"}]}, "unknown_product"),
    ({"lines": [{"sku": "A"}, {"sku": "B", "qty": True}]}, "invalid_amount"),
    ({"lines": [{"sku": "A", "qty": 3}, {"sku": "A", "qty": 2}]}, "out_of_stock"),
])
def test_bad_lines_are_refused_in_spec_order_and_change_nothing(memdb, kwargs, code):
    shop(memdb)
    service.upsert_product(memdb, sku="A", price="60.00", margin="0.50", lock_days=10,
                           scheme="queue", stock=4, at=at(1))
    before = state(memdb), memdb.read(lambda s: s.get(Head, 1).last_txn), stock(memdb, "A")
    with pytest.raises(Refusal) as refused:
        service.buy(memdb, user="b", at=at(2), **kwargs)
    assert refused.value.code == code
    assert (state(memdb), memdb.read(lambda s: s.get(Head, 1).last_txn),
            stock(memdb, "A")) == before


def test_stock_is_taken_by_orders_and_given_back_by_refunds_and_unpaid_cancels(memdb):
    shop(memdb, settle_days="3")
    service.upsert_product(memdb, sku="A", price="60.00", margin="0.50", lock_days=10,
                           scheme="queue", stock=3, at=at(1))
    service.buy(memdb, user="b", lines=[{"sku": "A"}, {"sku": "A"}], at=at(1), order="p")
    assert stock(memdb, "A") == 1
    opened = checkout.open_checkout(memdb, user="b", lines=[{"sku": "A"}], channel="wechat",
                                    method="wechat", key="k1", at=at(1))
    assert stock(memdb, "A") == 0
    with pytest.raises(Refusal, match="out_of_stock"):
        service.buy(memdb, user="r", sku="A", at=at(1))
    assert checkout.expire_due(memdb, at=at(1) + timedelta(hours=1)) == 1
    assert stock(memdb, "A") == 1
    service.refund(memdb, order="p", at=at(2))
    assert stock(memdb, "A") == 3
    # a later product event without stock keeps the count; null makes it unlimited
    service.upsert_product(memdb, sku="A", price="61.00", margin="0.50", lock_days=10,
                           scheme="queue", at=at(2))
    assert stock(memdb, "A") == 3
    service.upsert_product(memdb, sku="A", price="61.00", margin="0.50", lock_days=10,
                           scheme="queue", stock=None, at=at(2))
    service.buy(memdb, user="r", sku="A", qty=50, at=at(2))
    assert stock(memdb, "A") is None and opened["token"]
    assert verify(memdb).ok


def test_an_order_that_took_no_stock_puts_none_back(memdb):
    shop(memdb, settle_days="3")
    service.buy(memdb, user="b", sku="A", qty=2, at=at(1), order="u")  # unlimited then
    service.upsert_product(memdb, sku="A", price="60.00", margin="0.50", lock_days=10,
                           scheme="queue", stock=5, at=at(1))
    service.refund(memdb, order="u", at=at(2))
    assert stock(memdb, "A") == 5


def test_receipt_orders_settle_from_their_receipt_and_stay_refundable_until_then(memdb):
    shop(memdb, settle_days="2", settle_from="receipt")
    r = service.buy(memdb, user="b", lines=[{"sku": "A"}, {"sku": "C", "qty": 2}],
                    at=at(1), order="o")
    assert r["settles_at"] is None and r["status"] == "pending"
    service.settle(memdb, at=at(30))  # never before it is received
    assert state(memdb)["entries"] == []
    with pytest.raises(Refusal, match="not_receivable"):
        service.receive(memdb, order="o", at=at(1, 9))  # before its payment
    got = service.receive(memdb, order="o", at=at(3, 15), actor="tg:1")
    assert got["received_at"] == "2026-08-03T15:00:00+08:00"
    assert got["settles_at"] == "2026-08-05T00:00:00+08:00"
    with pytest.raises(Refusal, match="not_receivable"):
        service.receive(memdb, order="o", at=at(3, 16))
    settled = service.buy(memdb, user="r", sku="B", at=at(5, 9))  # settles what is due
    assert settled["status"] == "pending"
    entries = state(memdb)["entries"]
    # maturity still counts from the payment date (1 Aug + 10 days, + 5 days)
    assert [e["matures_at"] for e in entries] == ["2026-08-11T00:00:00+08:00",
                                                  "2026-08-06T00:00:00+08:00"]
    with pytest.raises(Refusal, match="not_refundable"):
        service.refund(memdb, order="o", at=at(5, 10))
    with pytest.raises(Refusal, match="not_receivable"):
        service.receive(memdb, order="o", at=at(6))  # settled
    with pytest.raises(Refusal, match="unknown_order"):
        service.receive(memdb, order="nope", at=at(6))


def test_receiving_a_payment_order_marks_it_and_changes_no_settlement_time(memdb):
    shop(memdb, settle_days="3")
    r = service.buy(memdb, user="b", sku="A", at=at(1), order="o")
    got = service.receive(memdb, order="o", at=at(2))
    assert got["settles_at"] == r["settles_at"] and got["received_at"]


def test_a_cart_paid_by_a_channel_later_settles_each_line_in_a_later_transaction(db):
    shop(db, settle_days="1")
    service.buy(db, user="r", lines=[{"sku": "A"}, {"sku": "C", "qty": 2}], at=at(1))
    opened = checkout.open_checkout(db, user="b", lines=[{"sku": "A"}, {"sku": "C", "qty": 2}],
                                    channel="wechat", method="wechat", key="k", at=at(1))
    assert [x["sku"] for x in opened["lines"]] == ["A", "C"]
    paid = checkout.record_payment(db, channel="wechat", charge_id="tx1",
                                   amount=opened["cash"], currency="CNY", buyer="wx:b",
                                   order=opened["order"], at=at(1, 11))
    assert paid["ok"] and paid["status"] == "pending"
    service.settle(db, at=at(2))
    s = state(db)
    assert [(e["user"], e["amount"], e["released"]) for e in s["entries"]] == [
        ("r", "60.00", "24.00"), ("r", "60.00", "0.00"), ("b", "60.00", "0.00"),
        ("b", "60.00", "0.00")]
    assert s["users"]["r"]["wallet"] == "24.00"  # each of b's lines accelerated 12.00
    done = lines_stored(db, opened["order"])
    assert [(x[5], x[7]) for x in done] == [(3, 1200), (4, 1200)] and done[1][6] > 0
    assert verify(db).ok


def test_an_open_cart_order_names_all_its_lines_for_its_replacement(memdb):
    shop(memdb)
    opened = checkout.open_checkout(memdb, user="b", lines=[{"sku": "A"}, {"sku": "C", "qty": 2}],
                                    channel="wechat", method="wechat", key="k", at=at(1))
    assert checkout.open_order_lines(memdb, user="b", order=opened["order"]) == (
        [{"sku": "A", "qty": 1}, {"sku": "C", "qty": 2}], False)
    assert checkout.open_order_line(memdb, user="b", order=opened["order"]) == ("A", 1, False)
    with pytest.raises(Refusal, match="unknown_order"):
        checkout.open_order_lines(memdb, user="r", order=opened["order"])
    q = offer.quote(memdb, user="b", lines=[{"sku": "A"}, {"sku": "C", "qty": 2}])
    assert q["total"] == 12000 and [x["total"] for x in q["lines"]] == [6000, 6000]
    assert q["lines"][0]["kind"] == "goods" and q["lines"][0]["stock"] is None


def test_a_one_line_orders_line_is_written_when_it_settles_later_without_being_read(db):
    shop(db, settle_days="1")
    service.buy(db, user="r", sku="C", qty=4, at=at(1), order="one")
    assert lines_stored(db, "one") == [(1, "C", 4, 12000, 12000, None, 0, 0)]
    settled = service.settle(db, at=at(2))
    assert len(settled) == 1
    order = settled[0]
    assert lines_stored(db, "one") == [(1, "C", 4, 12000, 12000, order["entry"],
                                        order["minted"], order["accelerated"])]
    assert order["lines"][0]["entry"] == order["entry"] == 1
    matures = db.read(lambda s: s.execute(select(OrderLine.matures_at)).scalar_one())
    assert matures.isoformat() == "2026-08-05T16:00:00+00:00"  # 6 Aug 00:00 store-local


def test_the_operators_view_of_a_product_shows_its_stock_and_kind(memdb):
    from engine import views

    shop(memdb)
    service.upsert_product(memdb, sku="D", price="5.00", margin="0.1", lock_days=0,
                           scheme="none", stock=7, kind="digital", at=at(1))
    got = views.product(memdb, "D")
    assert got is not None and (got["stock"], got["kind"]) == (7, "digital")
    assert views.product(memdb, "A")["stock"] is None and views.product(memdb, "Z") is None
    items = offer.catalogue(memdb)["products"]
    assert {p["sku"]: (p["stock"], p["kind"]) for p in items}["D"] == (7, "digital")
    with pytest.raises(Refusal, match="invalid_event"):
        service.upsert_product(memdb, sku="D", price="5.00", margin="0.1", lock_days=0,
                               scheme="none", kind="gift", at=at(1))


def test_group_commit_records_carts_and_refuses_the_one_out_of_stock_alone(memdb):
    shop(memdb)
    service.upsert_product(memdb, sku="A", price="60.00", margin="0.50", lock_days=10,
                           scheme="queue", stock=2, at=at(1))
    service.start_group_commit(memdb)
    try:
        first = service.buy(memdb, user="r", lines=[{"sku": "A"}, {"sku": "B"}], at=at(2))
        with pytest.raises(Refusal, match="out_of_stock"):
            service.buy(memdb, user="b", lines=[{"sku": "A", "qty": 2}], at=at(2))
        second = service.buy(memdb, user="b", lines=[{"sku": "A"}, {"sku": "C"}], at=at(2))
    finally:
        service.stop_group_commit(memdb)
    assert [len(first["lines"]), len(second["lines"])] == [2, 2]
    assert stock(memdb, "A") == 0 and verify(memdb).ok


def test_a_typed_sku_is_found_whatever_its_case_by_a_quote_and_the_cart_alike(memdb):
    """One lookup of a typed SKU (engine/catalogue.py `product_named`): exact, else the one
    product equal but for case; `%` and `_` are letters, not wildcards."""
    from engine import cart

    shop(memdb)
    service.upsert_product(memdb, sku="TEA_1", price="5.00", margin="0.1", lock_days=0,
                           scheme="none", at=at(1))
    assert offer.quote(memdb, user="b", sku="tea_1")["sku"] == "TEA_1"
    assert [line["sku"] for line in cart.add(memdb, user="b", sku="tea_1")["lines"]] == ["TEA_1"]
    for typed in ("TEA%", "TEA_", "%", "tea\\_1"):
        with pytest.raises(Refusal, match="unknown_product"):
            offer.quote(memdb, user="b", sku=typed)
        with pytest.raises(Refusal, match="unknown_product"):
            cart.add(memdb, user="b", sku=typed)
