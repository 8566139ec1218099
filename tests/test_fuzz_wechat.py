"""Fuzzing the WeChat endpoints of the running server over loopback (hypothesis): Official
Account XML bodies (`POST /wechat`) and WeChat Pay notifications (`POST /wechat/pay/notify`).

Whatever arrives: never a 500, never a hang, never money moved — except by a notification
that is signed by WeChat Pay's key, decrypts under the APIv3 key, and names exactly the
order, amount and currency that is waiting, once. `make test` runs a small number of cases;
nightly runs set STOREFRONT_FUZZ_EXAMPLES=10000."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from engine import checkout, users
from engine.state import snapshot
from engine.verify import verify
from storage.models import Head, JournalTxn, User
from tests.standins import wechat as sw
from tests.wechat_harness import GH_ID, TOKEN, open_shop, stock

EXAMPLES = int(os.environ.get("STOREFRONT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 500,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
PAYER = "oPayer_000000000000000000001"
ORDER, CASH = "N1", 12000  # the shop's first order
OPENIDS = ["oFuzz_0000000000000000000001", "oFuzz_0000000000000000000002", PAYER]


class Live:
    """The shop's HTTP server running in an event loop of its own thread, so synchronous
    hypothesis tests can talk to it over real sockets."""

    def __init__(self, url: str, keys: sw.PayKeys) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._cm = open_shop(url, keys, aes=True)
        self.shop = self.call(self._cm.__aenter__())
        self.http = httpx.Client(base_url=self.shop.server.url, timeout=15, trust_env=False)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.http.close()
        self.call(self._cm.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    where = tmp_path_factory.mktemp("fuzz-wechat")
    keys = sw.generate_pay_keys(where / "keys")
    live = Live(f"sqlite:///{where}/shop.db", keys)
    db = live.shop.db
    stock(db)
    users.resolve(db, f"wx:{PAYER}", lang="zh")
    opened = checkout.open_checkout(db, user=f"wx:{PAYER}", sku="TEA", channel="wechat",
                                    method="wechat", key="fuzz:open")
    assert opened["order"] == ORDER
    yield live
    live.close()


def money(live: Live) -> tuple[Any, ...]:
    """Pools, supply, price, entries and the sums of every user's money: what no message or
    refused notification may change (new users may appear, with nothing)."""
    def work(s: Any) -> tuple[Any, ...]:
        state = snapshot(s)
        sums = s.execute(select(func.sum(User.wallet), func.sum(User.held),
                                func.sum(User.points), func.sum(User.basis))).one()
        return state["pools"], state["points"], state["entries"], tuple(sums)

    return live.shop.db.read(work)


def head(live: Live) -> tuple[int, str]:
    return live.shop.db.read(lambda s: (s.get(Head, 1).last_txn, s.get(Head, 1).last_hash))


# -- Official Account bodies ---------------------------------------------------------------

TRICKY = ["", "我的", "/buy TEA", "/sellpoints 1", "积分", "<b>x</b>", "]]>", "&amp;", "💸",
          "qrscene_", "qrscene_" + "A" * 80, "subscribe", "SCAN", "CLICK", "cmd:v1:me",
          "\u202e", "0", "-1", "9" * 40]
values = st.one_of(st.sampled_from(TRICKY), st.text(max_size=60))
tags = st.sampled_from(["Content", "MsgId", "Event", "EventKey", "CreateTime", "MsgType",
                        "Recognition", "bizmsgmenuid", "Encrypt", "MediaId", "Ticket"])


def _xml(fields: dict[str, str], openid: str, kind: str) -> str:
    body = "".join(f"<{k}>{sw._cdata(v)}</{k}>" for k, v in fields.items())
    return (f"<xml><ToUserName>{sw._cdata(GH_ID)}</ToUserName>"
            f"<FromUserName>{sw._cdata(openid)}</FromUserName><CreateTime>1700000000"
            f"</CreateTime><MsgType>{sw._cdata(kind)}</MsgType>{body}</xml>")


BOMB = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;'
        '&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]><xml><Content>&c;</Content>'
        '</xml>')
XXE = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
       '<xml><ToUserName>a</ToUserName><FromUserName>oX</FromUserName><MsgType>text</MsgType>'
       '<Content>&e;</Content><MsgId>1</MsgId></xml>')
bodies = st.one_of(
    st.builds(_xml, st.dictionaries(tags, values, max_size=6),
              st.one_of(st.sampled_from(OPENIDS), st.text(max_size=70)),
              st.one_of(st.sampled_from(["text", "event", "image", "voice", "hologram"]),
                        st.text(max_size=10))),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.text(max_size=300),
    st.sampled_from([BOMB, XXE, "<xml>", "<xml><a><b>1</b></a></xml>", "<notxml/>",
                     "<xml><Encrypt>AAAA</Encrypt></xml>", "<xml><Encrypt>" + "A" * 5000
                     + "</Encrypt></xml>", "<xml>" + "<a>" * 2000 + "</a>" * 2000 + "</xml>"]))
queries = st.one_of(
    st.just("signed"),
    st.just("safe"),  # encrypted as WeChat does in safe mode: what the shop believes
    st.fixed_dictionaries({}, optional={
        "signature": st.text(max_size=45), "timestamp": st.text(max_size=12),
        "nonce": st.text(max_size=12), "encrypt_type": st.sampled_from(["aes", "raw", ""]),
        "msg_signature": st.text(max_size=45)}))


def _encrypted(live: Live, plain: bytes) -> tuple[bytes, dict[str, str]]:
    """Any bytes as a safe-mode push: `<Encrypt>` and its `msg_signature`, freshly signed."""
    from wechatpy.crypto import WeChatCrypto

    query = sw.sign_query(TOKEN)
    envelope = WeChatCrypto(TOKEN, live.shop.aes_key, live.shop.appid).encrypt_message(
        plain, query["nonce"], query["timestamp"])
    encrypt = envelope.split("<Encrypt><![CDATA[")[1].split("]]>")[0]
    query.update(encrypt_type="aes",
                 msg_signature=sw.wechat_signature(TOKEN, query["timestamp"], query["nonce"],
                                                   encrypt))
    body = f"<xml><ToUserName>{sw._cdata(GH_ID)}</ToUserName><Encrypt>{sw._cdata(encrypt)}"
    return (body + "</Encrypt></xml>").encode(), query


@FUZZ
@given(body=bodies, query=queries)
def test_any_official_account_body_gets_no_500_and_moves_no_money(
        live: Live, body: str, query: Any) -> None:
    before, tip = money(live), head(live)
    signed = query in ("signed", "safe")
    raw = body.encode("utf-8", "surrogatepass")
    params = sw.sign_query(TOKEN) if signed else query
    if query == "safe":
        raw, params = _encrypted(live, raw)
    r = live.http.post("/wechat", params=params, content=raw,
                       headers={"Content-Type": "text/xml"})
    assert r.status_code in (200, 400, 403, 413), (r.status_code, r.text)
    live.call(live.shop.server.wechat.drain())
    assert money(live) == before, body
    if not signed:
        assert r.status_code == 403 and head(live) == tip  # not from WeChat: nothing read
    if r.status_code == 200 and r.text not in ("", "success"):
        assert "<xml>" in r.text  # a passive reply, never an error page


# -- WeChat Pay notifications -----------------------------------------------------------------

def _paid_count(live: Live) -> int:
    return live.shop.db.read(lambda s: s.execute(select(func.count()).where(
        JournalTxn.key.like("wx:txn:%"))).scalar_one())


headers = st.dictionaries(
    st.sampled_from(["Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce",
                     "Wechatpay-Serial", "Wechatpay-Signature-Type", "Content-Type"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
    .map(str.strip),  # HTTP itself (h11) refuses values with surrounding blanks
    max_size=6)
envelopes = st.one_of(
    st.binary(max_size=400),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
                 lambda inner: st.one_of(st.lists(inner, max_size=3),
                                         st.dictionaries(st.sampled_from(
                                             ["resource", "resource_type", "event_type",
                                              "ciphertext", "nonce", "algorithm",
                                              "associated_data", "original_type"]), inner,
                                             max_size=5)),
                 max_leaves=10).map(lambda v: json.dumps(v).encode()))


@FUZZ
@given(hdrs=headers, body=envelopes, sign=st.booleans())
def test_pay_notifications_without_a_valid_envelope_are_refused_and_change_nothing(
        live: Live, hdrs: dict[str, str], body: bytes, sign: bool) -> None:
    """Forged or garbled: unsigned, signed by someone else, or signed garbage."""
    keys = live.shop.keys
    if sign:  # signed with WeChat Pay's own key, but the content is junk
        hdrs = {**hdrs, **sw.pay_signature_headers(keys, body)}
    tip = head(live)
    r = live.http.post("/wechat/pay/notify", headers=hdrs, content=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert head(live) == tip


transactions = st.fixed_dictionaries({
    "order": st.one_of(st.sampled_from([ORDER, "WXF2", "N2", "", "../x"]), st.text(max_size=70)),
    "amount": st.one_of(st.sampled_from([CASH, CASH - 1, CASH + 1, 0, -CASH, 2**62]),
                        st.integers()),
    "currency": st.one_of(st.sampled_from(["CNY", "USD", "cny", ""]), st.text(max_size=5)),
    "state": st.sampled_from(["SUCCESS", "SUCCESS", "NOTPAY", "CLOSED", "REFUND", "PAYERROR"]),
    "event": st.sampled_from(["TRANSACTION.SUCCESS", "TRANSACTION.SUCCESS", "REFUND.SUCCESS",
                              "TRANSACTION.FAIL"]),
    "txn": st.one_of(st.sampled_from(["4200000000000000000000000001",
                                      "4200000000000000000000000002"]),
                     st.text(min_size=1, max_size=80)),
    "merchant": st.sampled_from(["ours", "ours", "other-mchid", "other-appid"]),
    "payer": st.sampled_from([PAYER, "oSomeoneElse_0000000000000001"]),
})


EXACT = {"order": ORDER, "amount": CASH, "currency": "CNY", "state": "SUCCESS",
         "event": "TRANSACTION.SUCCESS", "txn": "4200000000000000000000000001",
         "merchant": "ours", "payer": PAYER}


@FUZZ
@example(tx=EXACT)  # the real payment first: every later exact one is a duplicate or a second
@example(tx={**EXACT, "txn": "4200000000000000000000000002"})  # charge for a paid order
@given(tx=transactions)
def test_a_signed_notification_credits_only_the_exact_waiting_order_once(
        live: Live, tx: dict[str, Any]) -> None:
    keys = live.shop.keys
    resource = sw.pay_transaction_resource(
        keys, out_trade_no=tx["order"], total_fen=tx["amount"], transaction_id=tx["txn"],
        currency=tx["currency"], trade_state=tx["state"], payer_openid=tx["payer"])
    if tx["merchant"] == "other-mchid":
        resource["mchid"] = "1900000999"
    elif tx["merchant"] == "other-appid":
        resource["appid"] = "wx0000000000000000"
    hdrs, body = sw._signed_notification(
        keys, event_type=tx["event"], summary="", original_type="transaction",
        resource=resource, timestamp=None, wrong_signature=False, serial=None)
    before, paid = money(live), _paid_count(live)
    r = live.http.post("/wechat/pay/notify", headers=hdrs, content=body)
    assert r.status_code in (204, 400, 404), (r.status_code, r.text)
    exact = (tx["order"] == ORDER and tx["amount"] == CASH and tx["currency"] == "CNY"
             and tx["state"] == "SUCCESS" and tx["event"] == "TRANSACTION.SUCCESS"
             and tx["merchant"] == "ours" and tx["txn"].isprintable()
             and 0 < len(tx["txn"]) <= 64)
    credited = _paid_count(live) - paid
    assert credited in (0, 1)
    if credited:
        assert exact and paid == 0, tx  # only the exact order, and only once ever
        assert r.status_code == 204
    else:
        assert money(live) == before, tx


def test_after_the_fuzzing_the_books_still_verify(live: Live) -> None:
    report = verify(live.shop.db)
    assert report.ok, list(report.lines())
