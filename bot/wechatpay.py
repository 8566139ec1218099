"""WeChat Pay APIv3 in public-key mode (wechatpayv3): orders, notifications and refunds.

- Orders: an `Invoice` becomes a WeChat Pay order whose `out_trade_no` is the order ref and
  whose amount is the order's cash in fen: JSAPI inside WeChat (the payer is the buyer's
  openid), Native (a QR code) anywhere else. Both are made by the checkout page
  `GET /wechat/pay/checkout/<token>` the chat links to, so one order only ever gets one
  trade type (docs/wechat.md).
- Notifications (`POST /wechat/pay/notify`, `/wechat/pay/refund-notify`): the
  `Wechatpay-*` headers are checked first (the public key's id, a timestamp no more than five
  minutes off, the RSA-SHA256 signature over the exact body), then the resource is decrypted
  with the APIv3 key (AES-256-GCM). A payment is recorded once per `transaction_id`
  (`service.confirm_payment`, key `wx:txn:<id>`); WeChat Pay is answered 204 with no body,
  or a 4xx with `{"code": "FAIL", ...}` when the notification is refused.
- Refunds (SPEC §8): the engine books a refund at once; the cash goes back through WeChat
  Pay's refund call, tracked in `channel_refunds` so a failure is retried and a request is
  never made twice (`out_refund_no` = the order ref); the refund notification closes it.

The SDK is synchronous (requests): every call to it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import exists, select
from sqlalchemy.orm import Session
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import aes_decrypt, load_public_key, rsa_verify

from bot.settings import Settings
from engine import checkout, service
from engine.errors import Refusal
from engine.money import format_fen
from storage.db import Database, DatabaseUnavailable
from storage.models import ChannelRefund, Checkout, Identity, Order

log = logging.getLogger(__name__)

NOTIFY_WINDOW = 300  # seconds a notification's timestamp may be off our clock
MAX_NOTIFICATION = 64 * 1024
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
CST = timezone(timedelta(hours=8))
REFUND_BATCH = 20
REFUND_MAX_ATTEMPTS = 12


class PayError(Exception):
    """WeChat Pay did not do what we asked (an API error, a bad signature, no network)."""


@dataclass(frozen=True)
class Answer:
    """What a notification endpoint says back: 204 (no body) or a 4xx with a FAIL body."""

    status: int
    body: bytes = b""

    @classmethod
    def ok(cls) -> Answer:
        return cls(204)

    @classmethod
    def fail(cls, status: int, message: str) -> Answer:
        return cls(status, json.dumps({"code": "FAIL", "message": message},
                                      ensure_ascii=False).encode())


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.answer = Answer.fail(status, message)


@dataclass(frozen=True)
class PayConfig:
    appid: str
    mchid: str
    apiv3_key: str
    public_key_id: str
    public_key_pem: str
    notify_url: str

    @property
    def public_base(self) -> str:
        """Where the world reaches this server: the notify URL's scheme and host."""
        u = urlsplit(self.notify_url)
        return f"{u.scheme}://{u.netloc}"

    @property
    def refund_notify_url(self) -> str:
        return self.public_base + "/wechat/pay/refund-notify"

    def checkout_url(self, token: str) -> str:
        return f"{self.public_base}/wechat/pay/checkout/{token}"


def client_from_settings(settings: Settings) -> tuple[WeChatPay, PayConfig] | None:
    """The SDK client and its facts, or None when WeChat Pay is not (fully) configured."""
    s = settings
    needed = (s.wechat_app_id, s.wechat_pay_mch_id, s.wechat_pay_private_key_file,
              s.wechat_pay_cert_serial, s.wechat_pay_apiv3_key, s.wechat_pay_public_key_file,
              s.wechat_pay_public_key_id, s.wechat_pay_notify_url)
    if not all(needed):
        return None
    assert s.wechat_pay_apiv3_key is not None and s.wechat_pay_public_key_file is not None
    private_key = Path(s.wechat_pay_private_key_file or "").read_text()
    public_key = Path(s.wechat_pay_public_key_file).read_text()
    config = PayConfig(appid=s.wechat_app_id or "", mchid=s.wechat_pay_mch_id or "",
                       apiv3_key=s.wechat_pay_apiv3_key.get_secret_value(),
                       public_key_id=s.wechat_pay_public_key_id or "",
                       public_key_pem=public_key, notify_url=s.wechat_pay_notify_url or "")
    client = WeChatPay(wechatpay_type=WeChatPayType.JSAPI, mchid=config.mchid,
                       private_key=private_key, cert_serial_no=s.wechat_pay_cert_serial,
                       appid=config.appid, apiv3_key=config.apiv3_key,
                       notify_url=config.notify_url, timeout=(5, 15),
                       public_key=public_key, public_key_id=config.public_key_id)
    if s.wechat_pay_api_base_url:
        # wechatpayv3 has no gateway parameter; its gateway is this attribute.
        client._core._gate_way = s.wechat_pay_api_base_url.rstrip("/")
    return client, config


def _iso(at: datetime) -> str:
    return at.astimezone(CST).isoformat(timespec="seconds")


class WeChatPayGateway:
    def __init__(self, db: Database, client: WeChatPay, config: PayConfig, *,
                 operators: Iterable[str] = (),
                 after_payment: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.client = client
        self.config = config
        self.operators = frozenset(operators)
        self.after_payment = after_payment
        self.clock = clock
        self._public_key = load_public_key(config.public_key_pem)

    # -- orders -----------------------------------------------------------------------------
    async def _call(self, fn: Callable[..., tuple[int, Any]], **kwargs: Any) -> dict[str, Any]:
        try:
            code, text = await asyncio.to_thread(fn, **kwargs)
        except Exception as exc:  # noqa: BLE001 - network, or a response signature the SDK refused
            raise PayError(f"WeChat Pay unreachable or unverifiable: {exc}") from exc
        try:
            data = json.loads(text) if text else {}
        except (TypeError, ValueError):
            data = {}
        if not 200 <= code < 300:
            raise PayError(f"WeChat Pay said {code} {data.get('code')}: {data.get('message')}")
        return data if isinstance(data, dict) else {}

    async def create_native(self, *, order: str, amount: int, currency: str, description: str,
                            expires_at: datetime | None) -> str:
        """A Native order; returns its `code_url` (the content of the QR code to scan)."""
        data = await self._call(self.client.pay, description=description[:127],
                                out_trade_no=order, amount={"total": amount,
                                                            "currency": currency},
                                time_expire=_iso(expires_at) if expires_at else None,
                                pay_type=WeChatPayType.NATIVE)
        if not data.get("code_url"):
            raise PayError("WeChat Pay gave no code_url")
        return str(data["code_url"])

    async def create_jsapi(self, *, order: str, amount: int, currency: str, description: str,
                           openid: str, expires_at: datetime | None) -> dict[str, str]:
        """A JSAPI order for `openid`; returns the signed `getBrandWCPayRequest` parameters."""
        data = await self._call(self.client.pay, description=description[:127],
                                out_trade_no=order, amount={"total": amount,
                                                            "currency": currency},
                                payer={"openid": openid},
                                time_expire=_iso(expires_at) if expires_at else None,
                                pay_type=WeChatPayType.JSAPI)
        if not data.get("prepay_id"):
            raise PayError("WeChat Pay gave no prepay_id")
        params = {"appId": self.config.appid, "timeStamp": str(int(self.clock())),
                  "nonceStr": secrets.token_hex(16), "package": f"prepay_id={data['prepay_id']}",
                  "signType": "RSA"}
        params["paySign"] = self.client.sign([params["appId"], params["timeStamp"],
                                              params["nonceStr"], params["package"]])
        return params

    # -- the checkout page --------------------------------------------------------------------
    async def checkout_page(self, token: str, user_agent: str) -> tuple[int, str]:
        """The page a buyer's pay link opens: JSAPI inside WeChat, a Native QR code elsewhere."""
        try:
            found = await asyncio.to_thread(self.db.read, lambda s: _checkout_facts(s, token))
        except DatabaseUnavailable:
            return 503, _page("稍后再试 · Try again later", "系统繁忙，请稍后再试。",
                              "The shop is busy; please try again shortly.")
        if found is None or found["channel"] != "wechat":
            return 404, _page("订单不存在 · No such order", "找不到这个支付链接。",
                              "This payment link does not exist.")
        facts = found
        now = datetime.fromtimestamp(self.clock(), UTC)
        if facts["status"] != "open" or facts["order_status"] != "awaiting_payment":
            return 410, _page("已处理 · Done", "这个订单已经支付或已关闭。",
                              "This order is already paid or closed.")
        if now >= facts["expires_at"]:
            return 410, _page("已过期 · Expired", "支付链接已过期，请重新下单。",
                              "This payment link has expired; please order again.")
        description = f"{facts['sku']} x{facts['qty']} ({facts['order']})"
        amount_text = f"{format_fen(facts['amount'])} {facts['currency']}"
        try:
            if "micromessenger" in user_agent.lower() and facts["openid"]:
                params = await self.create_jsapi(
                    order=facts["order"], amount=facts["amount"], currency=facts["currency"],
                    description=description, openid=facts["openid"],
                    expires_at=facts["expires_at"])
                return 200, _jsapi_page(params, amount_text, facts["order"])
            code_url = await self.create_native(
                order=facts["order"], amount=facts["amount"], currency=facts["currency"],
                description=description, expires_at=facts["expires_at"])
            return 200, _native_page(code_url, amount_text, facts["order"])
        except PayError as exc:
            log.warning("checkout %s: %s", facts["order"], exc)
            return 502, _page("暂时无法支付 · Payment unavailable",
                              "微信支付暂时不可用，请稍后再试。",
                              "WeChat Pay is unavailable right now; please try again.")

    # -- notifications ----------------------------------------------------------------------
    def verify(self, headers: Mapping[str, str], body: bytes, expect: str) -> dict[str, Any]:
        """Check the `Wechatpay-*` headers against the exact body, then decrypt the resource.
        Returns the envelope with `resource` decrypted; raises `Refused` otherwise."""
        h = {k.lower(): v for k, v in headers.items()}
        if len(body) > MAX_NOTIFICATION:
            raise Refused(413, "body too large")
        signature, timestamp = h.get("wechatpay-signature", ""), h.get("wechatpay-timestamp", "")
        nonce, serial = h.get("wechatpay-nonce", ""), h.get("wechatpay-serial", "")
        if not (signature and timestamp and nonce and serial):
            raise Refused(401, "missing Wechatpay signature headers")
        if h.get("wechatpay-signature-type", SIGNATURE_TYPE) != SIGNATURE_TYPE:
            raise Refused(401, "unsupported signature type")
        if serial != self.config.public_key_id:
            raise Refused(401, "unknown Wechatpay-Serial")
        if not timestamp.isdigit() or abs(self.clock() - int(timestamp)) > NOTIFY_WINDOW:
            raise Refused(400, "timestamp outside the five-minute window")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(400, "body is not UTF-8") from None
        if not rsa_verify(timestamp, nonce, text, signature, self._public_key):
            raise Refused(401, "signature does not verify")
        try:
            envelope = json.loads(text)
            resource = envelope["resource"]
            if envelope.get("resource_type") != "encrypt-resource" or \
                    resource.get("algorithm") != "AEAD_AES_256_GCM":
                raise ValueError("unexpected resource")
            plain = aes_decrypt(nonce=resource["nonce"], ciphertext=resource["ciphertext"],
                                associated_data=resource.get("associated_data") or "",
                                apiv3_key=self.config.apiv3_key)
            if plain is None:
                raise ValueError("cannot decrypt")
            envelope["resource"] = json.loads(plain)
            if resource.get("original_type") not in (None, expect) or \
                    not isinstance(envelope["resource"], dict):
                raise ValueError("not a " + expect)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Refused(400, f"malformed notification: {exc}") from None
        return envelope

    async def payment_notification(self, headers: Mapping[str, str], body: bytes) -> Answer:
        try:
            envelope = self.verify(headers, body, "transaction")
            return await self._record_payment(envelope)
        except Refused as refused:
            log.warning("payment notification refused: %s", refused)
            return refused.answer

    async def _record_payment(self, envelope: dict[str, Any]) -> Answer:
        tx = envelope["resource"]
        if envelope.get("event_type") != "TRANSACTION.SUCCESS" or \
                tx.get("trade_state") != "SUCCESS":
            return Answer.ok()  # nothing was paid: nothing to record
        if tx.get("mchid") != self.config.mchid or tx.get("appid") != self.config.appid:
            raise Refused(400, "notification for another merchant or app")
        amount = tx.get("amount") or {}
        ref, txn = tx.get("out_trade_no"), tx.get("transaction_id")
        total, currency = amount.get("total"), amount.get("currency", "CNY")
        if not (isinstance(ref, str) and isinstance(txn, str) and txn.isprintable()
                and 0 < len(txn) <= 64 and isinstance(total, int)
                and not isinstance(total, bool) and isinstance(currency, str)):
            raise Refused(400, "transaction lacks order, id or amount")
        key = f"wx:txn:{txn}"
        try:
            result = await asyncio.to_thread(
                service.confirm_payment, self.db, order=ref, amount=total, currency=currency,
                payment_ref=txn, key=key, at=_paid_at(tx.get("success_time"), self.clock()))
        except Refusal as exc:
            log.error("WeChat Pay %s for order %s refused: %s", txn, ref, exc)
            await asyncio.to_thread(
                checkout.flag_operators, self.db, self.operators, key=key,
                params={"code": exc.code, "order": ref, "amount": total, "currency": currency,
                        "charge": txn, "channel": "wechat",
                        "buyer": f"wx:{(tx.get('payer') or {}).get('openid', '?')}"})
            status = 404 if exc.code == "unknown_order" else 400
            return Answer.fail(status, f"refused: {exc.code}")
        except DatabaseUnavailable:
            return Answer.fail(503, "busy, retry later")
        if not result.get("replayed"):
            await asyncio.to_thread(self.db.run, lambda s: _close_checkout(s, ref))
            if self.after_payment is not None:
                try:
                    await self.after_payment(result)
                except Exception:  # noqa: BLE001 - telling the buyer must not fail the payment
                    log.exception("after-payment message for %s failed", ref)
        return Answer.ok()

    async def refund_notification(self, headers: Mapping[str, str], body: bytes) -> Answer:
        try:
            envelope = self.verify(headers, body, "refund")
            refund = envelope["resource"]
            ref, status = refund.get("out_refund_no"), refund.get("refund_status")
            refund_fen = (refund.get("amount") or {}).get("refund")
            if not isinstance(ref, str) or status not in ("SUCCESS", "ABNORMAL", "CLOSED"):
                raise Refused(400, "refund lacks out_refund_no or status")
            outcome = await asyncio.to_thread(
                self.db.run, lambda s: _refund_settled(s, ref, status, refund_fen,
                                                       str(refund.get("refund_id") or ""),
                                                       self._now()))
        except Refused as refused:
            log.warning("refund notification refused: %s", refused)
            return refused.answer
        except DatabaseUnavailable:
            return Answer.fail(503, "busy, retry later")
        if outcome == "unknown":
            return Answer.fail(404, "unknown refund")
        if outcome == "mismatch":
            return Answer.fail(400, "refund amount differs")
        if status != "SUCCESS" and outcome == "changed":
            log.error("WeChat Pay refund of %s ended %s", ref, status)
            await asyncio.to_thread(
                checkout.flag_operators, self.db, self.operators, key=f"wx:refund:{ref}",
                params={"code": f"refund_{status.lower()}", "order": ref, "amount": refund_fen,
                        "charge": str(refund.get("refund_id") or ""), "channel": "wechat"})
        return Answer.ok()

    # -- refunds ----------------------------------------------------------------------------
    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def sweep_refunds(self) -> int:
        """Ask WeChat Pay to return the cash of every refunded WeChat order not yet asked
        for (and retry failed requests when due). Returns how many requests were made."""
        now = self._now()
        due = await asyncio.to_thread(self.db.run, lambda s: _due_refunds(s, now))
        for ref, amount, currency in due:
            try:
                data = await self._call(
                    self.client.refund, out_refund_no=ref, out_trade_no=ref,
                    amount={"refund": amount, "total": amount, "currency": currency},
                    reason="订单退款 order refunded", notify_url=self.config.refund_notify_url)
                error = None
            except PayError as exc:
                data, error = {}, str(exc)
                log.warning("WeChat Pay refund of %s failed: %s", ref, exc)
            gave_up = await asyncio.to_thread(
                self.db.run, lambda s, r=ref, d=data, e=error: _refund_requested(
                    s, r, d, e, self._now()))
            if gave_up:
                await asyncio.to_thread(
                    checkout.flag_operators, self.db, self.operators, key=f"wx:refund:{ref}",
                    params={"code": "refund_failed", "order": ref, "amount": amount,
                            "currency": currency, "charge": error or "", "channel": "wechat"})
        return len(due)


# -- database work (each a pure function of the session: `Database.run` may retry it) -----


def _checkout_facts(s: Session, token: str) -> dict[str, Any] | None:
    if not 0 < len(token) <= 64:
        return None
    row = s.get(Checkout, token)
    if row is None:
        return None
    order = s.execute(select(Order).where(Order.ref == row.order_ref)).scalar_one()
    openid = s.execute(select(Identity.identity).where(
        Identity.user_id == order.user_id, Identity.identity.like("wx:%"))
        .order_by(Identity.identity).limit(1)).scalar_one_or_none()
    return {"order": order.ref, "amount": order.cash, "currency": order.currency,
            "sku": order.sku, "qty": order.qty, "status": row.status, "channel": row.channel,
            "order_status": order.status, "expires_at": row.expires_at,
            "openid": openid[3:] if openid else None}


def _close_checkout(s: Session, ref: str) -> None:
    row = s.execute(select(Checkout).where(Checkout.order_ref == ref)
                    .with_for_update()).scalar_one_or_none()
    if row is not None and row.status == "open":
        row.status = "paid"


def _paid_at(success_time: object, now: float) -> datetime:
    """When the buyer paid (the order's dates count from it); our clock if WeChat's is odd."""
    clock = datetime.fromtimestamp(now, UTC)
    if isinstance(success_time, str):
        try:
            at = datetime.fromisoformat(success_time)
        except ValueError:
            return clock
        if at.tzinfo is not None and clock - timedelta(days=2) <= at <= clock + \
                timedelta(minutes=5):
            return at
    return clock


def _due_refunds(s: Session, now: datetime) -> list[tuple[str, int, str]]:
    new = s.execute(select(Order.ref, Order.cash, Order.currency).where(
        Order.status == "refunded", Order.method == "wechat", Order.cash > 0,
        Order.payment_ref.is_not(None),
        ~exists().where(ChannelRefund.order_ref == Order.ref)).limit(REFUND_BATCH)).all()
    for ref, cash, currency in new:
        s.add(ChannelRefund(order_ref=ref, channel="wechat", amount=cash, currency=currency,
                            status="requested", attempts=0, next_at=now, created_at=now,
                            updated_at=now))
    s.flush()
    rows = s.execute(select(ChannelRefund).where(
        ChannelRefund.status.in_(("requested", "failed")), ChannelRefund.next_at <= now)
        .order_by(ChannelRefund.next_at).limit(REFUND_BATCH).with_for_update()).scalars().all()
    for row in rows:
        # Claimed: another sweeper skips it for a minute; the request itself is idempotent.
        row.next_at = now + timedelta(minutes=1)
    return [(r.order_ref, r.amount, r.currency) for r in rows]


def _refund_requested(s: Session, ref: str, data: dict[str, Any], error: str | None,
                      now: datetime) -> bool:
    """Record WeChat Pay's answer to a refund request; True when we stop retrying."""
    row = s.get(ChannelRefund, ref)
    if row is None or row.status not in ("requested", "failed"):
        return False
    row.attempts += 1
    row.updated_at = now
    if error is None:
        row.status = "success" if data.get("status") == "SUCCESS" else "processing"
        row.refund_id = str(data.get("refund_id") or "")[:64] or None
        row.last_error = None
        return False
    row.last_error = error[:255]
    if row.attempts >= REFUND_MAX_ATTEMPTS:
        row.status = "abnormal"
        return True
    row.status = "failed"
    row.next_at = now + timedelta(seconds=min(3600, 30 * 2 ** row.attempts))
    return False


def _refund_settled(s: Session, ref: str, status: str, refund_fen: object, refund_id: str,
                    now: datetime) -> str:
    row = s.execute(select(ChannelRefund).where(ChannelRefund.order_ref == ref)
                    .with_for_update()).scalar_one_or_none()
    if row is None:
        return "unknown"
    if refund_fen != row.amount:
        return "mismatch"
    final = status.lower()
    if row.status == final:
        return "same"
    row.status, row.updated_at = final, now
    row.refund_id = refund_id[:64] or row.refund_id
    return "changed"


# -- pages ------------------------------------------------------------------------------------

_STYLE = ("body{font-family:sans-serif;max-width:28em;margin:2em auto;padding:0 1em;"
          "text-align:center}img{width:16em;height:16em}")


def _page(title: str, zh: str, en: str, extra: str = "") -> str:
    return ("<!doctype html><html><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(zh)}</p><p>{html.escape(en)}</p>"
            f"{extra}</body></html>")


def _native_page(code_url: str, amount: str, order: str) -> str:
    import base64
    import io

    import qrcode
    from qrcode.image.pure import PyPNGImage

    out = io.BytesIO()
    qrcode.make(code_url, image_factory=PyPNGImage, box_size=8, border=2).save(out)
    png = base64.b64encode(out.getvalue()).decode()
    return _page(f"微信支付 · WeChat Pay {amount}", f"订单 {order}：请用微信扫一扫支付。",
                 f"Order {order}: scan with WeChat to pay.",
                 f"<img alt='QR' src='data:image/png;base64,{png}'>"
                 f"<p><code>{html.escape(code_url)}</code></p>")


def _jsapi_page(params: dict[str, str], amount: str, order: str) -> str:
    # JSON in a <script>: "</" is escaped so no value can close the element.
    data = json.dumps(params).replace("</", "<\\/")
    script = ("<script>var p=" + data + ";function pay(){WeixinJSBridge.invoke("
              "'getBrandWCPayRequest',p,function(r){document.getElementById('s').textContent="
              "r.err_msg=='get_brand_wcpay_request:ok'?'支付成功 Paid':'未完成 Not paid';});}"
              "if(typeof WeixinJSBridge=='undefined'){document.addEventListener("
              "'WeixinJSBridgeReady',pay,false);}else{pay();}</script>")
    return _page(f"微信支付 · WeChat Pay {amount}", f"订单 {order}：正在打开微信支付…",
                 f"Order {order}: opening WeChat Pay…", "<p id=s></p>" + script)
