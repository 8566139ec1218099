"""`WeChatPayGateway`: WeChat Pay orders, notifications and refunds for the one HTTP server.

- Orders: the checkout page a chat's pay link opens makes a JSAPI order inside WeChat (the
  payer is the buyer's openid) and a Native order (a QR code) anywhere else, with
  `out_trade_no` = the order ref and the order's cash in fen, expiring with the checkout.
- Payment notifications: verified (notifications.py), then recorded once per
  `transaction_id` through `handlers.channel_pay` (the engine's `checkout.record_payment`,
  key `wx:txn:<id>`), which checks the order, amount and currency and closes the checkout
  in the same transaction; what it refuses is flagged to the operators, and so is a payment
  that arrives while sales are paused (recorded: the money is real).
- Refunds of pending orders (SPEC §8): the engine books them; `sweep_refunds` asks WeChat
  Pay to return the cash (`out_refund_no` = the order ref, retried until it is accepted) and
  the refund notification records the outcome.

The SDK is synchronous (requests): every call to it runs in a worker thread, and so does
every call of `handlers.channel_pay`, the gateway's only way to the shop's database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import load_public_key

from handlers import channel_pay
from handlers.base import Database, DatabaseUnavailable
from handlers.i18n import money

from .config import PayConfig
from .notifications import Answer, Refused, outcome_answer, verify
from .pages import jsapi_page, native_page, page

log = logging.getLogger(__name__)

CST = timezone(timedelta(hours=8))


class PayError(Exception):
    """WeChat Pay did not do what we asked (an API error, a bad signature, no network)."""


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
        self._tasks: set[asyncio.Task[Any]] = set()

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
            found = await asyncio.to_thread(channel_pay.checkout_facts, self.db, token)
        except DatabaseUnavailable:
            return 503, page("稍后再试 · Try again later", "系统繁忙，请稍后再试。",
                             "The shop is busy; please try again shortly.")
        if found is None or found["channel"] != "wechat":
            return 404, page("订单不存在 · No such order", "找不到这个支付链接。",
                             "This payment link does not exist.")
        facts = found
        now = datetime.fromtimestamp(self.clock(), UTC)
        if facts["status"] != "open" or facts["order_status"] != "awaiting_payment":
            return 410, page("已处理 · Done", "这个订单已经支付或已关闭。",
                             "This order is already paid or closed.")
        if now >= facts["expires_at"]:
            return 410, page("已过期 · Expired", "支付链接已过期，请重新下单。",
                             "This payment link has expired; please order again.")
        if facts["paused"]:  # no prepay while paused: nothing can be charged (docs/engine.md)
            return 503, page("暂停销售 · Sales paused",
                             "商店暂停销售中，暂时无法付款。请在商店恢复后再试。",
                             "Sales are paused, so this payment cannot start now. "
                             "Please try again when the shop reopens.")
        description = f"{facts['sku']} x{facts['qty']}"
        if facts["lines"] > 1:  # a cart's order (docs/cart.md): one WeChat Pay order for all
            description += f" 等{facts['lines']}项 ({facts['lines']} lines)"
        description += f" ({facts['order']})"
        amount_text = money(facts["amount"], facts["currency"])
        try:
            if "micromessenger" in user_agent.lower() and facts["openid"]:
                params = await self.create_jsapi(
                    order=facts["order"], amount=facts["amount"], currency=facts["currency"],
                    description=description, openid=facts["openid"],
                    expires_at=facts["expires_at"])
                return 200, jsapi_page(params, amount_text, facts["order"])
            code_url = await self.create_native(
                order=facts["order"], amount=facts["amount"], currency=facts["currency"],
                description=description, expires_at=facts["expires_at"])
            return 200, native_page(code_url, amount_text, facts["order"])
        except PayError as exc:
            log.warning("checkout %s: %s", facts["order"], exc)
            return 502, page("暂时无法支付 · Payment unavailable",
                             "微信支付暂时不可用，请稍后再试。",
                             "WeChat Pay is unavailable right now; please try again.")

    # -- notifications ----------------------------------------------------------------------
    def verify(self, headers: Mapping[str, str], body: bytes, expect: str) -> dict[str, Any]:
        return verify(headers, body, public_key=self._public_key,
                      public_key_id=self.config.public_key_id,
                      apiv3_key=self.config.apiv3_key, expect=expect, now=self.clock())

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
        buyer = f"wx:{(tx.get('payer') or {}).get('openid', '?')}"
        try:
            # recorded, the checkout closed and (paid while paused) the operators told, at once
            result = await asyncio.to_thread(
                channel_pay.record_payment, self.db, order=ref, charge_id=txn,
                amount=total, currency=currency, buyer=buyer, operators=self.operators,
                at=paid_at(tx.get("success_time"), self.clock()))
        except DatabaseUnavailable:
            return Answer.fail(503, "busy, retry later")
        if not result["ok"]:  # flagged to the operators
            log.error("WeChat Pay %s for order %s refused: %s", txn, ref, result["code"])
            status = 404 if result["code"] == "unknown_order" else 400
            return Answer.fail(status, f"refused: {result['code']}")
        if not result.get("replayed") and self.after_payment is not None:
            # WeChat Pay is answered without waiting
            self._background(self._tell_buyer(result))
        return Answer.ok()

    async def _tell_buyer(self, result: dict[str, Any]) -> None:
        assert self.after_payment is not None
        try:
            await self.after_payment(result)
        except Exception:  # noqa: BLE001 - telling the buyer must not fail the payment
            log.exception("after-payment message for %s failed", result.get("order"))

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for the buyer messages in flight (shutdown, tests)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def refund_notification(self, headers: Mapping[str, str], body: bytes) -> Answer:
        try:
            envelope = self.verify(headers, body, "refund")
            refund = envelope["resource"]
            ref, status = refund.get("out_refund_no"), refund.get("refund_status")
            refund_fen = (refund.get("amount") or {}).get("refund")
            if not isinstance(ref, str) or status not in ("SUCCESS", "ABNORMAL", "CLOSED"):
                raise Refused(400, "refund lacks out_refund_no or status")
            refund_id, now = str(refund.get("refund_id") or ""), self._now()
            outcome = await asyncio.to_thread(channel_pay.refund_settled, self.db, ref,
                                              status, refund_fen, refund_id, now)
        except Refused as refused:
            log.warning("refund notification refused: %s", refused)
            return refused.answer
        except DatabaseUnavailable:
            return Answer.fail(503, "busy, retry later")
        if (unrecorded := outcome_answer(outcome, "refund", "refund amount differs")) is not None:
            return unrecorded
        if status != "SUCCESS" and outcome == "changed":
            log.error("WeChat Pay refund of %s ended %s", ref, status)
            await asyncio.to_thread(
                channel_pay.flag_operators, self.db, self.operators, key=f"wx:refund:{ref}",
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
        due = await asyncio.to_thread(channel_pay.due_refunds, self.db, now)
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
            gave_up = await asyncio.to_thread(channel_pay.refund_requested, self.db, ref,
                                              data, error, self._now())
            if gave_up:
                await asyncio.to_thread(
                    channel_pay.flag_operators, self.db, self.operators, key=f"wx:refund:{ref}",
                    params={"code": "refund_failed", "order": ref, "amount": amount,
                            "currency": currency, "charge": error or "", "channel": "wechat"})
        return len(due)


def paid_at(success_time: object, now: float) -> datetime:
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
