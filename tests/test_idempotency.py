"""Every action retried with the same key changes nothing the second time (SPEC §6)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine import checkout, service
from engine.errors import Refusal
from engine.verify import verify
from storage.models import Head, Outbox
from tests.helpers import at, seed_shop, state


def fingerprint(db):
    def read(s):
        h = s.execute(select(Head)).scalar_one()
        return h.last_txn, h.last_hash, len(s.execute(select(Outbox.id)).all())

    return state(db), db.read(read)


@pytest.fixture
def store(db):
    seed_shop(db, users=("A", "B"), referrals={"B": "A"},
              products=[("tea", "100.00", "0.50", 0, "both")], queue_seed="500.00")
    service.buy(db, user="A", sku="tea", at=at(1))
    service.buy(db, user="B", sku="tea", at=at(2))
    return db


RETRIED = {
    "deposit": lambda db: service.deposit(db, pool="queue", amount="1.00", key="dep-1"),
    "buy": lambda db: service.buy(db, user="A", sku="tea", at=at(3), order="o9", key="pay-9"),
    "withdraw_points": lambda db: service.withdraw_points(db, user="A", points="1", key="sell-1"),
    "transfer_points": lambda db: service.transfer_points(db, sender="A", receiver="B",
                                                          points="2", key="give-1"),
    "request_withdrawal": lambda db: service.request_withdrawal(db, user="A", amount="1.00",
                                                                key="wd-1"),
    "withdraw_cash": lambda db: service.withdraw_cash(db, user="A", amount="2.00", key="wc-1"),
}


@pytest.mark.parametrize("action", sorted(RETRIED))
def test_a_retried_action_returns_the_first_result_and_changes_nothing(store, action):
    first = RETRIED[action](store)
    after_first = fingerprint(store)
    second = RETRIED[action](store)
    assert fingerprint(store) == after_first
    assert second.pop("replayed") is True
    assert {k: v for k, v in second.items()} == {k: v for k, v in first.items()}
    assert verify(store).ok


def _pay(store, order, amount, charge, currency="CNY"):
    return checkout.record_payment(store, channel="telegram", order=order, charge_id=charge,
                                   amount=amount, currency=currency, buyer="A")


def test_a_channel_payment_is_recorded_once_per_charge(store):
    order = checkout.open_checkout(store, user="A", sku="tea", qty=2, channel="telegram",
                                   method="telegram", key="open:t1")
    first = _pay(store, order["order"], order["cash"], "ch-1")
    snapshot = fingerprint(store)
    again = _pay(store, order["order"], order["cash"], "ch-1")
    assert fingerprint(store) == snapshot and again["replayed"] and again["entry"] == first["entry"]
    # a second, different charge for the same order
    other_charge = _pay(store, order["order"], order["cash"], "ch-2")
    assert (other_charge["ok"], other_charge["code"]) == (False, "not_payable")
    assert fingerprint(store) == snapshot


def test_a_payment_of_the_wrong_amount_or_currency_records_nothing(store):
    order = checkout.open_checkout(store, user="A", sku="tea", channel="telegram",
                                   method="telegram", key="open:t2")
    snapshot = fingerprint(store)
    for amount, currency in ((order["cash"] - 1, "CNY"), (order["cash"], "USD")):
        refused = _pay(store, order["order"], amount, f"{amount}{currency}", currency)
        assert (refused["ok"], refused["code"]) == (False, "payment_mismatch")
    assert fingerprint(store) == snapshot


def test_release_and_settle_run_twice_pay_once(store):
    service.configure(store, {"store": {"settle_days": "1"}})
    service.buy(store, user="A", sku="tea", at=at(3))
    service.settle(store, at=at(5))
    service.release(store, at=at(20))
    snapshot = fingerprint(store)
    service.settle(store, at=at(5))
    service.release(store, at=at(20))
    assert fingerprint(store) == snapshot
    assert verify(store).ok


def test_decisions_and_refunds_cannot_be_repeated(store):
    w = service.request_withdrawal(store, user="A", amount="1.00")
    service.decide_withdrawal(store, withdrawal_id=w["withdrawal"], approve=True, actor="op")
    service.configure(store, {"store": {"settle_days": "3"}})
    service.buy(store, user="B", sku="tea", at=at(3), order="r1")
    service.refund(store, order="r1", at=at(4))
    snapshot = fingerprint(store)
    for retry, code in ((lambda: service.decide_withdrawal(store, withdrawal_id=w["withdrawal"],
                                                           approve=True, actor="op"),
                         "already_decided"),
                        (lambda: service.refund(store, order="r1", at=at(4)), "not_refundable")):
        with pytest.raises(Refusal) as refused:
            retry()
        assert refused.value.code == code
    assert fingerprint(store) == snapshot
