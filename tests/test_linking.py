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
from tests.helpers import at, seed_shop, state


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
    seed_shop(db, users=("X", "TG", "WX", "R"), referrals={"R": "TG", "TG": "X"},
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
    seed_shop(memdb, users=("X", "Y", "TG", "WX"), referrals={"TG": "X", "WX": "Y"},
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
    seed_shop(memdb, users=("TG", "WX"), referrals={"WX": "TG"})
    identify(memdb, "TG", "tg:1")
    identify(memdb, "WX", "wx:o1")
    link_code(memdb, identity="tg:1", code="SELF2345", at=at(2))
    link_accounts(memdb, code="SELF2345", identity="wx:o1", at=at(2))
    assert state(memdb)["users"]["WX"]["referrer"] is None


def test_refuses_to_join_two_accounts_that_both_hold_money(db):
    seed_shop(db, users=("TG", "WX"), products=[("tea", "100.00", "0.50", 15, "points")])
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
    seed_shop(memdb, users=("TG", "WX"), products=[("tea", "100.00", "0.50", 15, "queue")],
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
    seed_shop(memdb, users=("TG", "WX", "W2"))
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
    seed_shop(memdb, users=("TG", "T2"))
    identify(memdb, "TG", "tg:1")
    identify(memdb, "T2", "tg:2")
    link_code(memdb, identity="tg:1", code="SAME2345", at=at(2))
    with pytest.raises(Refusal, match="already_linked"):
        link_accounts(memdb, code="SAME2345", identity="tg:1", at=at(2))
    with pytest.raises(Refusal, match="link_same_channel"):
        link_accounts(memdb, code="SAME2345", identity="tg:2", at=at(2))
    assert owner(memdb, "tg:2") == "T2"


def test_a_new_code_replaces_the_old_one(memdb):
    seed_shop(memdb, users=("TG", "WX"))
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
    seed_shop(memdb, users=("TG", "O", "WX"), products=[("tea", "100.00", "0", 15, "queue")])
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


# -- issue 13: a referral loop through account linking ---------------------------------------


def _entries(db) -> list[tuple[str, str]]:
    return [(e["user"], e["released"]) for e in state(db)["entries"]]


@pytest.mark.parametrize("asks", ["tg:7", "wx:oA"])
def test_a_referral_loop_through_linking_is_closed(db, asks):
    """A (WeChat, no referrer) invites X; A's Telegram identity T joins with X's code; T and A
    link. The merged account keeps A's first contact and so no referrer: X→A stays (A did
    invite X), A→X is never made, and acceleration flows only from X to A."""
    seed_shop(db, users=(), products=[("tea", "100.00", "0.50", 15, "queue")])
    service.join(db, user="A", at=at(1, 9))
    service.join(db, user="X", referrer="A", at=at(1, 10))
    service.join(db, user="T", referrer="X", at=at(1, 11))
    identify(db, "A", "wx:oA")
    identify(db, "T", "tg:7")
    service.deposit(db, pool="queue", amount="100.00", at=at(1, 12))
    link_code(db, identity=asks, code="LQQP2345", at=at(2))
    result = link_accounts(db, code="LQQP2345", identity="wx:oA" if asks == "tg:7" else "tg:7",
                           at=at(2))
    merged = result["user"]
    assert result["identities"] == ["tg:7", "wx:oA"] and merged == "T"  # the newer row stays
    s = state(db)
    assert s["users"][merged]["referrer"] is None  # no referrer gained after first contact
    assert s["users"]["X"]["referrer"] == merged
    assert set(s["users"]) == {merged, "X"}

    service.buy(db, user="X", sku="tea", at=at(3))  # X's entry first: it would be paid first
    service.buy(db, user=merged, sku="tea", at=at(3, 11))  # would pay X if A→X existed
    assert _entries(db) == [("X", "0.00"), (merged, "0.00")]
    service.buy(db, user="X", sku="tea", at=at(3, 12))  # X→A: pays the merged account
    assert _entries(db) == [("X", "0.00"), (merged, "20.00"), ("X", "0.00")]
    report = verify(db)
    assert report.ok, report.problems


def test_linking_keeps_the_referrer_of_the_earliest_first_contact_not_the_lowest_id(db):
    # WX's row is older (lower id) but TG's first contact came first: TG's referrer stays.
    seed_shop(db, users=(), products=[("tea", "100.00", "0.50", 15, "queue")])
    service.join(db, user="Y", at=at(1, 8))
    service.join(db, user="Z", at=at(1, 8))
    service.join(db, user="WX", referrer="Y", at=at(1, 12))
    service.join(db, user="TG", referrer="Z", at=at(1, 9))
    identify(db, "WX", "wx:o1")
    identify(db, "TG", "tg:1")
    link_code(db, identity="wx:o1", code="ERLY2345", at=at(2))
    result = link_accounts(db, code="ERLY2345", identity="tg:1", at=at(2))
    assert state(db)["users"][result["user"]]["referrer"] == "Z"
    # and the later identity's referrer is not taken when the earliest had none
    service.join(db, user="N", at=at(1, 7))
    service.join(db, user="M", referrer="Y", at=at(1, 13))
    identify(db, "N", "wx:o2")
    identify(db, "M", "tg:2")
    link_code(db, identity="tg:2", code="LATE2345", at=at(2))
    result = link_accounts(db, code="LATE2345", identity="wx:o2", at=at(2))
    assert state(db)["users"][result["user"]]["referrer"] is None


def test_linking_drops_a_referrer_whose_chain_leads_back_to_the_account(db):
    """The earliest first contact's referrer is dropped when its own referrers lead back to
    either linked account: T (first contact 08:00, by X's code) links with A, who invited X.
    Keeping X would make A→X→A, acceleration paid both ways."""
    seed_shop(db, users=(), products=[("tea", "100.00", "0.50", 15, "queue")])
    service.join(db, user="A", at=at(1, 9))
    service.join(db, user="X", referrer="A", at=at(1, 10))
    service.join(db, user="T", referrer="X", at=at(1, 8))  # a clock that ran behind
    service.join(db, user="W", referrer="X", at=at(1, 10))  # a longer way round: W→X→A
    identify(db, "A", "wx:oA")
    identify(db, "T", "tg:7")
    identify(db, "W", "tg:8")
    link_code(db, identity="tg:7", code="CYCL2345", at=at(2))
    merged = link_accounts(db, code="CYCL2345", identity="wx:oA", at=at(2))["user"]
    s = state(db)
    assert s["users"][merged]["referrer"] is None and s["users"]["X"]["referrer"] == merged
    # an account whose referrer chain does not come back keeps its referrer: W→X→(A+T)
    service.join(db, user="V", at=at(1, 11))
    identify(db, "V", "wx:oV")
    link_code(db, identity="tg:8", code="KEEP2345", at=at(2))
    kept = link_accounts(db, code="KEEP2345", identity="wx:oV", at=at(2))["user"]
    assert state(db)["users"][kept]["referrer"] == "X"  # W's, the earlier first contact
    assert verify(db).ok


def test_no_acceleration_between_two_identities_of_one_account(db):
    # T joined with A's own code (the same person's other identity): the edge goes on link.
    seed_shop(db, users=(), products=[("tea", "100.00", "0.50", 15, "queue")])
    service.join(db, user="A", at=at(1, 9))
    service.join(db, user="T", referrer="A", at=at(1, 10))
    identify(db, "A", "wx:oA")
    identify(db, "T", "tg:7")
    service.deposit(db, pool="queue", amount="100.00", at=at(1, 12))
    link_code(db, identity="wx:oA", code="SELF6789", at=at(2))
    merged = link_accounts(db, code="SELF6789", identity="tg:7", at=at(2))["user"]
    assert state(db)["users"][merged]["referrer"] is None
    service.buy(db, user=merged, sku="tea", at=at(3))
    service.buy(db, user=merged, sku="tea", at=at(3, 11))
    assert _entries(db) == [(merged, "0.00"), (merged, "0.00")]
    assert db.read(lambda s: s.execute(select(User.id).where(
        User.referrer_id == User.id)).first()) is None
