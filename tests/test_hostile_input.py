"""Abuse: referral farming and markup injection.

Referral farming (SPEC §5) — a referrer is fixed at first contact, one level only:
self-referral (also through joining one's own accounts), a second referrer (a later invite
or WeChat QR scan), unknown or malformed payloads, cycles, and armies of accounts that only
join: none of them changes who earns what. (First-contact basics — own code, unknown and
malformed payloads at first contact — are in tests/test_handlers_first_contact.py.)

Markup: user text is plain text on every channel. Telegram sends without `parse_mode`
(tests/test_telegram_adapter.py); WeChat text messages do understand `<a href>` links, so
text that came from a user must not become one; bidirectional-override and zero-width
characters in names never reach a reply."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from storage.db import Database
from storage.models import JournalTxn, User
from tests.handlers_kit import OPERATOR, Chat, text


def _user(db: Database, handle: str) -> User:
    return db.read(lambda s: s.execute(select(User).where(User.handle == handle)).scalar_one())


def _referrer(db: Database, handle: str) -> str | None:
    user = _user(db, handle)
    return _user_by_id(db, user.referrer_id).handle if user.referrer_id else None


def _user_by_id(db: Database, user_id: int) -> User:
    return db.read(lambda s: s.get(User, user_id))


async def _code(chat: Chat, identity: str) -> str:
    reply = await chat.send(identity, "/invite")
    line = next(x for x in text(reply).splitlines() if x.startswith("Your invite code: "))
    return line.split(": ", 1)[1]


def _journal(db: Database) -> int:
    return db.read(lambda s: s.execute(select(JournalTxn.id).order_by(
        JournalTxn.id.desc()).limit(1)).scalar_one())


async def test_no_referral_cycle_can_be_made(memdb: Database) -> None:
    chat = Chat(memdb)
    a = await _code(chat, "tg:10")
    await chat.send("tg:11", "/start", payload=a)
    b = await _code(chat, "tg:11")
    await chat.send("tg:12", "/start", payload=b)
    c = await _code(chat, "tg:12")
    tip = _journal(memdb)
    for who, code in (("tg:10", b), ("tg:10", c), ("tg:11", c), ("tg:10", a)):
        await chat.send(who, "/start", payload=code)
        await chat.send(who, f"/start {code}")
    assert [_referrer(memdb, h) for h in ("tg:10", "tg:11", "tg:12")] == [None, "tg:10",
                                                                         "tg:11"]
    assert _journal(memdb) == tip  # nothing was written


async def test_joining_alone_earns_nothing_and_acceleration_pays_one_level(
        memdb: Database) -> None:
    chat = Chat(memdb)
    await chat.setup_shop()  # TEA 100.00 queue, 15 days; 10000.00 in the queue pool
    a = await _code(chat, "tg:20")
    await chat.send("tg:21", "/start", payload=a)
    b = await _code(chat, "tg:21")
    await chat.send("tg:22", "/start", payload=b)
    for who in ("tg:20", "tg:21"):  # both referrers wait in the queue
        await chat.send(OPERATOR, f"/offline {who} TEA")
    before = {h: _user(memdb, h).wallet for h in ("tg:20", "tg:21")}
    for n in range(30):  # an army of accounts that join through A's link and never buy
        await chat.send(f"tg:{3000 + n}", "/start", payload=a)
    assert {h: _user(memdb, h).wallet for h in ("tg:20", "tg:21")} == before
    await chat.send(OPERATOR, "/offline tg:22 TEA")  # C (invited by B) buys
    after = {h: _user(memdb, h).wallet for h in ("tg:20", "tg:21")}
    assert after["tg:21"] == before["tg:21"] + 2000  # 20% of 100.00 to the direct referrer
    assert after["tg:20"] == before["tg:20"]  # and nothing further up


async def test_a_later_qr_scan_never_changes_the_referrer(sqlite_url: str,
                                                          tmp_path: Any) -> None:
    from tests.standins import wechat as sw
    from tests.wechat_harness import open_shop

    async with open_shop(sqlite_url, sw.generate_pay_keys(tmp_path / "k")) as shop:
        alice, bob, eve = ("oAlice_00000000000000000001", "oBob_000000000000000000002",
                           "oEve_000000000000000000003")
        codes = {}
        for who in (alice, eve):
            await shop.event(who, "subscribe")
            codes[who] = _user(shop.db, f"wx:{who}").invite_code
        await shop.event(bob, "subscribe", key=codes[alice])
        assert _referrer(shop.db, f"wx:{bob}") == f"wx:{alice}"
        tip = _journal(shop.db)
        await shop.event(bob, "SCAN", key=codes[eve], create_time=1_900_000_000)
        await shop.event(bob, "subscribe", key=codes[eve], create_time=1_900_000_001)
        await shop.event(alice, "SCAN", key=codes[alice], create_time=1_900_000_002)
        assert _referrer(shop.db, f"wx:{bob}") == f"wx:{alice}"
        assert _referrer(shop.db, f"wx:{alice}") is None
        assert _journal(shop.db) == tip


async def test_joining_ones_own_invited_account_leaves_no_self_referral(
        memdb: Database) -> None:
    """Farming through account linking: a WeChat account joins through the same person's
    Telegram invite, then the two are joined into one account."""
    tg, wx = Chat(memdb), Chat(memdb, channel="wechat")
    await tg.send("tg:40", "/start")
    code = await _code(tg, "tg:40")
    await wx.send("wx:oSelf_00000000000000000001", "/start", payload=code)
    assert _referrer(memdb, "wx:oSelf_00000000000000000001") == "tg:40"
    reply = await tg.send("tg:40", "/link")
    link = next(w for w in text(reply).split() if len(w) == 8 and w.isalnum() and w.isupper())
    done = await wx.send("wx:oSelf_00000000000000000001", f"/link {link}")
    assert "link" in text(done).lower() or "绑定" in text(done), text(done)
    survivors = memdb.read(lambda s: s.execute(select(User.id, User.referrer_id)).all())
    assert all(ref is None or ref != uid for uid, ref in survivors), survivors
    ids = {uid for uid, _ref in survivors}
    assert all(ref is None or ref in ids for _uid, ref in survivors)


# -- markup and tricky Unicode -------------------------------------------------------------

EVIL_LINK = '<a href="http://evil.example/">free money</a>'


async def test_user_text_never_becomes_a_link_in_a_wechat_reply(sqlite_url: str,
                                                                tmp_path: Any) -> None:
    from tests.standins import wechat as sw
    from tests.wechat_harness import open_shop, stock

    async with open_shop(sqlite_url, sw.generate_pay_keys(tmp_path / "k")) as shop:
        stock(shop.db)
        who = "oMark_0000000000000000000001"
        await shop.say(who, "/start")
        for said in (EVIL_LINK, f"/buy {EVIL_LINK}", f"/transfer {EVIL_LINK} 1",
                     f"/user {EVIL_LINK}"):
            reply = await shop.say(who, said)
            content = str(reply.get("Content", ""))
            assert content, said
            assert "<a href" not in content.replace('<a href="weixin://bizmsgmenu', ""), \
                content  # only the adapter's own menu links are links


async def test_names_with_direction_overrides_are_shown_harmlessly(memdb: Database) -> None:
    chat = Chat(memdb)
    code = await _code(chat, "tg:50")
    sly = "\u202eSDRAWKCAB\u200b\u2066<b>Eve</b>\u2069"
    await chat.send("tg:51", "/start", payload=code, name=sly)
    reply = text(await chat.send("tg:50", "/invite"))
    assert "SDRAWKCAB" in reply  # the name is shown…
    assert not any(ch in reply for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068"
                   "\u2069\u200e\u200f\u200b")  # …but cannot reorder or hide the text around it


async def test_huge_names_and_texts_are_capped_in_replies(memdb: Database) -> None:
    chat = Chat(memdb)
    code = await _code(chat, "tg:60")
    await chat.send("tg:61", "/start", payload=code, name="N" * 4000)
    reply = text(await chat.send("tg:60", "/invite"))
    assert "N" * 33 not in reply and "N" * 20 in reply
    echoed = text(await chat.send("tg:60", "x" * 4000))
    assert len(echoed) < 400
