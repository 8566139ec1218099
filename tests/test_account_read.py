"""`/me` reads the member and their account together (engine.users.resolve_and_account):
the same answer as `resolve` then `account`, in one read snapshot and one worker-thread hop."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from engine import users
from engine.errors import Refusal
from storage.models import Entry, Identity, User
from tests.handlers_kit import Chat, text


async def _shop(db) -> Chat:  # type: ignore[no-untyped-def]
    """tg:10 "Ann" holds points; tg:11 "Bo", her invitee, waits in the queue; tg:12 was
    invited by tg:13, who has no name; tg:14 is blocked."""
    chat = Chat(db)
    await chat.setup_shop()
    await chat.send("tg:10", "/start", name="Ann")
    await chat.pay("tg:10", await chat.send("tg:10", "/buy RICE"))
    code = users.invite_code(db, users.resolve(db, "tg:10")["user_id"])
    await chat.send("tg:11", "/start", payload=code, name="Bo")
    await chat.pay("tg:11", await chat.send("tg:11", "/buy TEA"))
    await chat.send("tg:13", "/start")
    code = users.invite_code(db, users.resolve(db, "tg:13")["user_id"])
    await chat.send("tg:12", "/start", payload=code, lang="zh")
    await chat.send("tg:14", "/start")
    db.run(lambda s: s.execute(update(User).where(User.handle == "tg:14").values(blocked=True)))
    return chat


async def test_resolve_and_account_answers_what_resolve_then_account_answer(db):
    await _shop(db)
    for who in ("tg:10", "tg:11", "tg:12", "tg:13", "tg:14", "tg:1"):
        member = users.resolve(db, who)
        assert users.resolve_and_account(db, who) == (member,
                                                      users.account(db, member["handle"]))
    member, view = users.resolve_and_account(db, "tg:11")
    assert view["referrer"] == "Ann" and view["entries_waiting"] == 1 and view["owed"] > 0
    assert users.resolve_and_account(db, "tg:12")[1]["referrer"] == "tg:13"  # no name: handle
    assert users.resolve_and_account(db, "tg:10")[1]["points"] > 0
    assert users.resolve_and_account(db, "tg:14")[0]["blocked"] is True
    # the view's figures are the stored ones, as plain ints, on either database
    ann = db.read(lambda s: s.execute(select(User).where(User.handle == "tg:10")).scalar_one()
                  .__dict__.copy())
    waiting = db.read(lambda s: s.execute(select(Entry.amount - Entry.released).join(
        User, User.id == Entry.user_id).where(User.handle == "tg:11",
                                              Entry.status == "waiting")).scalars().all())
    mine = users.resolve_and_account(db, "tg:10")[1]
    assert (mine["wallet"], mine["held"], mine["points"], mine["basis"]) == (
        ann["wallet"], ann["held"], ann["points"], ann["basis"])
    assert (view["entries_waiting"], view["owed"]) == (len(waiting), sum(waiting))
    assert all(type(v) is int for v in (*mine.values(), view["owed"])
               if isinstance(v, (int, float)) and not isinstance(v, bool))


async def test_first_contact_through_resolve_and_account_creates_the_user_with_a_referrer(db):
    await _shop(db)
    code = users.invite_code(db, users.resolve(db, "tg:10")["user_id"])
    member, view = users.resolve_and_account(db, "tg:20", lang="zh", display_name="Cai",
                                             start_payload=code)
    assert member["new"] is True and member["lang"] == "zh" and member["display_name"] == "Cai"
    assert member["referrer_id"] == users.resolve(db, "tg:10")["user_id"]
    assert view == users.account(db, "tg:20") and view["referrer"] == "Ann"
    again, _ = users.resolve_and_account(db, "tg:20")
    assert again == {**member, "new": False}


def test_resolve_and_account_refreshes_last_seen_at_most_hourly(db):
    t0 = datetime(2026, 8, 1, 10, tzinfo=UTC)

    def seen() -> datetime | None:
        return db.read(lambda s: s.get(Identity, "tg:9").last_seen_at)

    assert users.resolve_and_account(db, "tg:9", at=t0)[0]["new"]
    assert seen() == t0
    users.resolve_and_account(db, "tg:9", at=t0 + timedelta(minutes=30))
    assert seen() == t0
    users.resolve_and_account(db, "tg:9", at=t0 + timedelta(minutes=59))
    assert seen() == t0
    users.resolve_and_account(db, "tg:9", at=t0 + timedelta(hours=2))
    assert seen() == t0 + timedelta(hours=2)


@pytest.mark.parametrize("who", ["", "tg", "tg:", "tg:1 2", "x" * 200, None])
def test_resolve_and_account_refuses_what_is_no_identity(memdb, who):
    with pytest.raises(Refusal):
        users.resolve_and_account(memdb, who)


async def test_me_and_its_menu_button_take_one_read_and_one_thread_hop(memdb, monkeypatch):
    chat = await _shop(memdb)
    reads, hops = [], []
    real_read, real_hop = memdb.read, asyncio.to_thread

    def read(work):  # type: ignore[no-untyped-def]
        reads.append(work)
        return real_read(work)

    async def hop(fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(fn)
        return await real_hop(fn, *args, **kwargs)

    monkeypatch.setattr(memdb, "read", read)
    monkeypatch.setattr(asyncio, "to_thread", hop)
    for ask in ({"text": "/me"}, {"text": "我的"}, {"callback": "cmd:v1:me"},
                {"text": "/points"}):
        reads.clear()
        hops.clear()
        reply = text(await chat.send("tg:11", **ask))  # type: ignore[arg-type]
        assert reply.startswith(("Account Bo", "Points:", "账户", "积分")), reply
        assert (len(reads), len(hops)) == (1, 1), ask


async def test_me_names_the_inviter_and_the_queue_and_a_blocked_member_is_told_so(memdb):
    chat = await _shop(memdb)
    body = text(await chat.send("tg:11", "/me"))
    view = users.account(memdb, "tg:11")
    assert body.splitlines()[0] == "Account Bo"
    assert "Cashback queue: 1 waiting" in body and "Invited by: Ann" in body
    assert view["referrer"] == "Ann"
    assert text(await chat.send("tg:14", "/me")) == text(await chat.send("tg:14", "/help"))
