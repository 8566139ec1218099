"""WeChat Pay merchant transfers (商家转账, `mch_transfer_bills`) paying withdrawals.

- `WeChatTransfers` is the scheduler's `TransferAPI` over wechatpayv3: create a bill
  (`out_bill_no` from the withdrawal, amount in fen, the payee's openid, their real name
  from 2,000.00 yuan, encrypted by the SDK with WeChat Pay's public key), query it by
  `out_bill_no`, cancel it. WeChat Pay's answers become the follower's errors: 404 → no
  such bill, a duplicate `out_bill_no` → `DuplicateBill`, 5xx / no answer / a response whose
  signature does not verify → `TransferUnavailable` (`NOT_ENOUGH`: merchant funds, too),
  any other 4xx → `TransferRefused`.
- `notification`: WeChat Pay's `MCHTRANSFER.BILL.FINISHED` notification, verified exactly as
  payment notifications (notifications.py: signature, five-minute freshness, AES-GCM
  resource, `mch_payment`), then recorded through handlers/payouts.py.
- `confirm_page`: where the user confirms receipt in WeChat (`requestMerchantTransfer` with
  the bill's `package_info`), linked from the message the user gets when WeChat Pay waits
  for them (`WAIT_USER_CONFIRM`).

The SDK is synchronous (requests): the follower calls it from worker threads. Nothing here
logs an openid or a name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from wechatpayv3 import WeChatPay
from wechatpayv3.utils import load_public_key

from handlers import payouts as payout_handlers
from handlers.base import Database, DatabaseUnavailable
from scheduler.transfers import (
    DuplicateBill,
    TransferRefused,
    TransferUnavailable,
    run_follow,
)

from .config import PayConfig
from .notifications import Answer, Refused, outcome_answer, verify
from .pages import page

log = logging.getLogger(__name__)

TRANSFER_EVENT = "MCHTRANSFER.BILL.FINISHED"
DEFAULT_SCENE = "1000"  # 现金营销 (cash rewards): the scene a rebate payout is reported under
DEFAULT_REMARK = "钱包提现"
# What scene 1000 must report with every bill (WeChat Pay's 转账场景报备信息).
SCENE_REPORT = ({"info_type": "活动名称", "info_content": "消费返现"},
                {"info_type": "奖励说明", "info_content": "钱包余额提现"})


class WeChatTransfers:
    def __init__(self, db: Database, client: WeChatPay, config: PayConfig, *,
                 scene_id: str = DEFAULT_SCENE, remark: str = DEFAULT_REMARK,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.client = client
        self.config = config
        self.scene_id = scene_id
        self.remark = remark[:32]
        self.clock = clock
        self._public_key = load_public_key(config.public_key_pem)

    @property
    def notify_url(self) -> str:
        return self.config.public_base + "/wechat/pay/transfer-notify"

    def confirm_url(self, token: str) -> str:
        return f"{self.config.public_base}/wechat/pay/transfer/{token}"

    # -- the API (scheduler.transfers.TransferAPI) ------------------------------------------
    def _call(self, fn: Callable[..., tuple[int, Any]], **kwargs: Any) -> tuple[int, dict]:
        try:
            code, text = fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - network, or a response the SDK refused
            raise TransferUnavailable(f"WeChat Pay unreachable or unverifiable: "
                                      f"{type(exc).__name__}") from exc
        try:
            data = json.loads(text) if text else {}
        except (TypeError, ValueError):
            data = {}
        data = data if isinstance(data, dict) else {}
        if code >= 500 or code == 429 or (code == 403 and data.get("code") == "NOT_ENOUGH"):
            raise TransferUnavailable(f"WeChat Pay said {code} {data.get('code')}",
                                      str(data.get("code") or ""))
        return code, data

    def create(self, *, out_bill_no: str, openid: str, amount: int,
               user_name: str | None) -> dict[str, Any]:
        code, data = self._call(
            self.client.mch_transfer_bills, out_bill_no=out_bill_no,
            transfer_scene_id=self.scene_id, openid=openid, transfer_amount=amount,
            transfer_remark=self.remark, user_name=user_name,
            transfer_scene_report_infos=[dict(x) for x in SCENE_REPORT],
            notify_url=self.notify_url)
        if code in (200, 201, 202):
            return data
        if data.get("code") in ("ALREADY_EXISTS", "DUPLICATE_OUT_BILL_NO"):
            raise DuplicateBill(out_bill_no)
        raise TransferRefused(str(data.get("code") or code), str(data.get("message") or ""))

    def query(self, out_bill_no: str) -> dict[str, Any] | None:
        code, data = self._call(self.client.mch_transfer_bills_query, out_bill_no=out_bill_no)
        if code == 404:
            return None
        if code != 200:
            raise TransferRefused(str(data.get("code") or code), str(data.get("message") or ""))
        return data

    def cancel(self, out_bill_no: str) -> dict[str, Any]:
        code, data = self._call(self.client.mch_transfer_bills_cancel, out_bill_no=out_bill_no)
        if code != 200:
            raise TransferRefused(str(data.get("code") or code), str(data.get("message") or ""))
        return data

    # -- WeChat Pay's notification ----------------------------------------------------------
    async def notification(self, headers: Mapping[str, str], body: bytes) -> Answer:
        try:
            envelope = verify(headers, body, public_key=self._public_key,
                              public_key_id=self.config.public_key_id,
                              apiv3_key=self.config.apiv3_key, expect="mch_payment",
                              now=self.clock())
            bill = envelope["resource"]
            if envelope.get("event_type") != TRANSFER_EVENT:
                return Answer.ok()  # not about a transfer's end: nothing to record
            if bill.get("mchid") != self.config.mchid:
                raise Refused(400, "notification for another merchant")
            no = bill.get("out_bill_no")
            if not isinstance(no, str) or not isinstance(bill.get("state"), str):
                raise Refused(400, "bill lacks out_bill_no or state")
            at = datetime.fromtimestamp(self.clock(), UTC)
            outcome = await asyncio.to_thread(payout_handlers.transfer_notified, self.db,
                                              no, bill, at)
        except Refused as refused:
            log.warning("transfer notification refused: %s", refused)
            return refused.answer
        except DatabaseUnavailable:
            return Answer.fail(503, "busy, retry later")
        return outcome_answer(outcome, "transfer", "transfer differs from ours") or Answer.ok()

    # -- the user's confirmation -------------------------------------------------------------
    async def confirm_page(self, token: str) -> tuple[int, str]:
        try:
            facts = await asyncio.to_thread(payout_handlers.confirm_facts, self.db, token)
        except DatabaseUnavailable:
            return 503, page("稍后再试 · Try again later", "系统繁忙，请稍后再试。",
                             "The shop is busy; please try again shortly.")
        if facts is None:
            return 404, page("找不到 · Not found", "找不到这笔提现。",
                             "This withdrawal does not exist.")
        if facts["state"] != "WAIT_USER_CONFIRM" or not facts["package_info"]:
            return 410, page("无需确认 · Nothing to confirm", "这笔提现无需确认（已完成或已关闭）。",
                             "This withdrawal needs no confirmation (done or closed).")
        params = {"mchId": self.config.mchid, "appId": self.config.appid,
                  "package": facts["package_info"]}
        data = json.dumps(params).replace("</", "<\\/")
        script = ("<script>var p=" + data + ";function go(){WeixinJSBridge.invoke("
                  "'requestMerchantTransfer',p,function(r){document.getElementById('s')"
                  ".textContent=r.err_msg=='requestMerchantTransfer:ok'?"
                  "'已确认收款 Received':'未完成 Not confirmed';});}"
                  "if(typeof WeixinJSBridge=='undefined'){document.addEventListener("
                  "'WeixinJSBridgeReady',go,false);}else{go();}</script>")
        amount = facts["amount_text"]
        return 200, page(f"确认收款 · Confirm receipt {amount}",
                         "请在微信中确认收款，款项将进入微信零钱。",
                         "Confirm in WeChat to receive the money in your WeChat balance.",
                         "<p id=s></p>" + script)


def attach_transfers(pay: Any, settings: Any, app: Any) -> WeChatTransfers:
    """Give WeChat Pay's gateway its transfers (`pay.transfers`) and the follower the
    scheduler runs as a chore (`pay.follow_transfers`, bot/http.py)."""
    wt = WeChatTransfers(pay.db, pay.client, pay.config,
                         scene_id=settings.wechat_pay_transfer_scene_id,
                         remark=settings.wechat_pay_transfer_remark)
    hours = float(settings.transfer_confirm_hours)
    operators = frozenset(app.operators)

    async def follow_transfers() -> None:
        await run_follow(pay.db, wt, lambda: datetime.now(UTC), hours, operators)

    pay.transfers, pay.follow_transfers = wt, follow_transfers
    return wt


__all__ = ["DEFAULT_REMARK", "DEFAULT_SCENE", "TRANSFER_EVENT", "WeChatTransfers",
           "attach_transfers"]
