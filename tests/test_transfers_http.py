"""Withdrawal transfers through the running HTTP server, over real loopback sockets: the
follower the server hands the scheduler, the confirm-receipt page, and WeChat Pay's
transfer notification at /wechat/pay/transfer-notify (issue 17)."""

from __future__ import annotations

import json

import httpx
from sqlalchemy import select

from bot.http import start_http
from engine import service, transfers, users
from engine.verify import verify
from handlers.base import App
from storage.models import Outbox, Withdrawal
from tests.standins import wechat as sw
from tests.standins.wechatpay_transfers import FakeTransferAPI
from tests.test_transfers import ALICE, WX, funded
from tests.wechat_harness import SECRET, settings_for

WECHAT_UA = "Mozilla/5.0 (iPhone) MicroMessenger/8.0.47"


async def test_a_withdrawal_is_paid_through_the_server_once(make_db, tmp_path):
    keys = sw.generate_pay_keys(tmp_path / "keys")
    db = make_db("sqlite")
    funded(db)
    with sw.FakeWeChatAPI(appid=keys.appid, secret=SECRET) as api, \
            FakeTransferAPI(keys) as pay_api:
        settings = settings_for(str(db.engine.url), api, pay_api, keys, None,
                                WECHAT_PAY_TRANSFER_SCENE_ID="1005")
        server = await start_http(settings, App(db=db, operators=frozenset(), currency="CNY"))
        http = httpx.AsyncClient(base_url=server.url, timeout=15, trust_env=False)
        try:
            assert "wechat-pay-transfers" in [c.name for c in server.chores]
            r = service.request_withdrawal(db, user=WX, amount="100.00", key="w")
            service.decide_withdrawal(db, withdrawal_id=r["withdrawal"], approve=True,
                                      actor="tg:1")
            no = transfers.out_bill_no(r["withdrawal"])
            await server.pay.follow_transfers()  # the chore, as the scheduler runs it
            assert pay_api.bills[no]["transfer_scene_id"] == "1005"

            note = db.read(lambda s: s.execute(select(Outbox.params).where(
                Outbox.kind == "transfer_confirm")).scalar_one())
            url = json.loads(note)["url"]
            assert url.startswith("https://shop.example/wechat/pay/transfer/")
            page = await http.get(url.removeprefix("https://shop.example"),
                                  headers={"User-Agent": WECHAT_UA})
            assert page.status_code == 200
            assert "requestMerchantTransfer" in page.text
            assert pay_api.bills[no]["package_info"] in page.text
            assert (await http.get("/wechat/pay/transfer/nope")).status_code == 404

            pay_api.confirm(no)  # the user confirmed on that page
            headers, body = pay_api.notification_for(no)
            stale, _ = pay_api.notification_for(no, wrong_signature=True)
            assert (await http.post("/wechat/pay/transfer-notify", content=body,
                                    headers=stale)).status_code == 401
            for _ in range(2):
                answer = await http.post("/wechat/pay/transfer-notify", content=body,
                                         headers=headers)
                assert (answer.status_code, answer.content) == (204, b"")
            assert db.read(lambda s: s.get(Withdrawal, r["withdrawal"]).status) == "paid"
            assert (await http.get(url.removeprefix("https://shop.example"))).status_code == 410
            assert pay_api.paid_to(ALICE) == 10000
            assert users.account(db, WX)["wallet"] == 20000
            assert verify(db).ok
        finally:
            await http.aclose()
            await server.stop()
