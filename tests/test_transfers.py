"""Withdrawals paid by WeChat Pay merchant transfers (issue 17), against the loopback
transfer stand-in: approval pays exactly once, a transfer that fails, is cancelled or expires
gives the hold back, and a crash at any step neither pays twice nor loses the hold."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.wechatpay.config import PayConfig
from bot.wechatpay.transfers import WeChatTransfers
from engine import service, transfers, users
from engine.errors import Refusal
from engine.money import format_fen
from engine.verify import verify
from scheduler.transfers import follow
from storage import faults
from storage.db import Database
from storage.models import Outbox, Transfer, User, Withdrawal
from tests.standins import wechat as sw
from tests.standins.wechatpay_transfers import BILLS, FakeTransferAPI, bill_path

ALICE = "oAlice_000000000000000000001"
WX = f"wx:{ALICE}"
OPERATOR = "tg:1"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> sw.PayKeys:
    return sw.generate_pay_keys(tmp_path_factory.mktemp("wxpay"))


@pytest.fixture
def api(keys: sw.PayKeys) -> Iterator[FakeTransferAPI]:
    with FakeTransferAPI(keys) as fake:
        yield fake


def transfers_client(db: Database, keys: sw.PayKeys, api: FakeTransferAPI) -> WeChatTransfers:
    client = sw.make_pay_client(keys, api.base_url, "https://shop.example/wechat/pay/notify",
                                timeout=(1, 0.5))
    config = PayConfig(appid=keys.appid, mchid=keys.mchid, apiv3_key=keys.apiv3_key,
                       public_key_id=keys.public_key_id,
                       public_key_pem=keys.platform_public_key_pem,
                       notify_url="https://shop.example/wechat/pay/notify")
    return WeChatTransfers(db, client, config)


def funded(db: Database, *, wallet_teas: int = 3, name: str | None = None) -> None:
    """Alice (WeChat) with `wallet_teas` × 100.00 in her wallet and WeChat as her method."""
    users.resolve(db, WX)
    service.upsert_product(db, sku="TEA", price="100.00", margin="0.50", lock_days=0,
                           scheme="queue")
    service.deposit(db, pool="queue", amount=f"{200 * wallet_teas}.00")
    service.buy(db, user=WX, sku="TEA", qty=wallet_teas, key="buy1")
    service.release(db)
    service.set_payout_method(db, user=WX, kind="wechat", name=name)


def withdraw(db: Database, amount: str = "100.00") -> int:
    r = service.request_withdrawal(db, user=WX, amount=amount, key=f"w:{amount}")
    service.decide_withdrawal(db, withdrawal_id=r["withdrawal"], approve=True, actor=OPERATOR)
    return int(r["withdrawal"])


def withdrawn(make_db: Any, keys: sw.PayKeys, api: FakeTransferAPI
              ) -> tuple[Database, int, WeChatTransfers]:
    """On SQLite: Alice funded (`funded`), her approved 100.00 withdrawal, the transfers
    client that pays it."""
    db = make_db("sqlite")
    funded(db)
    wid = withdraw(db)
    return db, wid, transfers_client(db, keys, api)


def alice(db: Database) -> dict:
    """Alice's wallet and the money held for her withdrawals."""
    row = db.read(lambda s: s.execute(select(User.wallet, User.held).where(
        User.handle == WX)).one())
    return {"wallet": format_fen(row[0]), "held": format_fen(row[1])}


def run(db: Database, wt: WeChatTransfers, when: datetime | None = None) -> dict:
    at = when or datetime.now(UTC)
    return dict(asyncio.run(follow(db, wt, clock=lambda: at, operators=frozenset({OPERATOR}))))


def later(minutes: float) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def transfer_row(db: Database, wid: int) -> Transfer:
    return db.read(lambda s: s.execute(select(Transfer).where(
        Transfer.withdrawal_id == wid)).scalar_one())


def status_of(db: Database, wid: int) -> str:
    return db.read(lambda s: s.get(Withdrawal, wid).status)  # type: ignore[union-attr]


def assert_books_sound(db: Database) -> None:
    report = verify(db)
    assert report.ok, report.problems


def test_approval_pays_the_wechat_balance_exactly_once_after_the_user_confirms(db, keys, api):
    """On SQLite and PostgreSQL."""
    funded(db)
    wid = withdraw(db)
    assert status_of(db, wid) == "transfer"
    assert alice(db)["wallet"] == "200.00"  # held, not yet paid
    wt = transfers_client(db, keys, api)
    assert run(db, wt) == {"wait_user_confirm": 1}
    no = transfers.out_bill_no(wid)
    bill = api.bills[no]
    assert (bill["transfer_amount"], bill["openid"], bill["transfer_scene_id"]) == \
        (10000, ALICE, "1000")
    [confirm] = db.read(lambda s: s.execute(select(Outbox).where(
        Outbox.kind == "transfer_confirm")).scalars().all())
    assert "/wechat/pay/transfer/" in confirm.params
    api.confirm(no)
    assert run(db, wt, later(11)) == {"success": 1}
    assert status_of(db, wid) == "paid"
    assert run(db, wt, later(30)) == {}  # nothing open any more
    assert api.paid_to(ALICE) == 10000
    assert len(api.calls_of(BILLS, "POST")) == 1
    assert alice(db)["wallet"] == "200.00"
    assert_books_sound(db)


def test_a_failed_transfer_gives_the_hold_back_and_tells_the_user_why(make_db, keys, api):
    db, wid, wt = withdrawn(make_db, keys, api)
    run(db, wt)
    api.fail(transfers.out_bill_no(wid), "PAYEE_ACCOUNT_ABNORMAL")
    assert run(db, wt, later(11)) == {"fail": 1}
    assert status_of(db, wid) == "failed"
    assert alice(db)["wallet"] == "300.00" and api.paid_to(ALICE) == 0
    note = db.read(lambda s: s.execute(select(Outbox.params).where(
        Outbox.kind == "transfer_failed")).scalar_one())
    assert "PAYEE_ACCOUNT_ABNORMAL" in note
    assert_books_sound(db)


def test_a_transfer_left_unconfirmed_is_cancelled_and_the_hold_comes_back(make_db, keys, api):
    db, wid, wt = withdrawn(make_db, keys, api)
    run(db, wt)
    assert run(db, wt, later(25 * 60)) == {"cancelled": 1}
    assert len(api.calls_of(bill_path(transfers.out_bill_no(wid)) + "/cancel")) == 1
    assert status_of(db, wid) == "failed" and alice(db)["wallet"] == "300.00"
    assert_books_sound(db)


def test_insufficient_merchant_funds_keep_the_hold_tell_the_operators_and_retry(make_db, keys):
    db = make_db("sqlite")
    funded(db)
    with FakeTransferAPI(keys, funds=5000, need_confirm=False) as api:
        wt = transfers_client(db, keys, api)
        wid = withdraw(db)
        assert run(db, wt) == {"retry": 1}
        assert run(db, wt) == {}  # not due again yet
        assert status_of(db, wid) == "transfer" and alice(db)["wallet"] == "200.00"
        flags = db.read(lambda s: s.execute(select(Outbox.params).where(
            Outbox.kind == "transfer_flag")).scalars().all())
        assert len(flags) == 1 and "insufficient_funds" in flags[0]
        api.funds = 100_000  # the merchant tops up
        assert run(db, wt, later(2)) == {"accepted": 1}
        api.confirm(transfers.out_bill_no(wid))
        assert run(db, wt, later(15)) == {"success": 1}
        assert api.paid_to(ALICE) == 10000
        assert len(db.read(lambda s: s.execute(select(Outbox.id).where(
            Outbox.kind == "transfer_flag")).all())) == 1  # told once
    assert_books_sound(db)


def test_a_5xx_and_a_timeout_are_retried_and_looked_up_never_paid_twice(make_db, keys, api):
    db, wid, wt = withdrawn(make_db, keys, api)
    no = transfers.out_bill_no(wid)
    api.inject_error(BILLS, 500, "SYSTEM_ERROR", "系统错误")
    assert run(db, wt) == {"retry": 1}
    assert no not in api.bills
    api.slow_next(1.0)  # made, but answered after the client gave up
    assert run(db, wt, later(2)) == {"retry": 1}
    assert api.bills[no]["state"] == "WAIT_USER_CONFIRM"
    assert run(db, wt, later(5)) == {"wait_user_confirm": 1}  # looked up, not created again
    assert [c.status for c in api.calls_of(bill_path(no), "GET")] == [404, 200]
    assert len(api.calls_of(BILLS, "POST")) == 2
    api.confirm(no)
    assert run(db, wt, later(20)) == {"success": 1}
    assert api.paid_to(ALICE) == 10000 and alice(db)["wallet"] == "200.00"
    assert_books_sound(db)


def test_a_duplicate_out_bill_no_is_answered_by_the_existing_bill(make_db, keys, api):
    db, wid, wt = withdrawn(make_db, keys, api)
    no = transfers.out_bill_no(wid)
    wt.create(out_bill_no=no, openid=ALICE, amount=10000, user_name=None)  # an earlier try
    api.bills[no]["transfer_scene_id"] = "1005"  # …that WeChat Pay holds with other params
    # attempt 1 creates without a look-up: WeChat Pay says duplicate, we adopt its bill
    assert run(db, wt) == {"wait_user_confirm": 1}
    assert [c.status for c in api.calls_of(BILLS, "POST")] == [200, 400]
    assert len(api.bills) == 1
    assert_books_sound(db)


def test_wechat_refusing_the_request_ends_the_transfer_and_returns_the_hold(make_db, keys, api):
    db = make_db("sqlite")
    funded(db)
    wid = withdraw(db)
    api.inject_error(BILLS, 400, "PARAM_ERROR", "openid 不合法")
    assert run(db, transfers_client(db, keys, api)) == {"refused": 1}
    assert status_of(db, wid) == "failed" and alice(db)["wallet"] == "300.00"
    assert_books_sound(db)


def test_real_name_is_required_from_2000_yuan_and_sent_encrypted(make_db, keys, api):
    db = make_db("sqlite")
    funded(db, wallet_teas=25)
    with pytest.raises(Refusal) as refused:
        service.request_withdrawal(db, user=WX, amount="2000.00")
    assert refused.value.code == "real_name_required"
    service.set_payout_method(db, user=WX, kind="wechat", name="张三")
    wid = withdraw(db, "2000.00")
    assert run(db, transfers_client(db, keys, api)) == {"wait_user_confirm": 1}
    bill = api.bills[transfers.out_bill_no(wid)]
    assert bill["user_name"] == "张三"  # decrypted by the stand-in: it travelled encrypted
    sent = api.calls_of(BILLS, "POST")[0].json["user_name"]
    assert sent != "张三" and len(sent) > 100
    assert_books_sound(db)


# -- a crash at every step ----------------------------------------------------------------------

STEPS = ["commit.before:claim_transfers", "commit.after:claim_transfers", "transfer.claimed",
         "transfer.before_call", "transfer.after_call", "commit.before:record_transfer",
         "commit.after:record_transfer"]


@pytest.mark.parametrize(("point", "ending"),
                         [(p, "SUCCESS" if i % 2 else "FAIL") for i, p in enumerate(STEPS)])
def test_a_crash_at_any_step_neither_pays_twice_nor_loses_the_hold(make_db, keys, api, point,
                                                                   ending):
    """Each step crashed once, the transfer ending paid or failed (alternately)."""
    db, wid, wt = withdrawn(make_db, keys, api)
    no = transfers.out_bill_no(wid)
    faults.arm(f"{point}:1:raise")
    try:
        with pytest.raises(faults.FaultInjected):
            run(db, wt)
    finally:
        faults.disarm()
    assert alice(db)["wallet"] == "200.00" and alice(db)["held"] == "100.00"
    assert_books_sound(db)
    for minutes in (3, 10, 30):  # the restarted follower, as often as it takes
        run(db, wt, later(minutes))
    assert api.bills[no]["state"] == "WAIT_USER_CONFIRM"
    assert len(api.bills) == 1
    api.confirm(no) if ending == "SUCCESS" else api.fail(no)
    headers, body = api.notification_for(no)
    # the notification, delivered twice, and the follower's own query: one ending
    for _ in range(2):
        assert asyncio.run(wt.notification(headers, body)).status == 204
    run(db, wt, later(60))
    paid = ending == "SUCCESS"
    assert api.paid_to(ALICE) == (10000 if paid else 0)
    assert status_of(db, wid) == ("paid" if paid else "failed")
    assert alice(db)["wallet"] == ("200.00" if paid else "300.00")
    assert alice(db)["held"] == "0.00"
    assert_books_sound(db)


# -- the notification endpoint ------------------------------------------------------------------

def test_notifications_are_verified_before_anything_is_recorded(make_db, keys, api):
    db, wid, wt = withdrawn(make_db, keys, api)
    no = transfers.out_bill_no(wid)
    run(db, wt)
    api.confirm(no)
    bad = [api.notification_for(no, wrong_signature=True),
           api.notification_for(no, timestamp=int(datetime.now(UTC).timestamp()) - 3600),
           api.notification_for(no, amount=99999)]
    assert [asyncio.run(wt.notification(h, b)).status for h, b in bad] == [401, 400, 400]
    assert status_of(db, wid) == "transfer" and alice(db)["held"] == "100.00"
    h, b = api.notification_for(no)
    assert asyncio.run(wt.notification(h, b)).status == 204
    assert status_of(db, wid) == "paid"
    assert_books_sound(db)


def test_a_different_ending_after_the_end_changes_nothing_and_is_reported(make_db, keys, api,
                                                                          caplog):
    db, wid, wt = withdrawn(make_db, keys, api)
    no = transfers.out_bill_no(wid)
    run(db, wt)
    api.fail(no)
    run(db, wt, later(11))
    api.bills[no]["state"] = "SUCCESS"  # WeChat Pay contradicting itself
    h, b = api.notification_for(no)
    assert asyncio.run(wt.notification(h, b)).status == 204
    assert status_of(db, wid) == "failed" and alice(db)["wallet"] == "300.00"
    assert any("check it by hand" in r.getMessage() for r in caplog.records)
    assert_books_sound(db)
