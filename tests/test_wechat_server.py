"""The WeChat Official Account side against the running server over loopback: the GET check,
signed messages in plaintext and safe mode, events, retries and every kind of bad body."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from engine import users
from handlers import i18n
from handlers.base import Document, Photo, Reply, Text
from storage.models import SeenMessage, User
from tests.standins import wechat as sw
from tests.wechat_harness import (
    GH_ID,
    OPERATOR,
    TOKEN,
    next_msg_id,
    open_shop,
    stock,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
ALICE = "oAlice_000000000000000000001"
BOB = "oBob_0000000000000000000002"


@pytest.fixture
async def safe_shop(sqlite_url, keys):
    async with open_shop(sqlite_url, keys, aes=True) as s:
        stock(s.db)
        yield s


def user_count(shop) -> int:
    return shop.db.read(lambda s: s.execute(select(func.count()).select_from(User)).scalar_one())


async def test_healthz_checks_the_database(shop):
    r = await shop.http.get("/healthz")
    assert r.status_code == 200 and r.json()["database"] == "ok"
    assert "redis" not in r.json()


async def test_healthz_checks_redis_when_configured(sqlite_url, keys, redis_url):
    async with open_shop(sqlite_url, keys, REDIS_URL=redis_url) as s:
        r = await s.http.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok",
                                                     "redis": "ok"}
    async with open_shop(sqlite_url, keys, REDIS_URL="redis://127.0.0.1:1/0") as s:
        r = await s.http.get("/healthz")
        # Redis down: still serving on in-process fallbacks, and saying so
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        assert r.json()["redis"].startswith("unavailable")


async def test_server_check_echoes_only_a_signed_echostr(shop):
    good = sw.echostr_query(TOKEN, "6547382910")
    r = await shop.http.get("/wechat", params=good)
    assert (r.status_code, r.text) == (200, "6547382910")
    forged = sw.echostr_query("not-the-token", "6547382910")
    r = await shop.http.get("/wechat", params=forged)
    assert r.status_code == 403 and "6547382910" not in r.text
    r = await shop.http.get("/wechat", params={"echostr": "1"})
    assert r.status_code == 403


async def test_help_in_plain_text_mode(shop):
    reply = await shop.say(ALICE, "帮助")
    assert reply["MsgType"] == "text" and reply["ToUserName"] == ALICE
    assert reply["FromUserName"] == GH_ID
    assert "商品" in reply["Content"] and "购买" in reply["Content"]
    reply = await shop.say(ALICE, "help")  # the English alias reaches the same command
    assert "商品" in reply["Content"]
    assert shop.user_of(f"wx:{ALICE}") is not None


async def test_shop_and_account_in_safe_mode(safe_shop):
    reply = await safe_shop.say(ALICE, "商品", safe=True)
    assert "Oolong tea" in reply["Content"] and "TEA" in reply["Content"]
    reply = await safe_shop.say(ALICE, "我的", safe=True)
    assert "0.00" in reply["Content"]


async def test_safe_mode_refuses_a_wrong_msg_signature(safe_shop):
    xml = sw.text_message_xml(GH_ID, ALICE, "我的", next_msg_id())
    body, query = sw.encrypt_for_safe_mode(xml, TOKEN, safe_shop.aes_key, safe_shop.appid)
    query["msg_signature"] = "0" * 40
    r = await safe_shop.http.post("/wechat", params=query, content=body)
    assert r.status_code == 403
    # encrypted with another key: the signature is right, the content is not ours
    body, query = sw.encrypt_for_safe_mode(xml, TOKEN, sw.generate_aes_key(), safe_shop.appid)
    r = await safe_shop.http.post("/wechat", params=query, content=body)
    assert r.status_code == 400
    assert user_count(safe_shop) == 0


async def test_wrong_signature_is_refused_before_anything_is_read(shop):
    xml = sw.text_message_xml(GH_ID, ALICE, "我的", next_msg_id())
    r = await shop.post(xml, params=sw.sign_query("wrong-token"))
    assert r.status_code == 403
    r = await shop.post("<xml><unclosed>", params=sw.sign_query("wrong-token"))
    assert r.status_code == 403
    assert user_count(shop) == 0


async def test_a_retried_msg_id_is_answered_without_being_processed_twice(shop):
    await shop.say(ALICE, "我的")
    msg_id = next_msg_id()
    first = await shop.say(ALICE, "购买 TEA", msg_id=msg_id)
    orders_before = shop.journal_size()
    again = await shop.say(ALICE, "购买 TEA", msg_id=msg_id)
    assert again == first and "/wechat/pay/checkout/" in first["Content"]
    assert shop.journal_size() == orders_before
    assert shop.db.read(lambda s: s.get(SeenMessage, f"wx:{msg_id}").reply) is not None


async def test_a_retry_in_safe_mode_gets_the_same_answer_freshly_encrypted(safe_shop):
    msg_id = next_msg_id()
    first = await safe_shop.say(ALICE, "购买 CUP", msg_id=msg_id, safe=True)
    size = safe_shop.journal_size()
    again = await safe_shop.say(ALICE, "购买 CUP", msg_id=msg_id, safe=True)
    assert again == first and "/wechat/pay/checkout/" in first["Content"]
    assert safe_shop.journal_size() == size


async def test_a_retried_event_is_answered_once(shop):
    await shop.say(ALICE, "我的")
    code = users.invite_code(shop.db, shop.user_of(f"wx:{ALICE}").id)
    first = await shop.event(BOB, "subscribe", code, create_time=1_800_000_000)
    again = await shop.event(BOB, "subscribe", code, create_time=1_800_000_000)
    assert again == first and first["Content"]
    assert shop.db.read(lambda s: s.get(SeenMessage, f"wx:evt:{BOB}:1800000000:subscribe")
                        ) is not None


async def test_concurrent_deliveries_of_one_message_make_one_order(db_url, keys):
    async with open_shop(db_url, keys) as shop:
        stock(shop.db)
        await shop.say(ALICE, "我的")
        xml = sw.text_message_xml(GH_ID, ALICE, "购买 CUP 2", next_msg_id())
        before = shop.journal_size()
        answers = await asyncio.gather(*(shop.post(xml) for _ in range(4)))
        await shop.server.wechat.drain()
        assert all(a.status_code == 200 for a in answers)
        assert shop.journal_size() == before + 1  # one checkout, whatever the retries
        replies = [a.text for a in answers if a.text != "success"]
        assert len(replies) >= 1 and len(set(replies)) == 1


async def test_subscribe_with_a_scene_fixes_the_referrer_at_first_contact(shop):
    await shop.say(ALICE, "我的")
    alice = shop.user_of(f"wx:{ALICE}")
    code = users.invite_code(shop.db, alice.id)
    welcome = await shop.event(BOB, "subscribe", code)
    assert welcome["MsgType"] == "text" and welcome["Content"]
    bob = shop.user_of(f"wx:{BOB}")
    assert bob.referrer_id == alice.id
    # a later scan of someone else's code never changes it
    await shop.say("oCarol_00000000000000000003", "我的")
    carol = shop.user_of("wx:oCarol_00000000000000000003")
    await shop.event(BOB, "SCAN", users.invite_code(shop.db, carol.id))
    assert shop.user_of(f"wx:{BOB}").referrer_id == alice.id


async def test_scan_and_unknown_scenes_at_first_contact(shop):
    await shop.say(ALICE, "我的")
    alice = shop.user_of(f"wx:{ALICE}")
    await shop.event(BOB, "SCAN", users.invite_code(shop.db, alice.id))
    assert shop.user_of(f"wx:{BOB}").referrer_id == alice.id
    await shop.event("oDave_000000000000000000004", "subscribe", "no_such_code")
    assert shop.user_of("wx:oDave_000000000000000000004").referrer_id is None
    assert await shop.event("oErin_000000000000000000005", "unsubscribe") == {}


async def test_invite_is_a_parametric_qr_code_with_the_users_scene(shop):
    reply = await shop.say(ALICE, "邀请")
    alice = shop.user_of(f"wx:{ALICE}")
    code = users.invite_code(shop.db, alice.id)
    assert shop.api.scenes == [code]
    assert code in reply["Content"]
    images = [m for m in shop.api.sent_messages if m["msgtype"] == "image"]
    assert len(images) == 1 and images[0]["touser"] == ALICE
    media = shop.api.media[images[0]["image"]["media_id"]]
    assert media["content"].startswith(b"\x89PNG")


async def test_slow_answers_follow_as_customer_service_messages(shop):
    await shop.say(ALICE, "我的")
    shop.server.wechat.passive_budget = 0.0
    reply = await shop.say(ALICE, "商品")
    assert reply == {}
    texts = shop.sent_texts(ALICE)
    assert len(texts) == 1 and "Oolong tea" in texts[0]


async def test_buttons_are_menu_links_whose_clicks_come_back(shop):
    reply = await shop.say(ALICE, "商品")
    content = reply["Content"]
    assert "weixin://bizmsgmenu?msgmenucontent=" in content
    menu_id = content.split("msgmenuid=")[1].split('"')[0]
    label = content.split("msgmenucontent=")[1].split("&")[0]
    clicked = await shop.say(ALICE, label, extra={"bizmsgmenuid": menu_id})
    assert "/wechat/pay/checkout/" in clicked["Content"]  # the buy button opened a checkout


async def test_operator_commands_need_an_operator(shop):
    refused = await shop.say(ALICE, "奖金池")
    assert refused["Content"] == i18n.t("zh", "operator_only")
    allowed = await shop.say(OPERATOR, "奖金池")
    assert "排队奖金池" in allowed["Content"]
    chart = [m for m in shop.api.sent_messages if m["msgtype"] == "image"]
    assert [m["touser"] for m in chart] == [OPERATOR, OPERATOR]  # the pool and price charts


async def test_a_long_job_answers_at_once_and_follows_with_its_outcome(shop):
    started = await shop.say(OPERATOR, "释放")
    assert started["Content"] == i18n.t("zh", "release.started")
    (done,) = shop.sent_texts(OPERATOR)
    assert done.startswith("释放完成")


@pytest.mark.parametrize("items, passive, follow_ups", [
    ([Photo(PNG, "二维码")], "image", ["text"]),
    ([Text("你好"), Photo(PNG)], "text", ["image"]),
    ([Document(b"a,b\n1,2\n", "x.csv", "导出")], "text", []),
    ([Document(bytes(range(256)) * 10, "x.bin")], "text", []),
])
async def test_replies_become_wechat_messages(shop, monkeypatch, items, passive, follow_ups):
    import handlers

    async def scripted(app, request):
        return Reply(items=list(items))

    monkeypatch.setattr(handlers, "dispatch", scripted)
    reply = await shop.say(ALICE, "anything")
    assert reply["MsgType"] == passive
    if passive == "image":
        assert shop.api.media[reply["Image"]["MediaId"]]["content"] == PNG
    elif isinstance(items[0], Document):
        expected = "a,b" if items[0].filename == "x.csv" else "Telegram"
        assert expected in reply["Content"]
    assert [m["msgtype"] for m in shop.api.sent_messages] == follow_ups


BAD_BODIES = {
    "malformed": b"<xml><ToUserName>gh</ToUserName><MsgType>text",
    "not xml": b"\x00\x01\x02 hello",
    "wrong root": b"<html><body>hi</body></html>",
    "entity bomb": (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
                    b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
                    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
                    b"<xml><ToUserName>gh</ToUserName><FromUserName>oX_1</FromUserName>"
                    b"<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&c;</Content>"
                    b"<MsgId>1</MsgId></xml>"),
    "external entity": (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM '
                        b'"file:///etc/passwd">]><xml><ToUserName>gh</ToUserName>'
                        b"<FromUserName>oX_1</FromUserName><MsgType>text</MsgType>"
                        b"<Content>&e;</Content><MsgId>2</MsgId></xml>"),
    "no sender": b"<xml><ToUserName>gh</ToUserName><MsgType>text</MsgType></xml>",
    "bad sender": (b"<xml><ToUserName>gh</ToUserName><FromUserName>a b</FromUserName>"
                   b"<MsgType>text</MsgType><MsgId>3</MsgId></xml>"),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
async def test_bad_bodies_get_a_4xx_and_change_nothing(shop, name):
    before = shop.journal_size()
    r = await shop.post(BAD_BODIES[name])
    assert 400 <= r.status_code < 500, (name, r.status_code)
    assert "Traceback" not in r.text and "/etc/passwd" not in r.text
    assert user_count(shop) == 0 and shop.journal_size() == before


async def test_oversized_bodies_are_refused_with_413(shop):
    body = b"<xml><Content>" + b"x" * (65 * 1024) + b"</Content></xml>"
    r = await shop.post(body)
    assert r.status_code == 413
    # a lying Content-Length does not help either: the stream is counted as it is read
    async def chunks():
        for _ in range(70):
            yield b"y" * 1024

    r = await shop.http.post("/wechat", params=sw.sign_query(TOKEN), content=chunks())
    assert r.status_code == 413
    assert user_count(shop) == 0


async def test_unknown_message_types_get_an_empty_success(shop):
    r = await shop.post(sw.unknown_message_xml(GH_ID, ALICE))
    assert (r.status_code, r.text) == (200, "success")
    assert user_count(shop) == 0


async def test_pictures_get_a_polite_answer(shop):
    xml = sw.message_xml(GH_ID, ALICE, "image", {"PicUrl": "http://x/y.jpg", "MediaId": "m"},
                         msg_id=next_msg_id())
    reply = shop.reply_of(await shop.post(xml))
    assert reply["MsgType"] == "text" and reply["Content"]


async def test_no_500_for_a_method_or_path_we_do_not_serve(shop):
    r = await shop.http.put("/wechat", content=b"x")
    assert r.status_code == 405
    r = await shop.http.get("/wechat/pay/notify")
    assert r.status_code == 405


async def test_a_database_outage_is_not_a_500(shop, monkeypatch):
    from storage.db import DatabaseUnavailable

    def down(*args, **kwargs):
        raise DatabaseUnavailable("gone")

    monkeypatch.setattr(shop.db, "run", down)
    reply = shop.reply_of(await shop.post(sw.text_message_xml(GH_ID, ALICE, "我的",
                                                              next_msg_id())))
    assert "商店繁忙" in reply["Content"]  # "busy, try again": it needs no database
