"""Round trips proving the WeChat stand-ins speak the same protocol as wechatpy / wechatpayv3."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import time
import xml.etree.ElementTree as ET

import pytest
import requests
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.events import ScanEvent, SubscribeEvent, SubscribeScanEvent
from wechatpy.exceptions import InvalidSignatureException, WeChatClientException
from wechatpy.messages import TextMessage, UnknownMessage
from wechatpy.replies import ArticlesReply, ImageReply, TextReply
from wechatpy.utils import check_signature

from tests.conftest import WECHAT_APPID as APPID
from tests.conftest import WECHAT_SECRET as SECRET
from tests.standins import wechat as sw

TOKEN = "storefront-token"
GH_ID = "gh_0123456789ab"
OPENID = "oUser_openid_0001"
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail loudly if anything resolves or connects to a non-loopback address."""
    attempts: list[object] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def _check(address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if host not in LOOPBACK_HOSTS and not str(host).startswith("/"):
            attempts.append(address)
            raise OSError(f"test tried to reach non-loopback {address!r}")

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _check(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None:
            h = host.decode() if isinstance(host, bytes) else host
            if h not in LOOPBACK_HOSTS:
                attempts.append(h)
                raise socket.gaierror(f"test tried to resolve {h!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert attempts == [], f"non-loopback network attempted: {attempts}"


@pytest.fixture(scope="module")
def pay_keys(tmp_path_factory):
    return sw.generate_pay_keys(tmp_path_factory.mktemp("paykeys"))


@pytest.fixture
def pay_api(pay_keys):
    with sw.FakeWeChatPayAPI(pay_keys) as api:
        yield api


# --- 1. message side ---------------------------------------------------------------------------


def test_sign_query_matches_wechat_rule_and_wechatpy():
    q = sw.sign_query(TOKEN, 1700000000, "12345")
    assert q["timestamp"] == "1700000000" and q["nonce"] == "12345"
    expected = hashlib.sha1("".join(sorted([TOKEN, "1700000000", "12345"])).encode()).hexdigest()
    assert q["signature"] == expected
    check_signature(TOKEN, q["signature"], q["timestamp"], q["nonce"])
    with pytest.raises(InvalidSignatureException):
        check_signature("other-token", q["signature"], q["timestamp"], q["nonce"])

    fresh = sw.sign_query(TOKEN, openid=OPENID)
    check_signature(TOKEN, fresh["signature"], fresh["timestamp"], fresh["nonce"])
    assert fresh["openid"] == OPENID and abs(int(fresh["timestamp"]) - time.time()) < 300  # now, not a fixed one

    echo = sw.echostr_query(TOKEN, "987654321")
    check_signature(TOKEN, echo["signature"], echo["timestamp"], echo["nonce"])
    assert echo["echostr"] == "987654321"


def test_message_builders_parse_like_wechat_pushes():
    content = "买 2 件 ]]> <b>&amp; 返现"
    msg = parse_message(sw.text_message_xml(GH_ID, OPENID, content, 6543210987654321, 1700000000))
    assert isinstance(msg, TextMessage)
    assert (msg.content, msg.source, msg.target) == (content, OPENID, GH_ID)
    assert msg.id == 6543210987654321 and msg.create_time.timestamp() == 1700000000

    sub = parse_message(sw.event_xml(GH_ID, OPENID, "subscribe", event_key="42", ticket="TK"))
    assert isinstance(sub, SubscribeScanEvent) and (sub.scene_id, sub.ticket) == ("42", "TK")
    raw = ET.fromstring(sw.event_xml(GH_ID, OPENID, "subscribe", event_key="qrscene_r_7"))
    assert raw.findtext("EventKey") == "qrscene_r_7"

    scan = parse_message(sw.event_xml(GH_ID, OPENID, "SCAN", event_key="r_7", ticket="TK"))
    assert isinstance(scan, ScanEvent) and scan.scene_id == "r_7"

    plain = parse_message(sw.event_xml(GH_ID, OPENID, "subscribe"))
    assert isinstance(plain, SubscribeEvent) and not isinstance(plain, SubscribeScanEvent)

    unknown = parse_message(sw.unknown_message_xml(GH_ID, OPENID))
    assert isinstance(unknown, UnknownMessage) and unknown._data["MsgType"] == "hologram"


def test_safe_mode_envelope_round_trips_through_wechatpy():
    aes_key = sw.generate_aes_key()
    assert len(aes_key) == 43 and "=" not in aes_key
    assert len(base64.b64decode(aes_key + "=")) == 32

    xml = sw.text_message_xml(GH_ID, OPENID, "你好", 1, 1700000000)
    body, params = sw.encrypt_for_safe_mode(xml, TOKEN, aes_key, APPID, 1700000001, "777")
    root = ET.fromstring(body)
    assert [c.tag for c in root] == ["ToUserName", "Encrypt"]
    assert root.findtext("ToUserName") == GH_ID
    assert params["encrypt_type"] == "aes" and params["openid"] == OPENID
    assert (params["timestamp"], params["nonce"]) == ("1700000001", "777")
    check_signature(TOKEN, params["signature"], params["timestamp"], params["nonce"])

    crypto = WeChatCrypto(TOKEN, aes_key, APPID)
    plain = crypto.decrypt_message(body, params["msg_signature"], params["timestamp"], "777")
    assert plain == xml
    with pytest.raises(InvalidSignatureException):
        crypto.decrypt_message(body, params["signature"], params["timestamp"], "777")


def test_reply_helpers_read_plain_and_encrypted_passive_replies():
    aes_key = sw.generate_aes_key()
    reply = TextReply(source=GH_ID, target=OPENID, content="已收到 <订单> & 返现").render()
    parsed = sw.parse_reply_xml(reply)
    assert parsed["MsgType"] == "text" and parsed["Content"] == "已收到 <订单> & 返现"
    assert parsed["ToUserName"] == OPENID and parsed["FromUserName"] == GH_ID

    image = sw.parse_reply_xml(ImageReply(source=GH_ID, target=OPENID, media_id="M1").render())
    assert image["Image"] == {"MediaId": "M1"}
    news = ArticlesReply(source=GH_ID, target=OPENID)
    news.add_article({"title": "t1", "description": "d", "image": "i", "url": "u"})
    news.add_article({"title": "t2", "description": "d", "image": "i", "url": "u"})
    articles = sw.parse_reply_xml(news.render())["Articles"]
    assert [a["Title"] for a in articles] == ["t1", "t2"]
    assert sw.parse_reply_xml("success") == {} and sw.parse_reply_xml(b"") == {}
    # wechatpy's reply templates do not split "]]>" inside CDATA: such replies are broken XML
    # (WeChat drops them); parse_reply_xml fails the same way so end-to-end tests notice.
    with pytest.raises(ET.ParseError):
        sw.parse_reply_xml(TextReply(source=GH_ID, target=OPENID, content="a ]]> b").render())

    params = sw.sign_query(TOKEN)
    encrypted = WeChatCrypto(TOKEN, aes_key, APPID).encrypt_message(
        reply, params["nonce"], params["timestamp"]
    )
    plain = sw.decrypt_reply(encrypted, TOKEN, aes_key, APPID, params)
    assert sw.parse_reply_xml(plain)["Content"] == "已收到 <订单> & 返现"
    with pytest.raises(InvalidSignatureException):
        sw.decrypt_reply(encrypted, "wrong-token", aes_key, APPID, params)


# --- 2. Official Account API stand-in -------------------------------------------------------


def test_wechatpy_client_reaches_fake_api(wechat_api):
    assert wechat_api.base_url.startswith("http://127.0.0.1:")
    assert wechat_api.base_url.endswith("/cgi-bin/")
    client = sw.make_wechat_client(APPID, SECRET, wechat_api.base_url)

    assert client.message.send_text(OPENID, "hi") == {"errcode": 0, "errmsg": "ok"}
    token_calls = wechat_api.calls_of("/cgi-bin/token")
    assert len(token_calls) == 1
    assert token_calls[0].query == {
        "grant_type": "client_credential",
        "appid": APPID,
        "secret": SECRET,
    }
    (sent,) = wechat_api.calls_of("message/custom/send")
    assert sent.json == {"touser": OPENID, "msgtype": "text", "text": {"content": "hi"}}
    assert sent.query["access_token"] == wechat_api.issued_tokens[0]
    assert wechat_api.sent_messages == [sent.json]

    qr = client.qrcode.create(
        {
            "expire_seconds": 3600,
            "action_name": "QR_STR_SCENE",
            "action_info": {"scene": {"scene_str": "ref_u42"}},
        }
    )
    assert qr["expire_seconds"] == 3600 and qr["url"].startswith("http://weixin.qq.com/q/")
    assert wechat_api.qrcodes[qr["ticket"]]["scene_str"] == "ref_u42"
    forever = client.qrcode.create(
        {"action_name": "QR_LIMIT_SCENE", "action_info": {"scene": {"scene_id": 7}}}
    )
    assert "expire_seconds" not in forever
    assert wechat_api.scenes == ["ref_u42", 7]

    tpl = client.message.send_template(OPENID, "TPL_1", {"first": {"value": "¥1.00 返现"}})
    assert tpl["errcode"] == 0 and isinstance(tpl["msgid"], int)
    assert wechat_api.template_messages[0]["data"]["first"]["value"] == "¥1.00 返现"

    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + b"\r\n--tail\r\n"
    media = client.media.upload("image", ("qr.png", io.BytesIO(png), "image/png"))
    assert media["type"] == "image"
    stored = wechat_api.media[media["media_id"]]
    assert stored["content"] == png and stored["filename"] == "qr.png"

    # only one token fetch across all calls; every call recorded in order
    assert len(wechat_api.calls_of("/cgi-bin/token")) == 1
    assert [c.path for c in wechat_api.calls][-1] == "/cgi-bin/media/upload"


def test_fake_api_errors_window_and_token_expiry(wechat_api):
    client = sw.make_wechat_client(APPID, SECRET, wechat_api.base_url)
    wechat_api.outside_window.add("o_stale")
    with pytest.raises(WeChatClientException) as err:
        client.message.send_text("o_stale", "late reply")
    assert err.value.errcode == 45015 and "out of time limit" in err.value.errmsg
    assert wechat_api.sent_messages == []

    wechat_api.expire_access_tokens()
    client.message.send_text(OPENID, "again")  # wechatpy refetches on 42001 and retries
    assert len(wechat_api.calls_of("/cgi-bin/token")) == 2
    assert [c.response_json["errcode"] for c in wechat_api.calls_of("message/custom/send")] == [
        45015,
        42001,
        0,
    ]

    wechat_api.inject_error("qrcode/create", 45009, "reach max api daily quota limit")
    with pytest.raises(WeChatClientException) as err:
        client.qrcode.create({"action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": 1}}})
    assert err.value.errcode == 45009

    bad = sw.make_wechat_client(APPID, "wrong", wechat_api.base_url)
    with pytest.raises(WeChatClientException) as err:
        bad.message.send_text(OPENID, "x")
    assert err.value.errcode == 40125


def test_client_never_leaves_loopback(wechat_api, monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens: using it would fail
    client = sw.make_wechat_client(APPID, SECRET, wechat_api.base_url)
    client.message.send_text(OPENID, "through no proxy")
    # wxa/datacube/... carry their own absolute base URLs upstream; they are rebased too
    assert client.wxa.API_BASE_URL == wechat_api.root_url + "/"
    assert client.datacube.API_BASE_URL == wechat_api.root_url + "/datacube/"
    # upstream qrcode.show/get_url hard-code https://mp.weixin.qq.com; ours use the stand-in
    qr = client.qrcode.create(
        {"action_name": "QR_LIMIT_STR_SCENE", "action_info": {"scene": {"scene_str": "s1"}}}
    )
    assert client.qrcode.get_url(qr).startswith(wechat_api.base_url + "showqrcode?ticket=")
    image = client.qrcode.show(qr["ticket"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert client.qrcode.show("unknown").status_code == 404
    # anything else aimed at a non-loopback host is refused before a socket is opened
    with pytest.raises(requests.ConnectionError, match="non-loopback"):
        client.get("https://api.weixin.qq.com/cgi-bin/getcallbackip")


# --- 3. WeChat Pay APIv3 ---------------------------------------------------------------------


def test_generated_pay_keys(pay_keys):
    assert pay_keys.merchant_private_key_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pay_keys.platform_public_key_path.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert pay_keys.public_key_id.startswith("PUB_KEY_ID_0114")
    assert len(pay_keys.apiv3_key) == 32 and len(pay_keys.cert_serial_no) == 40


def test_public_key_mode_constructor_is_offline(pay_keys, loopback_only):
    # default gateway https://api.mch.weixin.qq.com; public-key mode must not fetch certificates
    WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=pay_keys.mchid,
        private_key=pay_keys.merchant_private_key_pem,
        cert_serial_no=pay_keys.cert_serial_no,
        appid=pay_keys.appid,
        apiv3_key=pay_keys.apiv3_key,
        notify_url="https://example.invalid/pay/notify",
        public_key=pay_keys.platform_public_key_pem,
        public_key_id=pay_keys.public_key_id,
    )
    assert loopback_only == []


def test_sdk_accepts_signed_pay_notification(pay_keys):
    pay = sw.make_pay_client(pay_keys, "http://127.0.0.1:9", "http://127.0.0.1:9/pay/notify")
    headers, body = sw.signed_pay_notification(
        pay_keys,
        out_trade_no="SO20240001",
        transaction_id="4200001234202401010000000001",
        total_fen=1990,
        payer_openid=OPENID,
        timestamp=1700000000,
    )
    assert headers["Wechatpay-Serial"] == pay_keys.public_key_id
    envelope = json.loads(body)
    assert envelope["resource_type"] == "encrypt-resource"
    assert envelope["event_type"] == "TRANSACTION.SUCCESS"
    assert envelope["resource"]["associated_data"] == "transaction"
    assert envelope["resource"]["algorithm"] == "AEAD_AES_256_GCM"
    assert envelope["create_time"] == "2023-11-15T06:13:20+08:00"

    result = pay.callback(headers, body)
    assert result is not None and result["id"] == envelope["id"]
    tx = result["resource"]
    assert tx["out_trade_no"] == "SO20240001" and tx["trade_state"] == "SUCCESS"
    assert tx["transaction_id"] == "4200001234202401010000000001"
    assert tx["amount"] == {
        "total": 1990,
        "payer_total": 1990,
        "currency": "CNY",
        "payer_currency": "CNY",
    }
    assert tx["payer"] == {"openid": OPENID}
    assert (tx["appid"], tx["mchid"]) == (pay_keys.appid, pay_keys.mchid)
    assert tx["success_time"] == "2023-11-15T06:13:20+08:00"

    # header names as Starlette/FastAPI deliver them (lower case) work too
    assert pay.callback({k.lower(): v for k, v in headers.items()}, body) is not None

    bad_headers, bad_body = sw.signed_pay_notification(
        pay_keys,
        out_trade_no="SO20240001",
        transaction_id="42",
        total_fen=1990,
        wrong_signature=True,
    )
    assert pay.callback(bad_headers, bad_body) is None
    tampered = body.replace(b"TRANSACTION.SUCCESS", b"TRANSACTION.SUCCESS ")
    assert pay.callback(headers, tampered) is None


def test_sdk_accepts_signed_refund_notification(pay_keys):
    pay = sw.make_pay_client(pay_keys, "http://127.0.0.1:9", "http://127.0.0.1:9/pay/notify")
    headers, body = sw.signed_refund_notification(
        pay_keys,
        out_trade_no="SO1",
        out_refund_no="RF1",
        refund_id="50300000001",
        total_fen=1000,
        refund_fen=400,
        transaction_id="42000001",
    )
    result = pay.callback(headers, body)
    assert result["event_type"] == "REFUND.SUCCESS" and result["summary"] == "退款成功"
    refund = result["resource"]
    assert (refund["out_refund_no"], refund["refund_id"]) == ("RF1", "50300000001")
    assert refund["refund_status"] == "SUCCESS"
    assert refund["amount"] == {
        "total": 1000,
        "refund": 400,
        "payer_total": 1000,
        "payer_refund": 400,
    }
    assert json.loads(body)["resource"]["original_type"] == "refund"
    headers, body = sw.signed_refund_notification(
        pay_keys,
        out_trade_no="SO1",
        out_refund_no="RF1",
        refund_id="5",
        total_fen=1,
        refund_fen=1,
        refund_status="ABNORMAL",
        wrong_signature=True,
    )
    assert json.loads(body)["event_type"] == "REFUND.ABNORMAL"
    assert pay.callback(headers, body) is None


def test_pay_sdk_orders_refunds_against_fake_pay_api(pay_keys, pay_api, monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    pay = sw.make_pay_client(pay_keys, pay_api.base_url, "https://shop.example/pay/notify")

    code, text = pay.pay(
        description="返现商城-订单 SO1",
        out_trade_no="SO1",
        amount={"total": 1000},
        pay_type=WeChatPayType.NATIVE,
    )
    assert code == 200
    assert json.loads(text)["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")
    (call,) = pay_api.calls_of("/v3/pay/transactions/native")
    assert call.json["notify_url"] == "https://shop.example/pay/notify"
    assert call.headers["authorization"].startswith("WECHATPAY2-SHA256-RSA2048 ")
    assert call.headers["wechatpay-serial"] == pay_keys.public_key_id

    code, text = pay.pay(
        description="JSAPI",
        out_trade_no="SO2",
        amount={"total": 500},
        payer={"openid": OPENID},
        pay_type=WeChatPayType.JSAPI,
    )
    assert code == 200 and json.loads(text)["prepay_id"].startswith("wx")

    code, text = pay.query(out_trade_no="SO1")
    assert code == 200 and json.loads(text)["trade_state"] == "NOTPAY"
    assert pay_api.calls_of("v3/pay/transactions/out-trade-no/SO1")[0].query == {
        "mchid": pay_keys.mchid,
    }
    pay_api.mark_paid("SO1", payer_openid=OPENID)
    code, text = pay.query(out_trade_no="SO1")
    paid = json.loads(text)
    assert code == 200 and paid["trade_state"] == "SUCCESS" and paid["payer"]["openid"] == OPENID
    notified = pay.callback(*pay_api.notification_for("SO1"))
    assert notified["resource"]["transaction_id"] == paid["transaction_id"]

    code, text = pay.refund(
        out_refund_no="RF1",
        amount={"refund": 300, "total": 1000, "currency": "CNY"},
        out_trade_no="SO1",
        reason="用户申请",
    )
    refund = json.loads(text)
    assert code == 200 and refund["status"] == "PROCESSING" and refund["out_trade_no"] == "SO1"
    assert refund["transaction_id"] == paid["transaction_id"]
    result = pay.callback(*pay_api.complete_refund("RF1"))
    assert result["resource"]["refund_id"] == refund["refund_id"]
    code, text = pay.refund(
        out_refund_no="RF2",
        amount={"refund": 800, "total": 1000, "currency": "CNY"},
        out_trade_no="SO1",
    )
    assert code == 403 and json.loads(text)["code"] == "NOT_ENOUGH"

    code, text = pay.query(out_trade_no="NOPE")
    assert code == 404 and json.loads(text)["code"] == "ORDER_NOT_EXIST"
    code, _ = pay.close(out_trade_no="SO2")
    assert code == 204 and pay_api.orders["SO2"]["trade_state"] == "CLOSED"


def test_fake_pay_api_signatures_are_really_checked(pay_keys, pay_api):
    other = sw.generate_pay_keys(
        pay_keys.merchant_private_key_path.parent / "other",
        mchid=pay_keys.mchid,
        appid=pay_keys.appid,
    )
    impostor = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=pay_keys.mchid,
        private_key=other.merchant_private_key_pem,
        cert_serial_no=pay_keys.cert_serial_no,
        appid=pay_keys.appid,
        apiv3_key=pay_keys.apiv3_key,
        notify_url="https://x/notify",
        proxy={"http": None, "https": None, "all": None},
        public_key=pay_keys.platform_public_key_pem,
        public_key_id=pay_keys.public_key_id,
    )
    impostor._core._gate_way = pay_api.base_url
    code, text = impostor.pay(description="d", out_trade_no="X1", amount={"total": 1})
    assert code == 401 and json.loads(text)["code"] == "SIGN_ERROR"

    pay = sw.make_pay_client(pay_keys, pay_api.base_url, "https://shop.example/notify")
    pay_api.corrupt_response_signatures = True
    with pytest.raises(Exception, match="failed to verify the signature"):
        pay.pay(
            description="d", out_trade_no="X2", amount={"total": 1}, pay_type=WeChatPayType.NATIVE
        )
    pay_api.corrupt_response_signatures = False

    # a notification under an unknown serial makes the SDK download /v3/certificates from its
    # gateway (here: the stand-in, which has none) and then reject the notification
    headers, body = sw.signed_pay_notification(
        pay_keys, out_trade_no="X2", transaction_id="42", total_fen=1, serial="5157F09EFDC096DE"
    )
    assert pay.callback(headers, body) is None
    assert len(pay_api.calls_of("/v3/certificates")) == 1
