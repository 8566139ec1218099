"""Delivery (SPEC §9, docs/delivery.md): address, shipping, receipt and auto-receive, on the
engine; the lifecycle, the refusals and the auto-receive on SQLite and PostgreSQL, the rest
in memory."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from engine import checkout, delivery, delivery_views, service
from engine.errors import Refusal
from storage.db import Database
from storage.models import Identity, JournalTxn, Order, Outbox, SavedAddress, Shipment, User
from tests.helpers import at, seed_shop

ADDRESS = ("Zhang San", "13800000000", "1 Example Road, Chaoyang, Beijing")


def shop(db: Database, **config: str) -> None:
    """SOFA (goods, both), CLASS (a service), A and B (B invited by A); settle_days 7."""
    seed_shop(db, users=("A", "B", "C"), referrals={"B": "A"},
              products=(("SOFA", "1000.00", "0.35", 30, "both"),
                        ("CLASS", "200.00", "0.30", 0, "queue")),
              config={"store": {"settle_days": "7", **config}}, queue_seed="10000.00")
    service.upsert_product(db, sku="CLASS", price="200.00", margin="0.30", lock_days=0,
                           scheme="queue", kind="service", at=at(1, 0))


def order(db: Database, ref: str) -> Order:
    return db.read(lambda s: s.execute(select(Order).where(Order.ref == ref)).scalar_one())


def outbox(db: Database, kind: str) -> list[Outbox]:
    return list(db.read(lambda s: s.execute(select(Outbox).where(Outbox.kind == kind)
                                            .order_by(Outbox.id)).scalars().all()))


def journal(db: Database, kind: str) -> int:
    return db.read(lambda s: s.execute(select(func.count()).select_from(JournalTxn)
                                       .where(JournalTxn.kind == kind)).scalar_one())


def refused(code: str, fn: object, *args: object, **kwargs: object) -> None:
    with pytest.raises(Refusal) as caught:
        fn(*args, **kwargs)  # type: ignore[operator]
    assert caught.value.code == code


def test_a_goods_order_ships_is_received_by_its_buyer_and_settles_from_receipt(db):
    shop(db, settle_from="receipt")
    service.buy(db, user="B", sku="SOFA", order="S1", at=at(1))
    delivery.record_address(db, order="S1", name=ADDRESS[0], phone=ADDRESS[1],
                            address=ADDRESS[2], at=at(1))
    listed = delivery_views.to_ship(db)
    assert listed["count"] == 1
    assert [(o["order"], o["user"], o["lines"], o["address"]) for o in listed["orders"]] == \
        [("S1", "B", [("SOFA", 1)], ADDRESS[2])]
    assert order(db, "S1").settles_at is None  # under receipt: no window before it arrives

    shipped = delivery.ship(db, order="S1", carrier="SF", tracking="SF1234567890", at=at(2),
                            actor="tg:1")
    assert (shipped["carrier"], shipped["tracking"], shipped["user"]) == \
        ("SF", "SF1234567890", "B")
    assert delivery_views.to_ship(db)["count"] == 0
    notes = outbox(db, "order_shipped")
    assert len(notes) == 1 and '"tracking":"SF1234567890"' in notes[0].params
    assert journal(db, "ship") == 1

    got = delivery.confirm_receipt(db, order="S1", user="B", at=at(4))
    assert got["already"] is False and got["received_by"] == "buyer"
    o = order(db, "S1")
    assert o.received_at == at(4) and o.status == "pending"
    assert o.settles_at == at(11, 0)  # 00:00 store-local on the receipt date plus 7 days
    assert outbox(db, "order_received") == []  # the buyer said so themselves: no message
    service.settle(db, at=at(11, 0))
    assert order(db, "S1").status == "settled"
    again = delivery.confirm_receipt(db, order="S1", user="B", at=at(12))
    assert again["already"] is True and again["received_at"] == at(4)
    assert journal(db, "receive") == 1


def test_shipping_again_with_the_same_number_changes_nothing_and_another_is_refused(memdb):
    shop(memdb)
    service.buy(memdb, user="B", sku="SOFA", order="S1", at=at(1))
    delivery.ship(memdb, order="S1", carrier="SF", tracking="SF1", at=at(2))
    again = delivery.ship(memdb, order="S1", carrier="SF", tracking="SF1", at=at(3))
    assert again["replayed"] is True and again["shipped_at"] == at(2)
    refused("already_shipped", delivery.ship, memdb, order="S1", carrier="EMS", tracking="E999")
    assert len(outbox(memdb, "order_shipped")) == 1 and journal(memdb, "ship") == 1


def test_only_paid_goods_orders_ship(db):
    shop(db)
    refused("unknown_order", delivery.ship, db, order="NOPE", carrier="SF", tracking="SF1")
    service.buy(db, user="B", sku="CLASS", order="C1", at=at(1))
    refused("not_shippable", delivery.ship, db, order="C1", carrier="SF", tracking="SF1")
    opened = checkout.open_checkout(db, user="B", sku="SOFA", channel="telegram",
                                    method="telegram", key="k1", at=at(1))
    refused("not_shippable", delivery.ship, db, order=opened["order"], carrier="SF",
            tracking="SF1")
    service.buy(db, user="B", sku="SOFA", order="S2", at=at(1))
    service.refund(db, order="S2", at=at(2))
    refused("not_shippable", delivery.ship, db, order="S2", carrier="SF", tracking="SF1")
    refused("invalid_event", delivery.ship, db, order="S2", carrier="SF", tracking="no spaces")
    assert journal(db, "ship") == 0 and delivery_views.to_ship(db)["count"] == 0


def test_a_buyer_confirms_only_their_own_shipped_paid_order(memdb):
    shop(memdb)
    service.buy(memdb, user="B", sku="SOFA", order="S1", at=at(1))
    refused("not_shipped", delivery.confirm_receipt, memdb, order="S1", user="B", at=at(2))
    delivery.ship(memdb, order="S1", carrier="SF", tracking="SF1", at=at(2))
    refused("unknown_order", delivery.confirm_receipt, memdb, order="S1", user="C", at=at(3))
    refused("unknown_order", delivery.confirm_receipt, memdb, order="S9", user="B", at=at(3))
    service.refund(memdb, order="S1", at=at(3))
    refused("not_receivable", delivery.confirm_receipt, memdb, order="S1", user="B", at=at(4))
    assert order(memdb, "S1").received_at is None


def test_receipt_of_an_order_settled_from_payment_marks_the_parcel_only(memdb):
    shop(memdb, settle_days="0")
    service.buy(memdb, user="B", sku="SOFA", order="S1", at=at(1))
    assert order(memdb, "S1").status == "settled"
    delivery.ship(memdb, order="S1", carrier="SF", tracking="SF1", at=at(2))
    got = delivery.confirm_receipt(memdb, order="S1", user="B", at=at(3))
    assert got["status"] == "settled" and got["received_at"] == at(3)
    assert journal(memdb, "receive") == 0  # SPEC §9's receive is for pending orders


def test_shipped_orders_are_received_after_the_days_unless_an_operator_holds_them(db):
    shop(db, settle_from="receipt")
    for ref in ("S1", "S2", "S3"):
        service.buy(db, user="B", sku="SOFA", order=ref, at=at(1))
        delivery.ship(db, order=ref, carrier="SF", tracking=f"SF{ref}", at=at(2))
    delivery.hold(db, order="S2", actor="tg:1", at=at(3))
    delivery.confirm_receipt(db, order="S3", user="B", at=at(4))
    assert delivery.auto_receive_due(db, at=at(2) + timedelta(days=10, seconds=-1),
                                     days=10) == []
    assert delivery.auto_receive_due(db, at=at(12), days=10) == ["S1"]
    assert delivery.auto_receive_due(db, at=at(13), days=10) == []  # once
    o = order(db, "S1")
    assert o.received_at == at(12) and o.settles_at == at(19, 0)
    notes = outbox(db, "order_received")
    assert len(notes) == 1 and '"by":"auto"' in notes[0].params
    assert order(db, "S2").received_at is None
    released = delivery.hold(db, order="S2", on=False, actor="tg:1", at=at(13))
    assert released["changed"] is True
    assert delivery.auto_receive_due(db, at=at(13), days=10) == ["S2"]
    assert journal(db, "hold") == 2


def test_auto_receive_skips_refunded_orders(memdb):
    shop(memdb, settle_from="receipt")
    service.buy(memdb, user="B", sku="SOFA", order="S1", at=at(1))
    delivery.ship(memdb, order="S1", carrier="SF", tracking="SF1", at=at(2))
    service.refund(memdb, order="S1", at=at(3))
    assert delivery.auto_receive_due(memdb, at=at(20), days=10) == []


def test_a_confirmed_address_is_kept_and_attached_to_paid_goods_orders_without_one(memdb):
    shop(memdb)
    service.buy(memdb, user="B", sku="SOFA", order="S1", at=at(1))
    service.buy(memdb, user="B", sku="CLASS", order="C1", at=at(1))
    assert delivery_views.to_ship(memdb)["orders"][0]["address"] is None
    saved = delivery.save_address(memdb, user="B", name=" Zhang  San ", phone="138 0000 0000",
                                  address=ADDRESS[2], at=at(2))
    assert saved["attached"] == ["S1"] and saved["name"] == "Zhang San"
    assert delivery.saved_address(memdb, user="B") == {
        "name": "Zhang San", "phone": "138 0000 0000", "address": ADDRESS[2]}
    # the next goods order takes it when it ships
    service.buy(memdb, user="B", sku="SOFA", order="S2", at=at(3))
    delivery.ship(memdb, order="S2", carrier="SF", tracking="SF2", at=at(4))
    row = memdb.read(lambda s: s.get(Shipment, "S2"))
    assert (row.name, row.address) == ("Zhang San", ADDRESS[2])
    refused("invalid_address", delivery.save_address, memdb, user="B", name="X", phone="abc",
            address=ADDRESS[2])
    refused("invalid_address", delivery.save_address, memdb, user="B", name="X",
            phone="13800000000", address="a")


def test_telegrams_order_info_is_recorded_for_the_checkouts_buyer_only(memdb):
    shop(memdb)
    opened = checkout.open_checkout(memdb, user="B", sku="SOFA", channel="telegram",
                                    method="telegram", key="k1", at=at(1))

    def link(session):  # B speaks as tg:42, C as tg:77
        for handle, identity in (("B", "tg:42"), ("C", "tg:77")):
            uid = session.execute(select(User.id).where(User.handle == handle)).scalar_one()
            session.add(Identity(identity=identity, user_id=uid, created_at=at(1)))

    memdb.run(link)
    refused("unknown_order", delivery.record_checkout_address, memdb, token=opened["token"],
            identity="tg:77", name=ADDRESS[0], phone=ADDRESS[1], address=ADDRESS[2])
    delivery.record_checkout_address(memdb, token=opened["token"], identity="tg:42",
                                     name=ADDRESS[0], phone=ADDRESS[1], address=ADDRESS[2])
    row = memdb.read(lambda s: s.get(Shipment, opened["order"]))
    assert (row.name, row.phone, row.address) == ADDRESS
    assert memdb.read(lambda s: s.execute(select(func.count()).select_from(SavedAddress))
                   .scalar_one()) == 1


def test_the_buyers_orders_say_where_each_stands(memdb):
    shop(memdb, settle_from="receipt")
    service.buy(memdb, user="B", sku="SOFA", order="S1", at=at(1))
    service.buy(memdb, user="B", sku="SOFA", order="S2", at=at(1))
    service.buy(memdb, user="B", sku="CLASS", order="C1", at=at(1))
    delivery.ship(memdb, order="S2", carrier="SF", tracking="SF2", at=at(2))
    view = {o["order"]: o for o in delivery_views.buyer_orders(memdb, user="B")["orders"]}
    assert view["S1"]["goods"] and view["S1"]["shipped_at"] is None
    assert view["S1"]["settles_at"] is None and view["S1"]["settle_days"] == 7
    assert (view["S2"]["carrier"], view["S2"]["tracking"]) == ("SF", "SF2")
    assert view["C1"]["goods"] is False


def test_an_order_with_nothing_to_ship_is_received_when_its_buyer_says_so(memdb):
    shop(memdb, settle_from="receipt")
    service.buy(memdb, user="B", sku="CLASS", order="C1", at=at(1))
    refused("unknown_order", delivery.confirm_receipt, memdb, order="C1", user="C", at=at(2))
    got = delivery.confirm_receipt(memdb, order="C1", user="B", at=at(2))
    assert got["already"] is False and got["settles_at"] == at(9, 0)
    assert memdb.read(lambda s: s.get(Shipment, "C1")) is None
    assert delivery.confirm_receipt(memdb, order="C1", user="B", at=at(3))["already"] is True


def test_the_buyer_and_the_job_receiving_at_once_receive_the_order_once(pg_db):
    from concurrent.futures import ThreadPoolExecutor

    shop(pg_db, settle_from="receipt")
    for ref in ("S1", "S2", "S3", "S4"):
        service.buy(pg_db, user="B", sku="SOFA", order=ref, at=at(1))
        delivery.ship(pg_db, order=ref, carrier="SF", tracking=f"SF{ref}", at=at(2))
    with ThreadPoolExecutor(5) as pool:
        mine = [pool.submit(delivery.confirm_receipt, pg_db, order=ref, user="B", at=at(12))
                for ref in ("S1", "S2", "S3", "S4")]
        job = pool.submit(delivery.auto_receive_due, pg_db, at=at(12), days=10)
        confirmed = [f.result() for f in mine]
        auto = job.result()
    rows = {r.order_ref: r for r in pg_db.read(lambda s: s.execute(select(Shipment))
                                                .scalars().all())}
    assert journal(pg_db, "receive") == 4
    assert sorted(auto) == sorted(ref for ref, r in rows.items() if r.received_by == "auto")
    assert sorted(c["order"] for c in confirmed if not c["already"]) == \
        sorted(ref for ref, r in rows.items() if r.received_by == "buyer")
    assert len(outbox(pg_db, "order_received")) == len(auto)


def test_a_goods_order_without_an_address_of_its_own_shows_the_saved_one(memdb):
    shop(memdb)
    delivery.save_address(memdb, user="B", name=ADDRESS[0], phone=ADDRESS[1],
                          address=ADDRESS[2], at=at(1))
    service.buy(memdb, user="B", sku="SOFA", order="S1", at=at(2))
    (view,) = delivery_views.buyer_orders(memdb, user="B")["orders"]
    assert view["address"] == ADDRESS[2]
    assert delivery_views.to_ship(memdb)["orders"][0]["address"] == ADDRESS[2]
