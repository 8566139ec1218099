"""Characters XML 1.0 forbids (C0 controls but tab and line ends, lone surrogates, U+FFFE and
U+FFFF) never break a WeChat exchange: a user's message carrying them is answered normally,
and what we echo back (product names, support texts, user names) goes out without them — in
the passive reply XML and through the customer-service message API (docs/wechat.md)."""

from __future__ import annotations

import re
import secrets
import time

import pytest
from wechatpy.crypto import WeChatCrypto

from bot.wechat import WeChatSender
from bot.wechat.messages import parse_xml, render_reply, xml_safe
from engine import catalogue, service
from tests.standins import wechat as sw
from tests.test_catalogue_telegram import png
from tests.wechat_harness import GH_ID, OPERATOR, TOKEN, next_msg_id, open_shop, stock

ALICE = "oAlice_000000000000000000001"
FORBIDDEN = "\x00\x01\x07\x08\x0b\x0c\x0e\x1b\x1f\ufffe\uffff"
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean(value: object) -> bool:
    """No character XML 1.0 forbids anywhere in `value` (a reply's parsed fields)."""
    if isinstance(value, dict):
        return all(clean(v) for v in value.values())
    if isinstance(value, list):
        return all(clean(v) for v in value)
    return not NOT_XML.search(str(value))


def test_xml_safe_drops_what_xml_forbids_and_keeps_the_rest():
    assert xml_safe(f"a{FORBIDDEN}b\ud800c\udfffd") == "abcd"
    kept = "tab\tline\nreturn\r 中文 emoji 😀 \u0085 \ufffd"
    assert xml_safe(kept) == kept


def test_a_passive_reply_with_forbidden_characters_is_well_formed_xml():
    xml = render_reply(ALICE, GH_ID, "text", f"Oolong{FORBIDDEN}\ud800 tea ]]> done", 1)
    reply = sw.parse_reply_xml(xml.encode("utf-8"))
    assert reply["Content"] == "Oolong tea ]]> done"


@pytest.mark.parametrize("body", [
    f"<xml><Content><![CDATA[帮助{FORBIDDEN}]]></Content></xml>".encode(),
    f"<xml><Content><![CDATA[帮助{FORBIDDEN}]]></Content></xml>",
])
def test_a_push_with_forbidden_characters_parses_with_each_one_replaced(body):
    assert parse_xml(body) == {"Content": "帮助" + "\ufffd" * len(FORBIDDEN)}


def test_replacing_a_forbidden_character_cannot_end_a_cdata_section():
    """Dropped, "]]\\x01>" would become "]]>" and let a user's text add fields of its own."""
    body = (f"<xml><FromUserName><![CDATA[{ALICE}]]></FromUserName><Content><![CDATA["
            "hi]]\x01><FromUserName>oMallory</FromUserName><X><![CDATA[]]></Content></xml>")
    assert parse_xml(body)["FromUserName"] == ALICE


async def test_a_user_message_with_forbidden_characters_gets_a_normal_answer(shop):
    await answered_normally(shop, safe=False)


async def test_the_same_in_safe_mode(safe_shop):
    await answered_normally(safe_shop, safe=True)


async def say(s, text: str, *, safe: bool) -> dict:
    """A user's text message as WeChat would push it (in safe mode encrypted here: the
    stand-in's own helper parses the plaintext first, which these characters break)."""
    xml = sw.message_xml(GH_ID, ALICE, "text", {"Content": text}, msg_id=next_msg_id())
    if not safe:
        return s.reply_of(await s.post(xml))
    ts, nonce = str(int(time.time())), str(secrets.randbelow(10**10))
    envelope = sw.parse_reply_xml(WeChatCrypto(TOKEN, s.aes_key, s.appid)
                                  .encrypt_message(xml, nonce, ts))
    body = (f"<xml><ToUserName><![CDATA[{GH_ID}]]></ToUserName>"
            f"<Encrypt><![CDATA[{envelope['Encrypt']}]]></Encrypt></xml>")
    query = {**sw.sign_query(TOKEN, ts, nonce, openid=ALICE), "encrypt_type": "aes",
             "msg_signature": envelope["MsgSignature"]}
    return s.reply_of(await s.post(body, params=query), safe=True)


async def answered_normally(s, *, safe: bool) -> None:
    reply = await say(s, f"帮助{FORBIDDEN}", safe=safe)
    assert reply["MsgType"] == "text" and "商品" in reply["Content"]
    # a text echoed back ("no product X"): answered, and without those characters
    reply = await say(s, f"购买 T{FORBIDDEN}EA", safe=safe)
    assert reply["MsgType"] == "text" and reply["Content"] and clean(reply)
    support = await say(s, f"/support tea{FORBIDDEN} please", safe=safe)
    assert support["Content"] and clean(support)
    await s.server.wechat.drain()
    assert all(clean(m) for m in s.api.sent_messages)


async def test_a_product_name_with_forbidden_characters_is_shown_without_them(shop):
    name = f"Oolong{FORBIDDEN} tea"
    service.upsert_product(shop.db, sku="TEA", price="120.00", margin="0.50", lock_days=15,
                           scheme="both", name=name)
    listed = await shop.say(ALICE, "商品")  # passive reply
    assert re.search(r"Oolong\s+tea", listed["Content"]) and clean(listed)
    bought = await shop.say(ALICE, "购买 TEA")
    assert bought["Content"] and clean(bought)
    # with a photo the card's image is the passive reply and its text follows as a
    # customer-service message: that carries none either
    catalogue.add_photo(shop.db, sku="TEA", content=png(1))
    item = await shop.say(ALICE, "/item TEA")
    assert item["MsgType"] == "image"
    await shop.server.wechat.drain()
    (card,) = shop.sent_texts(ALICE)
    assert "Oolong" in card and clean(card)
    # an operator's notification naming the buyer, whose display name carries them
    notes = shop.api.sent_messages[:]
    sender = WeChatSender(shop.server.wechat.client, shop.db)
    await shop.say(OPERATOR, "帮助")  # inside the operator's 48-hour window
    await sender.send(f"wx:{OPERATOR}", f"New message from Bob{FORBIDDEN}\ud800: hi")
    sent = [m for m in shop.api.sent_messages if m not in notes and m["touser"] == OPERATOR]
    assert sent and sent[-1]["text"]["content"] == "New message from Bob: hi"


@pytest.fixture
async def safe_shop(sqlite_url, keys):
    async with open_shop(sqlite_url, keys, aes=True) as s:
        stock(s.db)
        yield s


def test_forbidden_is_what_xml_forbids():
    """The pattern the tests check with is the XML 1.0 `Char` production's complement."""
    for code in (*range(0x20), 0xFFFE, 0xFFFF, 0xD800, 0xDFFF):
        ch = chr(code)
        assert bool(NOT_XML.match(ch)) == (ch not in "\t\n\r")
