"""WeChat Pay merchant transfers SIGKILLed at every step (issue 17).

Each case brings a withdrawal of 100.00 (approved, to Alice's WeChat balance) to one phase of
its life, then runs that phase in a *separate process* (a forked child of
tests/transfer_kill_driver.py) with a fault point armed (storage/faults.py): the process
SIGKILLs itself there, mid-transaction or mid-conversation with WeChat Pay (the loopback
stand-in, tests/standins/wechatpay_transfers.py, which lives in this process and keeps its
own books). The books must verify right after the kill; then the follower (and WeChat Pay's
notification, redelivered as WeChat Pay does until it gets a 2xx) runs again without the
fault until the transfer ends, and the end is checked against the stand-in's own count:
the payee paid exactly once, or the hold back in the wallet exactly once; one ending in
the journal, one message to the user, `verify` (the engine's and the real `storefront
verify`) clean. docs/reliability.md ("Transfers") lists the steps and the figures.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from engine import transfers
from engine.verify import verify
from storage.db import Database
from storage.models import JournalTxn, Outbox, Transfer
from tests.standins import wechat as sw
from tests.standins.wechatpay_transfers import BILLS, FakeTransferAPI
from tests.test_transfers import ALICE, alice, funded, status_of, withdraw
from tests.transfer_kill_driver import Driver, pay_spec

pytestmark = pytest.mark.slow
KILLED = -signal.SIGKILL
EXPIRED = 25 * 60  # minutes: past the 24 h confirm window (transfer_kill_driver)
RESTARTS = (3, 10, 30, 90)  # minutes after the killed run: the follower, as often as needed


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> sw.PayKeys:
    return sw.generate_pay_keys(tmp_path_factory.mktemp("wxpay-kill"))


@pytest.fixture(scope="module")
def driver() -> Iterator[Driver]:
    d = Driver()
    yield d
    d.close()


class Case:
    """One shop, one approved withdrawal, the stand-in, and the child processes."""

    def __init__(self, db: Database, api: FakeTransferAPI, driver: Driver,
                 keys: sw.PayKeys) -> None:
        self.db, self.api, self.driver = db, api, driver
        self.url = db.engine.url.render_as_string(hide_password=False)
        self.pay = pay_spec(keys, api.base_url)
        funded(db)
        self.wid = withdraw(db)
        self.no = transfers.out_bill_no(self.wid)

    def follow(self, minutes: float, fault: str | None = None) -> dict[str, Any]:
        return self.driver(op="follow", db=self.url, pay=self.pay, minutes=minutes,
                           fault=fault and f"{fault}:1")

    def notify(self, fault: str | None = None) -> dict[str, Any]:
        headers, body = self.api.notification_for(self.no)
        return self.driver(op="notify", db=self.url, pay=self.pay, headers=headers,
                           body=body.decode(), fault=fault and f"{fault}:1")

    def ok(self, answer: dict[str, Any]) -> dict[str, Any]:
        assert answer["exit"] == 0, answer
        out: dict[str, Any] = answer["out"]
        return out

    def state(self) -> str:
        return str(self.db.read(lambda s: s.get(Transfer, self.no).state))  # type: ignore[union-attr]

    def restart(self, after: float) -> None:
        """The follower restarted (no fault), run again later until a run finds nothing
        due (every retry here is due within minutes: the backoff after one attempt)."""
        for minutes in RESTARTS:
            if self.ok(self.follow(after + minutes))["done"] == {}:
                return

    def endings(self) -> tuple[int, int]:
        """(journal transactions ending the transfer, messages telling the user the end)"""
        def count(s: Any) -> tuple[int, int]:
            txns = s.execute(select(func.count()).select_from(JournalTxn).where(
                JournalTxn.key.like(f"transfer:{self.no}:%"))).scalar_one()
            notes = s.execute(select(func.count()).select_from(Outbox).where(
                Outbox.kind.in_(("transfer_paid", "transfer_failed")))).scalar_one()
            return int(txns), int(notes)
        return self.db.read(count)

    def assert_sound(self) -> None:
        report = verify(self.db)
        assert report.ok, report.problems

    def assert_end(self, paid: bool) -> None:
        bills = [b for b in self.api.bills.values() if b["openid"] == ALICE]
        assert len(bills) <= 1  # one withdrawal, at most one bill at WeChat Pay, ever
        assert self.api.paid_to(ALICE) == (10000 if paid else 0)
        assert status_of(self.db, self.wid) == ("paid" if paid else "failed")
        assert alice(self.db) == {"wallet": "200.00" if paid else "300.00", "held": "0.00"}
        assert self.endings() == (1, 1)
        self.assert_sound()
        cli = self.ok(self.driver(op="cli", argv=["verify", "--db", self.url]))
        assert cli["code"] == 0, cli["stdout"]


@pytest.fixture
def case(request: pytest.FixtureRequest, make_db: Any, keys: sw.PayKeys,
         driver: Driver) -> Iterator[Case]:
    kind = getattr(request, "param", "sqlite")
    with FakeTransferAPI(keys) as api:
        yield Case(make_db(kind), api, driver, keys)


def killed(case: Case, answer: dict[str, Any]) -> None:
    """The child died by SIGKILL at its fault point; nothing it did is half-done."""
    assert answer["exit"] == KILLED, answer
    assert answer["out"] is None
    assert alice(case.db)["held"] in ("100.00", "0.00")
    case.assert_sound()


def end_bill(case: Case, ending: str) -> None:
    case.api.confirm(case.no) if ending == "SUCCESS" else case.api.fail(case.no)


# -- 1. creating the bill: claim, call, record ----------------------------------------------

CREATE = ["commit.before:claim_transfers", "commit.after:claim_transfers", "transfer.claimed",
          "transfer.before_call", "transfer.after_call", "commit.before:record_transfer",
          "commit.after:record_transfer"]


@pytest.mark.parametrize("point", CREATE)
def test_killed_while_creating_the_bill(case: Case, point: str) -> None:
    paid = CREATE.index(point) % 2 == 0
    killed(case, case.follow(0, point))
    assert alice(case.db) == {"wallet": "200.00", "held": "100.00"}
    case.restart(0)
    assert case.state() == "WAIT_USER_CONFIRM"
    assert len(case.api.bills) == 1
    creates = [c.status for c in case.api.calls_of(BILLS, "POST")]
    assert creates == [200], creates  # made once; a retry looked the key up instead
    end_bill(case, "SUCCESS" if paid else "FAIL")
    assert case.ok(case.notify())["status"] == 204
    case.restart(200)
    case.assert_end(paid)


# -- 2. the notification of the end: before / after it is recorded --------------------------

NOTIFY = [(point, ending) for point in ("commit.before:record_transfer",
                                        "commit.after:record_transfer")
          for ending in ("SUCCESS", "FAIL")]


def _waiting(case: Case) -> None:
    assert case.ok(case.follow(0))["done"] == {"wait_user_confirm": 1}


@pytest.mark.parametrize(("point", "ending"), NOTIFY)
def test_killed_while_recording_the_notification(case: Case, point: str, ending: str) -> None:
    _waiting(case)
    end_bill(case, ending)
    killed(case, case.notify(point))
    held = "0.00" if point.startswith("commit.after") else "100.00"
    assert alice(case.db)["held"] == held
    # WeChat Pay got no 2xx: it notifies again; the follower's query comes too
    assert case.ok(case.notify())["status"] == 204
    case.restart(11)
    case.assert_end(ending == "SUCCESS")


# -- 3. the follower's query finds the end (the notification lost): the hold moves ----------

QUERY = ["transfer.after_call", "commit.before:record_transfer", "commit.after:record_transfer"]


@pytest.mark.parametrize("point", QUERY)
def test_killed_while_the_follower_gives_the_hold_back(case: Case, point: str) -> None:
    _waiting(case)
    end_bill(case, "FAIL")
    killed(case, case.follow(11, point))
    case.restart(11)
    case.assert_end(False)


# -- 4. WeChat Pay refuses the create for good: the hold goes back --------------------------

@pytest.mark.parametrize("point", ["commit.before:record_transfer",
                                   "commit.after:record_transfer"])
def test_killed_while_a_refused_transfer_gives_the_hold_back(case: Case, point: str) -> None:
    case.api.inject_error(BILLS, 400, "PARAM_ERROR", "openid 不合法", times=2)
    killed(case, case.follow(0, point))
    case.restart(0)
    assert case.api.bills == {}
    case.assert_end(False)


# -- 5. cancelling a bill the user left unconfirmed -----------------------------------------

CANCEL = ["transfer.before_call", "transfer.after_cancel", "transfer.after_call",
          "commit.before:record_transfer", "commit.after:record_transfer"]


@pytest.mark.parametrize("point", CANCEL)
def test_killed_while_cancelling_an_expired_transfer(case: Case, point: str) -> None:
    _waiting(case)
    killed(case, case.follow(EXPIRED, point))
    case.restart(EXPIRED)
    assert case.api.bills[case.no]["state"] == "CANCELLED"
    case.assert_end(False)


# -- the two most delicate steps, on PostgreSQL too -----------------------------------------

@pytest.mark.parametrize("case", ["postgresql"], indirect=True)
def test_postgresql_killed_after_wechat_pay_made_the_bill(case: Case) -> None:
    """The bill exists at WeChat Pay, nothing recorded; the claim's row lock died with us."""
    killed(case, case.follow(0, "transfer.after_call"))
    case.restart(0)
    assert [c.status for c in case.api.calls_of(BILLS, "POST")] == [200]
    end_bill(case, "SUCCESS")
    assert case.ok(case.notify())["status"] == 204
    case.assert_end(True)


@pytest.mark.parametrize("case", ["postgresql"], indirect=True)
def test_postgresql_killed_giving_the_hold_back(case: Case) -> None:
    """Killed holding the transfer's row lock, the hold's postings written, not committed."""
    _waiting(case)
    end_bill(case, "FAIL")
    killed(case, case.notify("commit.before:record_transfer"))
    assert case.ok(case.notify())["status"] == 204
    case.restart(11)
    case.assert_end(False)


# -- the stand-in's failures, end to end (through the follower's own process) ---------------

def _timeout(case: Case) -> None:
    case.api.slow_next(1.0)  # made, answered after the client (0.5 s read) gave up


def _server_error(case: Case) -> None:
    case.api.inject_error(BILLS, 500, "SYSTEM_ERROR", "系统错误", times=2)


def _duplicate(case: Case) -> None:
    # an earlier create WeChat Pay holds with other parameters: ours is a duplicate
    case.api.bills[case.no] = {
        "out_bill_no": case.no, "transfer_bill_no": "1330" + "7" * 36,
        "state": "WAIT_USER_CONFIRM", "transfer_amount": 10000, "openid": ALICE,
        "transfer_scene_id": "1005", "user_name": None, "remark": "x",
        "create_time": "2026-01-01T00:00:00+08:00", "update_time": "2026-01-01T00:00:00+08:00",
        "package_info": "ABBQO+oYAAABAAAAAAAk+00000000000000000000"}


def _no_funds(case: Case) -> None:
    case.api.funds = 5000  # the merchant's account holds 50.00


FAILURES = {"timeout": (_timeout, {"retry": 1}, [200]),
            "5xx": (_server_error, {"retry": 1}, [500, 500, 200]),
            "duplicate": (_duplicate, {"wait_user_confirm": 1}, [400]),
            "insufficient_funds": (_no_funds, {"retry": 1}, [403, 200])}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_each_stand_in_failure_ends_paid_once(case: Case, failure: str) -> None:
    prepare, first, creates = FAILURES[failure]
    prepare(case)
    assert case.ok(case.follow(0))["done"] == first
    assert alice(case.db) == {"wallet": "200.00", "held": "100.00"}
    case.assert_sound()
    if failure == "insufficient_funds":
        flags = case.db.read(lambda s: s.execute(select(Outbox.params).where(
            Outbox.kind == "transfer_flag")).scalars().all())
        assert len(flags) == 1 and "insufficient_funds" in flags[0]  # the operators told
        case.api.funds = 100_000  # …who top the account up
    case.restart(0)
    assert case.state() == "WAIT_USER_CONFIRM"
    statuses = [c.status for c in case.api.calls_of(BILLS, "POST")]
    if failure == "timeout":  # its (late) answer may still be on its way: count the call
        statuses = [200] * len(statuses)
    assert statuses == creates
    end_bill(case, "SUCCESS")
    assert case.ok(case.notify())["status"] == 204
    case.assert_end(True)


def test_a_bill_confirmed_just_before_we_cancel_it_ends_paid(case: Case) -> None:
    """The user confirms at the last moment (and the notification is lost): WeChat Pay
    refuses our cancel; the query that follows records the payment (it was retried as an
    error forever before)."""
    _waiting(case)
    case.api.confirm(case.no)
    assert case.ok(case.follow(EXPIRED))["done"] == {"success": 1}
    assert [c.status for c in case.api.calls_of(f"{BILLS}/out-bill-no/{case.no}/cancel")] \
        == [400]
    case.assert_end(True)


def test_killed_after_the_bill_was_made_and_the_notification_comes_first(case: Case) -> None:
    """WeChat Pay made the bill, we died before recording it, and the user confirmed: the
    notification finds the transfer still `NEW` here and ends it; the restarted follower
    has nothing left to do."""
    killed(case, case.follow(0, "transfer.after_call"))
    case.api.confirm(case.no)
    assert case.ok(case.notify())["status"] == 204
    case.restart(0)
    assert [c.status for c in case.api.calls_of(BILLS, "POST")] == [200]
    case.assert_end(True)


@pytest.mark.parametrize("point", ["commit.before:transfer_attempt",
                                   "commit.after:transfer_attempt"])
def test_killed_while_noting_insufficient_funds(case: Case, point: str) -> None:
    """Killed recording a try without funds: the operators are still told exactly once."""
    case.api.funds = 5000
    killed(case, case.follow(0, point))
    assert case.ok(case.follow(3))["done"] == {"retry": 1}
    flags = case.db.read(lambda s: s.execute(select(Outbox.params).where(
        Outbox.kind == "transfer_flag")).scalars().all())
    assert len(flags) == 1 and "insufficient_funds" in flags[0]
    case.api.funds = 100_000
    case.restart(3)
    end_bill(case, "SUCCESS")
    assert case.ok(case.notify())["status"] == 204
    case.assert_end(True)
