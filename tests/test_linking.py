"""One person, one account (engine/linking.py): codes, joins and the refusals."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from engine import service
from engine.errors import Refusal
from engine.linking import link_accounts, link_code, normalise_code
from engine.verify import verify
from storage.models import Entry, Identity, LinkCode, Order, User
from tests.helpers import at, shop, state


def identify(db, handle: str, *identities: str) -> None:
    def work(s):
        uid = s.execute(select(User.id).where(User.handle == handle)).scalar_one()
        for identity in identities:
            s.add(Identity(identity=identity, user_id=uid, created_at=at(1, 0)))

    db.run(work)


def owner(db, identity: str) -> str:
    def work(s):
        uid = s.execute(select(Identity.user_id).where(Identity.identity == identity)).scalar_one()
        return s.get(User, uid).handle

    return db.read(work)


def test_join_moves_money_entries_points_and_referrals_into_one_account(db):
    # TG (older) has a wallet, points, a waiting entry and a referee; WX (newer) is empty.
    shop(db, users=("X", "TG", "WX", "R"), referrals={"R": "TG", "TG": "X"},
         products=[("tea", "100.00", "0.50", 15, "both")], queue_seed="10.00")
    identify(db, "TG", "tg:1")
    identify(db, "WX", "wx:o1")
    service.buy(db, user="TG", sku="tea", at=at(2))
    service.buy(db, user="R", sku="tea", at=at(3))  # accelerates TG's entry: wallet > 0
    before = state(db)["users"]["TG"]
    assert before["wallet"] != "0.00" and before["points"] != "0.000000"

    issued = link_code(db, identity="tg:1", code="ABCD2345", at=at(4))
    assert issued["expires_at"] == at(4) + timedelta(minutes=10)
    result = link_accounts(db, code="abcd-2345", identity="wx:o1",
                           at=at(4) + timedelta(minutes=5))
    assert result["identities"] == ["tg:1", "wx:o1"] and result["user"] == "WX"

    after = state(db)
    assert "TG" not in after["users"]
    merged = after["users"]["WX"]
    assert (merged["wallet"], merged["points"], merged["basis"]) == (
        before["wallet"], before["points"], before["basis"])
    assert merged["referrer"] == "X"  # the referrer fixed at the first contact stays
    assert after["users"]["R"]["referrer"] == "WX"  # referees follow the account
    assert [e["user"] for e in after["entries"]] == ["WX", "R"]
    assert owner(db, "tg:1") == owner(db, "wx:o1") == "WX"
    assert db.read(lambda s: s.execute(select(LinkCode)).first()) is None
    report = verify(db)
    assert report.ok, report.problems

    # the joined account acts as one: both identities reach the same wallet
    service.request_withdrawal(db, user=owner(db, "tg:1"), amount=merged["wallet"], at=at(5))
    assert state(db)["users"]["WX"]["wallet"] == "0.00"


def test_newer_account_money_stays_and_older_referrer_wins(memdb):
    shop(memdb, users=("X", "Y", "TG", "WX"), referrals={"TG": "X", "WX": "Y"},
         products=[("tea", "100.00", "0.50", 15, "points")])
    identify(memdb, "TG", "tg:7")
    identify(memdb, "WX", "wx:o7")
    service.buy(memdb, user="WX", sku="tea", at=at(2))
    link_code(memdb, identity="wx:o7", code="WXCDE222", at=at(3))
    link_accounts(memdb, code="WXCDE222", identity="tg:7", at=at(3))
    s = state(memdb)
    assert set(s["users"]) == {"X", "Y", "WX"}
    assert s["users"]["WX"]["referrer"] == "X" and s["users"]["WX"]["points"] != "0.000000"
    orders = memdb.read(lambda ses: [o.user_id for o in ses.execute(select(Order)).scalars()])
    wx_id = memdb.read(lambda ses: ses.execute(
        select(User.id).where(User.handle == "WX")).scalar_one())
    assert orders == [wx_id]
    assert verify(memdb).ok


def test_no_one_refers_themselves_after_a_join(memdb):
    shop(memdb, users=("TG", "WX"), referrals={"WX": "TG"})
    identify(memdb, "TG", "tg:1")
    identify(memdb, "WX", "wx:o1")
    link_code(memdb, identity="tg:1", code="SELF2345", at=at(2))
    link_accounts(memdb, code="SELF2345", identity="wx:o1", at=at(2))
    assert state(memdb)["users"]["WX"]["referrer"] is None


def test_refuses_to_join_two_accounts_that_both_hold_money(db):
    shop(db, users=("TG", "WX"), products=[("tea", "100.00", "0.50", 15, "points")])
    identify(db, "TG", "tg:1")
    identify(db, "WX", "wx:o1")
    service.buy(db, user="TG", sku="tea", at=at(2))
    service.buy(db, user="WX", sku="tea", at=at(2))
    link_code(db, identity="tg:1", code="MNEY2345", at=at(3))
    before = state(db)
    with pytest.raises(Refusal) as refused:
        link_accounts(db, code="MNEY2345", identity="wx:o1", at=at(3))
    assert refused.value.code == "link_both_funded"
    assert state(db) == before and owner(db, "wx:o1") == "WX"
    # the code still works once one side is empty (here: never; it simply is not spent)
    assert db.read(lambda s: s.get(LinkCode, "MNEY2345").used) is False


def test_an_open_order_counts_as_money(memdb):
    shop(memdb, users=("TG", "WX"), products=[("tea", "100.00", "0.50", 15, "queue")],
         config={"store": {"settle_days": "7"}})
    identify(memdb, "TG", "tg:1")
    identify(memdb, "WX", "wx:o1")
    service.buy(memdb, user="TG", sku="tea", at=at(2))  # pending for 7 days: no balance yet
    service.buy(memdb, user="WX", sku="tea", at=at(2))
    link_code(memdb, identity="tg:1", code="PEND2345", at=at(3))
    with pytest.raises(Refusal, match="link_both_funded"):
        link_accounts(memdb, code="PEND2345", identity="wx:o1", at=at(3))


@pytest.mark.parametrize("case", ["unknown", "expired", "malformed", "used"])
def test_bad_codes_are_refused_and_change_nothing(memdb, case):
    shop(memdb, users=("TG", "WX", "W2"))
    identify(memdb, "TG", "tg:1")
    identify(memdb, "WX", "wx:o1")
    identify(memdb, "W2", "wx:o2")
    link_code(memdb, identity="tg:1", code="GDCD2345", at=at(2))
    code, when = {"unknown": ("NPE23456", at(2)), "expired": ("GDCD2345", at(2) + timedelta(
        minutes=10)), "malformed": ("<script>", at(2)), "used": ("GDCD2345", at(2))}[case]
    if case == "used":
        link_accounts(memdb, code="GDCD2345", identity="wx:o1", at=at(2))
    before = state(memdb)
    with pytest.raises(Refusal) as refused:
        link_accounts(memdb, code=code, identity="wx:o2", at=when)
    assert refused.value.code == "link_code_invalid"
    assert state(memdb) == before


def test_same_account_and_same_channel_are_refused(memdb):
    shop(memdb, users=("TG", "T2"))
    identify(memdb, "TG", "tg:1")
    identify(memdb, "T2", "tg:2")
    link_code(memdb, identity="tg:1", code="SAME2345", at=at(2))
    with pytest.raises(Refusal, match="already_linked"):
        link_accounts(memdb, code="SAME2345", identity="tg:1", at=at(2))
    with pytest.raises(Refusal, match="link_same_channel"):
        link_accounts(memdb, code="SAME2345", identity="tg:2", at=at(2))
    assert owner(memdb, "tg:2") == "T2"


def test_a_new_code_replaces_the_old_one(memdb):
    shop(memdb, users=("TG", "WX"))
    identify(memdb, "TG", "tg:1")
    identify(memdb, "WX", "wx:o1")
    link_code(memdb, identity="tg:1", code="FRST2345", at=at(2))
    link_code(memdb, identity="tg:1", code="SECND234", at=at(2))
    with pytest.raises(Refusal, match="link_code_invalid"):
        link_accounts(memdb, code="FRST2345", identity="wx:o1", at=at(2))
    link_accounts(memdb, code="SECND234", identity="wx:o1", at=at(2))
    assert owner(memdb, "tg:1") == "WX"


def test_code_normalisation():
    assert normalise_code(" abcd-2345 ") == "ABCD2345"
    assert normalise_code("ABCD234") is None and normalise_code("ABCD2340") is None
    assert normalise_code(None) is None


def test_entries_keep_their_queue_places(memdb):
    shop(memdb, users=("TG", "O", "WX"), products=[("tea", "100.00", "0", 15, "queue")])
    identify(memdb, "TG", "tg:1")
    identify(memdb, "WX", "wx:o1")
    service.buy(memdb, user="TG", sku="tea", at=at(2))
    service.buy(memdb, user="O", sku="tea", at=at(2, 11))
    link_code(memdb, identity="wx:o1", code="PLACE234", at=at(3))
    link_accounts(memdb, code="PLACE234", identity="tg:1", at=at(3))
    seqs = memdb.read(lambda s: [(e.seq, e.user_id) for e in s.execute(
        select(Entry).order_by(Entry.seq)).scalars()])
    assert [seq for seq, _ in seqs] == [1, 2]
    assert [e["user"] for e in state(memdb)["entries"]] == ["WX", "O"]
