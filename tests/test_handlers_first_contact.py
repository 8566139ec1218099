"""First contact (SPEC §5): who a chat identity is, the referrer fixed once, the language."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from storage.models import Identity, JournalTxn, User
from tests.handlers_kit import Chat, text


def _user(chat: Chat, handle: str) -> User:
    return chat.db.read(lambda s: s.execute(select(User).where(User.handle == handle))
                        .scalar_one())


def _count_users(chat: Chat) -> int:
    return chat.db.read(lambda s: s.execute(select(func.count()).select_from(User)).scalar_one())


async def _invite_code(chat: Chat, identity: str) -> str:
    reply = await chat.send(identity, "/invite")
    line = next(x for x in text(reply).splitlines() if x.startswith("Your invite code: "))
    return line.split(": ", 1)[1]


async def test_first_message_creates_the_user_with_the_identity_as_handle(db):
    chat = Chat(db)
    reply = await chat.send("tg:42", "/start", name="Alice")
    assert "Welcome to the rebate shop" in text(reply)
    user = _user(chat, "tg:42")
    assert user.display_name == "Alice" and user.referrer_id is None
    assert user.invite_code and len(user.invite_code) >= 12
    ident = db.read(lambda s: s.get(Identity, "tg:42"))
    assert ident.user_id == user.id
    # the join is journaled like every other event
    assert db.read(lambda s: s.execute(select(JournalTxn.kind).where(
        JournalTxn.key == "join:tg:42")).scalar_one()) == "join"
    again = await chat.send("tg:42", "/start")
    assert "Welcome back" in text(again)
    assert _count_users(chat) == 1


async def test_valid_invite_payload_fixes_the_referrer_at_first_contact(db):
    chat = Chat(db)
    code = await _invite_code(chat, "tg:10")
    reply = await chat.send("tg:11", "/start", payload=code)
    assert "invitation" in text(reply)
    assert _user(chat, "tg:11").referrer_id == _user(chat, "tg:10").id


async def test_typed_start_code_counts_as_the_payload(db):
    chat = Chat(db, channel="console")
    code = await _invite_code(chat, "console:a")
    await chat.send("console:b", f"/start {code}")
    assert _user(chat, "console:b").referrer_id == _user(chat, "console:a").id


@pytest.mark.parametrize("payload", ["nosuchcode", "bad payload!", "x" * 65, "", "../etc",
                                     "码"])
async def test_unknown_or_malformed_payload_is_silently_ignored(db, payload):
    chat = Chat(db)
    await _invite_code(chat, "tg:10")
    reply = await chat.send("tg:12", "/start", payload=payload)
    assert "Welcome to the rebate shop" in text(reply)
    assert "invitation" not in text(reply)
    assert _user(chat, "tg:12").referrer_id is None


async def test_referrer_never_changes_and_own_code_is_ignored(db):
    chat = Chat(db)
    first = await _invite_code(chat, "tg:10")
    second = await _invite_code(chat, "tg:20")
    await chat.send("tg:30", "/start", payload=first)
    own = await _invite_code(chat, "tg:30")
    await chat.send("tg:30", "/start", payload=second)
    await chat.send("tg:30", "/start", payload=own)
    assert _user(chat, "tg:30").referrer_id == _user(chat, "tg:10").id
    # a newcomer cannot use a code that is not yet theirs, and their own is made after
    await chat.send("tg:40", "/start", payload=own)
    assert _user(chat, "tg:40").referrer_id == _user(chat, "tg:30").id


async def test_language_follows_the_client_then_lang_overrides_and_is_stored(db):
    chat = Chat(db)
    reply = await chat.send("tg:50", "/help", lang="zh-hans")
    assert "命令" in text(reply)
    assert _user(chat, "tg:50").lang == "zh"
    await chat.send("tg:51", "/help", lang="de")
    assert _user(chat, "tg:51").lang == "en"
    reply = await chat.send("tg:50", "/lang en", lang="zh-hans")
    assert text(reply) == "Language set to English."
    assert "Commands" in text(await chat.send("tg:50", "/help", lang="zh-hans"))
    reply = await chat.send("tg:50", "", callback="lang:v1:zh")
    assert text(reply) == "语言已设置为中文。"
    assert _user(chat, "tg:50").lang == "zh"


async def test_wechat_newcomer_without_a_language_is_chinese(db):
    chat = Chat(db, channel="wechat")
    reply = await chat.send("wx:openid-1", "帮助", lang=None)
    assert "命令" in text(reply)


async def test_simultaneous_first_messages_of_one_identity_create_one_user(db):
    chat = Chat(db)
    replies = await asyncio.gather(*(chat.send("tg:77", "/me") for _ in range(6)))
    assert all("Account tg:77" in text(r) for r in replies)
    assert _count_users(chat) == 1
    assert db.read(lambda s: s.execute(select(func.count()).select_from(Identity))
                   .scalar_one()) == 1


def test_last_seen_is_refreshed_at_most_hourly_for_notification_routing(memdb):
    from datetime import UTC, datetime, timedelta

    from engine import users

    t0 = datetime(2026, 8, 1, 10, tzinfo=UTC)

    def seen():
        return memdb.read(lambda s: s.get(Identity, "tg:9").last_seen_at)

    assert users.resolve(memdb, "tg:9", at=t0)["new"]
    assert seen() == t0
    users.resolve(memdb, "tg:9", at=t0 + timedelta(minutes=30))
    assert seen() == t0
    users.resolve(memdb, "tg:9", at=t0 + timedelta(hours=2))
    assert seen() == t0 + timedelta(hours=2)
