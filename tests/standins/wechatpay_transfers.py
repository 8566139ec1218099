"""A loopback stand-in for WeChat Pay's merchant transfers (商家转账, APIv3, public-key mode).

``FakeTransferAPI`` extends ``FakeWeChatPayAPI`` (tests/standins/wechat.py: the merchant's
``Authorization`` verified, every response signed with the platform key, ``inject_error``)
with the three transfer endpoints wechatpayv3's ``mch_transfer_bills*`` call:

    POST /v3/fund-app/mch-transfer/transfer-bills                           create
    GET  /v3/fund-app/mch-transfer/transfer-bills/out-bill-no/{no}          query
    POST /v3/fund-app/mch-transfer/transfer-bills/out-bill-no/{no}/cancel   cancel

and how they fail: an injected 5xx, a timeout (``slow_next``: the bill is made, the answer
comes too late), a duplicate ``out_bill_no`` (the same request again answers the same bill;
different parameters are ``400 ALREADY_EXISTS``), insufficient merchant funds
(``403 NOT_ENOUGH``, with ``funds``), a query for a bill it does not have
(``404 NOT_FOUND``). A bill waits for the user (``WAIT_USER_CONFIRM`` with a
``package_info``) unless ``need_confirm`` is off (then ``ACCEPTED``); ``confirm``,
``fail`` and ``expire`` end it, and ``notification_for`` signs the
``MCHTRANSFER.BILL.FINISHED`` notification WeChat Pay would send. ``paid_to(openid)`` is
what the payee received: the tests' proof that nothing is paid twice.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.hashes import SHA1
from starlette.requests import Request
from starlette.responses import Response

from .wechat import (
    FakeWeChatPayAPI,
    PayKeys,
    RecordedCall,
    _iso_cst,
    _json_response,
    _random_digits,
    _signed_notification,
)

BILLS = "/v3/fund-app/mch-transfer/transfer-bills"
FINAL = ("SUCCESS", "FAIL", "CANCELLED")
_SAME = ("openid", "transfer_amount", "transfer_scene_id")  # a repeat must match these


def bill_path(no: str) -> str:
    return f"{BILLS}/out-bill-no/{no}"


class FakeTransferAPI(FakeWeChatPayAPI):
    def __init__(self, keys: PayKeys, *, verify_requests: bool = True,
                 need_confirm: bool = True, funds: int | None = None) -> None:
        super().__init__(keys, verify_requests=verify_requests)
        self.bills: dict[str, dict[str, Any]] = {}
        self.need_confirm = need_confirm
        self.funds = funds  # fen the merchant can pay out; None = unlimited
        self._slow: list[float] = []

    def _routes(self) -> list[tuple[str, list[str], Any]]:
        return [*super()._routes(),
                (BILLS, ["POST"], self._create),
                (BILLS + "/out-bill-no/{no}", ["GET"], self._query),
                (BILLS + "/out-bill-no/{no}/cancel", ["POST"], self._cancel)]

    # -- test drivers ------------------------------------------------------------------------
    def slow_next(self, seconds: float, times: int = 1) -> None:
        """The next `times` create requests are carried out, but answered after `seconds`
        (a client with a shorter timeout gives up: the bill exists, the caller never knew)."""
        with self._lock:
            self._slow.extend([seconds] * times)

    def _end(self, no: str, state: str, reason: str | None = None) -> dict[str, Any]:
        with self._lock:
            bill = self.bills[no]
            if bill["state"] in FINAL:
                raise ValueError(f"bill {no} already {bill['state']}")
            bill["state"], bill["update_time"] = state, _iso_cst()
            if reason:
                bill["fail_reason"] = reason
            if state != "SUCCESS" and self.funds is not None:
                self.funds += bill["transfer_amount"]
            return dict(bill)

    def confirm(self, no: str) -> dict[str, Any]:
        """The user confirmed receipt (or, without confirmation, WeChat Pay finished)."""
        return self._end(no, "SUCCESS")

    def fail(self, no: str, reason: str = "PAYEE_ACCOUNT_ABNORMAL") -> dict[str, Any]:
        return self._end(no, "FAIL", reason)

    def expire(self, no: str) -> dict[str, Any]:
        """The user never confirmed: WeChat Pay closed the bill."""
        return self._end(no, "CANCELLED", "TRANSFER_TIMEOUT")

    def paid_to(self, openid: str) -> int:
        with self._lock:
            return sum(b["transfer_amount"] for b in self.bills.values()
                       if b["openid"] == openid and b["state"] == "SUCCESS")

    def notification_for(self, no: str, *, wrong_signature: bool = False,  # type: ignore[override]
                         timestamp: int | None = None, amount: int | None = None
                         ) -> tuple[dict[str, str], bytes]:
        """Signed MCHTRANSFER.BILL.FINISHED for a bill that ended (`amount` overrides the
        amount it claims, for tests of a bill that is not ours)."""
        with self._lock:
            bill = dict(self.bills[no])
        resource = {"mchid": self.keys.mchid, "out_bill_no": no,
                    "transfer_bill_no": bill["transfer_bill_no"], "state": bill["state"],
                    "transfer_amount": bill["transfer_amount"] if amount is None else amount,
                    "openid": bill["openid"], "create_time": bill["create_time"],
                    "update_time": bill["update_time"]}
        if bill.get("fail_reason"):
            resource["fail_reason"] = bill["fail_reason"]
        return _signed_notification(self.keys, event_type="MCHTRANSFER.BILL.FINISHED",
                                    summary="商家转账单据终态通知", original_type="mch_payment",
                                    resource=resource, timestamp=timestamp,
                                    wrong_signature=wrong_signature, serial=None)

    # -- endpoints ---------------------------------------------------------------------------
    async def _answer(self, response: Response, *, slow: bool = False) -> Response:
        with self._lock:
            delay = self._slow.pop(0) if slow and self._slow else 0.0
        if delay:
            await asyncio.sleep(delay)
        return response

    def _user_name(self, cipher: str) -> str:
        key = serialization.load_pem_private_key(self.keys.platform_private_key_pem.encode(),
                                                 None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.decrypt(base64.b64decode(cipher),
                           padding.OAEP(mgf=padding.MGF1(SHA1()), algorithm=SHA1(),
                                        label=None)).decode()

    async def _create(self, request: Request, call: RecordedCall) -> Response:
        if (early := self._check_request(request, call)) is not None:
            return await self._answer(early)
        body = call.json or {}
        no = body.get("out_bill_no")
        amount = body.get("transfer_amount")
        if not (isinstance(no, str) and no.isalnum() and isinstance(amount, int) and amount > 0
                and body.get("openid") and body.get("transfer_scene_id")
                and body.get("transfer_remark") and body.get("appid") == self.keys.appid):
            return await self._answer(self._error(400, "PARAM_ERROR", "参数错误"))
        name = body.get("user_name")
        if amount >= 200_000:
            if not name or call.headers.get("wechatpay-serial") != self.keys.public_key_id:
                return await self._answer(self._error(400, "PARAM_ERROR", "需要收款用户姓名"))
            name = self._user_name(name)
        with self._lock:
            old = self.bills.get(no)
            if old is not None:
                if any(old[k] != body.get(k) for k in _SAME):
                    response = self._error(400, "ALREADY_EXISTS", "商户单号已存在，参数不一致")
                else:
                    response = _json_response(self._created(old))
            elif self.funds is not None and self.funds < amount:
                response = self._error(403, "NOT_ENOUGH", "商户运营账户资金不足")
            else:
                if self.funds is not None:
                    self.funds -= amount
                state = "WAIT_USER_CONFIRM" if self.need_confirm else "ACCEPTED"
                bill = {"out_bill_no": no, "transfer_bill_no": "1330" + _random_digits(36),
                        "state": state, "transfer_amount": amount, "openid": body["openid"],
                        "transfer_scene_id": body["transfer_scene_id"], "user_name": name,
                        "remark": body["transfer_remark"], "create_time": _iso_cst(),
                        "update_time": _iso_cst(),
                        "package_info": ("ABBQO+oYAAABAAAAAAAk+" + _random_digits(20))
                        if self.need_confirm else None}
                self.bills[no] = bill
                response = _json_response(self._created(bill))
        return await self._answer(response, slow=True)

    @staticmethod
    def _created(bill: dict[str, Any]) -> dict[str, Any]:
        out = {"out_bill_no": bill["out_bill_no"], "transfer_bill_no": bill["transfer_bill_no"],
               "create_time": bill["create_time"], "state": bill["state"]}
        if bill["state"] == "WAIT_USER_CONFIRM" and bill.get("package_info"):
            out["package_info"] = bill["package_info"]
        return out

    def _view(self, bill: dict[str, Any]) -> dict[str, Any]:
        out = {"mch_id": self.keys.mchid, "out_bill_no": bill["out_bill_no"],
               "transfer_bill_no": bill["transfer_bill_no"], "appid": self.keys.appid,
               "state": bill["state"], "transfer_amount": bill["transfer_amount"],
               "transfer_remark": bill["remark"], "openid": bill["openid"],
               "create_time": bill["create_time"], "update_time": bill["update_time"]}
        if bill.get("fail_reason"):
            out["fail_reason"] = bill["fail_reason"]
        return out

    async def _query(self, request: Request, call: RecordedCall) -> Response:
        if (early := self._check_request(request, call)) is not None:
            return await self._answer(early)
        with self._lock:
            bill = self.bills.get(request.path_params["no"])
            view = self._view(bill) if bill else None
        if view is None:
            return await self._answer(self._error(404, "NOT_FOUND", "记录不存在"))
        return await self._answer(_json_response(view))

    async def _cancel(self, request: Request, call: RecordedCall) -> Response:
        if (early := self._check_request(request, call)) is not None:
            return await self._answer(early)
        no = request.path_params["no"]
        with self._lock:
            bill = self.bills.get(no)
            state = bill["state"] if bill else None
        if bill is None:
            return await self._answer(self._error(404, "NOT_FOUND", "记录不存在"))
        if state in FINAL:
            return await self._answer(self._error(400, "INVALID_REQUEST", "单据状态不可撤销"))
        self._end(no, "CANCELLED", "MERCHANT_REVOKED")
        return await self._answer(_json_response({
            "out_bill_no": no, "transfer_bill_no": bill["transfer_bill_no"],
            "state": "CANCELING", "update_time": _iso_cst()}))


__all__ = ["BILLS", "FakeTransferAPI", "bill_path"]
