"""WeChat Pay APIv3 against the running server: JSAPI and Native orders, payment
notifications signed with the test's own WeChat Pay key pair and encrypted with the APIv3
key, the refusals, and refunds of pending orders with their refund notification."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

from sqlalchemy import select

from engine import checkout, service, users
from engine.verify import verify
from storage.models import ChannelRefund, Checkout, Outbox
from tests.standins import wechat as sw
from tests.wechat_harness import OPERATOR, checkout_path, open_shop, stock

ALICE = "oAlice_000000000000000000001"
WECHAT_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
             "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c)")


async def order_in_wechat(shop, text: str = "购买 TEA", openid: str = ALICE,
                          ua: str = WECHAT_UA) -> tuple[str, int]:
    """Buy in the chat, open the pay link inside WeChat; returns (order ref, amount)."""
    reply = await shop.say(openid, text)
    page = await shop.http.get(checkout_path(reply["Content"]), headers={"User-Agent": ua})
    assert page.status_code == 200, page.text
    order = shop.last_order_of(f"wx:{openid}")
    return order.ref, order.cash


def payment(shop, ref: str, total: int, txn: str = "4200000001202601010000000001",
            **kw) -> tuple[dict[str, str], bytes]:
    kw.setdefault("payer_openid", ALICE)
    return sw.signed_pay_notification(shop.keys, out_trade_no=ref, transaction_id=txn,
                                      total_fen=total, **kw)


async def test_a_purchase_paid_by_a_signed_notification_is_recorded_once(db_url, keys):
    async with open_shop(db_url, keys) as shop:
        stock(shop.db)
        ref, cash = await order_in_wechat(shop)
        placed = shop.pay_api.orders[ref]
        assert placed["trade_type"] == "JSAPI" and placed["payer_openid"] == ALICE
        assert placed["total"] == cash == 12000
        assert placed["notify_url"] == "https://shop.example/wechat/pay/notify"

        headers, body = payment(shop, ref, cash)
        r = await shop.notify(headers, body)
        assert (r.status_code, r.content) == (204, b"")
        order = shop.order(ref)
        assert order.status == "settled" and order.payment_ref.startswith("42000")
        assert order.entry_seq == 1 and order.minted > 0
        assert shop.db.read(lambda s: s.execute(select(Checkout.status).where(
            Checkout.order_ref == ref)).scalar_one()) == "paid"
        receipts = shop.sent_texts(ALICE)
        assert any(ref in t for t in receipts)  # the buyer hears at once

        size = shop.journal_size()
        again = await asyncio.gather(*(shop.notify(headers, body) for _ in range(3)))
        assert [a.status_code for a in again] == [204, 204, 204]
        headers2, body2 = payment(shop, ref, cash)  # the same transaction, freshly signed
        assert (await shop.notify(headers2, body2)).status_code == 204
        assert shop.journal_size() == size
        report = verify(shop.db)
        assert report.ok, report.problems


async def test_the_jsapi_page_carries_a_signed_bridge_request(shop):
    reply = await shop.say(ALICE, "购买 CUP")
    page = await shop.http.get(checkout_path(reply["Content"]),
                               headers={"User-Agent": WECHAT_UA})
    text = page.text
    params = json.loads(text.split("var p=")[1].split(";function")[0])
    assert params["appId"] == shop.appid and params["signType"] == "RSA"
    ref = shop.last_order_of(f"wx:{ALICE}").ref
    assert params["package"] == f"prepay_id={shop.pay_api.orders[ref]['prepay_id']}"
    from base64 import b64decode

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    message = "\n".join([params["appId"], params["timeStamp"], params["nonceStr"],
                         params["package"]]) + "\n"
    shop.keys.merchant_public_key.verify(b64decode(params["paySign"]), message.encode(),
                                         padding.PKCS1v15(), hashes.SHA256())


async def test_outside_wechat_the_link_shows_a_native_qr_code(shop):
    reply = await shop.say(ALICE, "购买 TEA")
    page = await shop.http.get(checkout_path(reply["Content"]),
                               headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"})
    assert page.status_code == 200 and "data:image/png;base64," in page.text
    ref = shop.last_order_of(f"wx:{ALICE}").ref
    placed = shop.pay_api.orders[ref]
    assert placed["trade_type"] == "NATIVE" and placed["code_url"] in page.text
    headers, body = payment(shop, ref, 12000, trade_type="NATIVE",
                            payer_openid="oSomeoneElse_00000000000001")
    assert (await shop.notify(headers, body)).status_code == 204
    assert shop.order(ref).status == "settled"
    # paid: the link now says so instead of charging again
    page = await shop.http.get(checkout_path(reply["Content"]))
    assert page.status_code == 410


async def test_pay_links_that_lead_nowhere(shop):
    assert (await shop.http.get("/wechat/pay/checkout/nope")).status_code == 404
    assert (await shop.http.get("/wechat/pay/checkout/" + "x" * 65)).status_code == 404
    # a Telegram checkout is paid through Telegram only
    users.resolve(shop.db, "tg:42")
    opened = checkout.open_checkout(shop.db, user="tg:42", sku="TEA", channel="telegram",
                                    method="telegram", key="t1")
    page = await shop.http.get(f"/wechat/pay/checkout/{opened['token']}")
    assert page.status_code == 404 and shop.pay_api.orders == {}


def flags(shop) -> list[dict]:
    rows = shop.db.read(lambda s: s.execute(select(Outbox).where(
        Outbox.kind == "payment_flag")).scalars().all())
    return [json.loads(r.params) for r in rows]


async def test_refused_notifications_change_nothing(shop):
    ref, cash = await order_in_wechat(shop)
    size = shop.journal_size()

    async def refused(headers, body, status):
        r = await shop.notify(headers, body)
        assert r.status_code == status, (r.status_code, r.text)
        assert r.json()["code"] == "FAIL" and r.json()["message"]
        return r

    await refused(*payment(shop, ref, cash, wrong_signature=True), 401)
    await refused(*payment(shop, ref, cash, timestamp=int(time.time()) - 301), 400)
    await refused(*payment(shop, ref, cash, timestamp=int(time.time()) + 301), 400)
    await refused(*payment(shop, ref, cash, serial="5157F09EFDC096DE"), 401)
    headers, body = payment(shop, ref, cash)
    await refused({k: v for k, v in headers.items() if k != "Wechatpay-Signature"}, body, 401)
    await refused(headers, body.replace(b'"id":"', b'"id":"x'), 401)  # tampered after signing
    assert shop.order(ref).status == "awaiting_payment" and shop.journal_size() == size

    # correctly signed, but not what the order asks for: refused and flagged to operators
    await refused(*payment(shop, ref, cash - 1, txn="4200000001202601010000000002"), 400)
    await refused(*payment(shop, ref, cash, currency="USD",
                           txn="4200000001202601010000000003"), 400)
    await refused(*payment(shop, "N999", cash, txn="4200000001202601010000000004"), 404)
    foreign = dataclasses.replace(shop.keys, mchid="1900000999")
    await refused(*sw.signed_pay_notification(foreign, out_trade_no=ref, transaction_id="42",
                                              total_fen=cash), 400)
    assert shop.order(ref).status == "awaiting_payment" and shop.journal_size() == size
    flagged = flags(shop)
    assert {f["code"] for f in flagged} == {"payment_mismatch", "unknown_order"}
    assert {f["identity"] for f in flagged} == {f"wx:{OPERATOR}"}

    # and the right one still goes through
    assert (await shop.notify(*payment(shop, ref, cash))).status_code == 204
    assert shop.order(ref).status == "settled"


async def test_malformed_notification_bodies(shop):
    for body in (b"not json", b"[]", b'{"resource": 1}', b"\xff\xfe"):
        headers = sw.pay_signature_headers(shop.keys, body)
        r = await shop.notify(headers, body)
        assert r.status_code == 400 and r.json()["code"] == "FAIL", body
    big = b"{" + b" " * (65 * 1024) + b"}"
    r = await shop.notify(sw.pay_signature_headers(shop.keys, big), big)
    assert r.status_code == 413
    # decrypted with the wrong APIv3 key: the signature is right, the content unreadable
    other = dataclasses.replace(shop.keys, apiv3_key="k" * 32)
    r = await shop.notify(*sw.signed_pay_notification(other, out_trade_no="N1",
                                                      transaction_id="1", total_fen=1))
    assert r.status_code == 400


async def test_a_pending_order_is_refunded_through_wechat_pay(shop):
    service.configure(shop.db, {"store": {"settle_days": "7"}})
    ref, cash = await order_in_wechat(shop)
    assert (await shop.notify(*payment(shop, ref, cash))).status_code == 204
    assert shop.order(ref).status == "pending"
    shop.pay_api.mark_paid(ref, payer_openid=ALICE,
                           transaction_id=shop.order(ref).payment_ref)

    answer = await shop.say(OPERATOR, f"退款 {ref}")
    assert ref in answer["Content"]
    await shop.server.pay.sweep_refunds()  # the adapter also kicks it after operator commands
    assert shop.order(ref).status == "refunded"
    requested = shop.pay_api.refunds[ref]
    assert requested["amount"]["refund"] == cash and requested["out_trade_no"] == ref
    assert requested["notify_url"] == "https://shop.example/wechat/pay/refund-notify"
    row = shop.db.read(lambda s: s.get(ChannelRefund, ref))
    assert row.status == "processing" and row.refund_id == requested["refund_id"]
    await shop.server.pay.sweep_refunds()
    assert len(shop.pay_api.calls_of("/v3/refund/domestic/refunds", "POST")) == 1

    headers, body = shop.pay_api.complete_refund(ref)
    bad = await shop.notify(*shop.pay_api.complete_refund(ref, wrong_signature=True),
                            path="/wechat/pay/refund-notify")
    assert bad.status_code == 401
    r = await shop.notify(headers, body, path="/wechat/pay/refund-notify")
    assert (r.status_code, r.content) == (204, b"")
    assert shop.db.read(lambda s: s.get(ChannelRefund, ref).status) == "success"
    r = await shop.notify(headers, body, path="/wechat/pay/refund-notify")
    assert r.status_code == 204
    report = verify(shop.db)
    assert report.ok, report.problems


async def test_a_failed_refund_request_is_retried(shop):
    service.configure(shop.db, {"store": {"settle_days": "7"}})
    ref, cash = await order_in_wechat(shop)
    await shop.notify(*payment(shop, ref, cash))
    shop.pay_api.mark_paid(ref, transaction_id=shop.order(ref).payment_ref)
    shop.pay_api.inject_error("/v3/refund/domestic/refunds", 500, "SYSTEM_ERROR", "系统错误")
    service.refund(shop.db, order=ref, actor="test")
    await shop.server.pay.sweep_refunds()
    row = shop.db.read(lambda s: s.get(ChannelRefund, ref))
    assert row.status == "failed" and "SYSTEM_ERROR" in row.last_error and row.attempts == 1
    shop.db.run(lambda s: setattr(s.get(ChannelRefund, ref), "next_at", row.created_at))
    await shop.server.pay.sweep_refunds()
    assert shop.db.read(lambda s: s.get(ChannelRefund, ref).status) == "processing"
    assert shop.pay_api.refunds[ref]["amount"]["refund"] == cash


async def test_an_abnormal_refund_is_flagged_to_operators(shop):
    service.configure(shop.db, {"store": {"settle_days": "7"}})
    ref, cash = await order_in_wechat(shop)
    await shop.notify(*payment(shop, ref, cash))
    shop.pay_api.mark_paid(ref, transaction_id=shop.order(ref).payment_ref)
    service.refund(shop.db, order=ref, actor="test")
    await shop.server.pay.sweep_refunds()
    r = await shop.notify(*shop.pay_api.complete_refund(ref, "ABNORMAL"),
                          path="/wechat/pay/refund-notify")
    assert r.status_code == 204
    assert shop.db.read(lambda s: s.get(ChannelRefund, ref).status) == "abnormal"
    assert [f["code"] for f in flags(shop)] == ["refund_abnormal"]
    unknown = sw.signed_refund_notification(shop.keys, out_trade_no="N9", out_refund_no="N9",
                                            refund_id="5", total_fen=1, refund_fen=1)
    assert (await shop.notify(*unknown, path="/wechat/pay/refund-notify")).status_code == 404
