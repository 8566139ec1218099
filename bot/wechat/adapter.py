"""`GET`/`POST /wechat`: WeChat's server check, then every message and event, answered.

A request is refused (403, one log line) unless its query `signature` checks against
WECHAT_TOKEN, its `timestamp` is within five minutes of our clock and its `nonce` was not
used before for another request (bot/wechat/replay.py) — all before the body is believed.
Then the body is parsed safely (400 if it is not a WeChat push); with WECHAT_ENCODING_AES_KEY
set it must be encrypted (safe mode: a plaintext body is 403) and its `msg_signature` right
(403). Then it is deduplicated, dispatched and answered with one passive reply inside
WeChat's five seconds. Whatever does not fit that one reply — a second message, a picture, an
answer that took too long — follows as customer-service messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from wechatpy import WeChatClient

from bot.settings import Settings
from handlers.base import (
    App,
    DatabaseUnavailable,
    Reply,
    Request,
)
from handlers.shop import receipt_on

from .followups import APOLOGY, FollowUps
from .gate import NO_REPLY, Gate
from .inbound import Inbound, inbound_of, operator_photo
from .messages import (
    OPENID,
    BadXml,
    Part,
    render_reply,
)
from .render import Renderer
from .replay import Nonces
from .seen import Seen
from .sender import WeChatSender, client_from_settings

log = logging.getLogger(__name__)


PASSIVE_BUDGET = 4.0  # seconds; WeChat waits 5 for a passive reply and the network takes some
BAD_REQUEST = (400, b"bad request", "text/plain")
BUSY = ("商店繁忙，请稍后再试。未做任何更改。\n"
        "The shop is busy, please try again in a moment. Nothing was changed.")


class WeChatAdapter:
    def __init__(self, app: App, client: WeChatClient, *, token: str, appid: str,
                 aes_key: str | None = None, template_id: str | None = None,
                 pay: Any = None, passive_budget: float = PASSIVE_BUDGET,
                 clock: Callable[[], float] = time.time, redis_url: str | None = None) -> None:
        self.app = app
        self.client = client
        self.token = token
        self.sender = WeChatSender(client, app.db, template_id)
        self.seen = Seen(app.db)
        self.nonces = Nonces(app.db, redis_url, namespace=appid)
        self.gate = Gate(token, self.nonces, lambda: self.clock(), aes_key=aes_key, appid=appid)
        self.follow = FollowUps(app, self.sender)  # customer-service messages, in the background
        self.renderer = Renderer(app, client, self.sender, self.seen, self._now, self.follow.job)
        self.follow.render = self.renderer.render
        self.pay = pay  # a bot.wechatpay.WeChatPayGateway, set by bot.http when configured
        self.passive_budget = passive_budget
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, app: App, *, client: Any = None) -> WeChatAdapter:
        token = settings.wechat_token.get_secret_value() if settings.wechat_token else ""
        aes = (settings.wechat_encoding_aes_key.get_secret_value()
               if settings.wechat_encoding_aes_key else None)
        return cls(app, client or client_from_settings(settings), token=token,
                   appid=settings.wechat_app_id or "", aes_key=aes,
                   template_id=settings.wechat_notify_template_id,
                   redis_url=settings.redis_url)

    def _now(self) -> datetime:
        return self.gate.now()

    # -- GET /wechat ------------------------------------------------------------------------
    def verify_get(self, query: dict[str, str]) -> tuple[int, str]:
        """Echo `echostr` only to a correctly signed, fresh, unused check (and a sane one)."""
        echostr = query.get("echostr", "")
        reason = self.gate.refusal(query)
        if reason is None and not (0 < len(echostr) <= 128 and echostr.isprintable()):
            reason = "malformed echostr"
        if reason is None:
            try:
                if not self.gate.claim_nonce(query, b"GET " + echostr.encode()):
                    reason = "nonce already used"
            except DatabaseUnavailable:
                log.warning("wechat: database unavailable for a server check")
                return 503, "unavailable"
        if reason is not None:
            return self.gate.refuse(reason, query)[0], "forbidden"
        return 200, echostr

    # -- POST /wechat -----------------------------------------------------------------------
    async def handle_post(self, query: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        reason = self.gate.refusal(query)
        if reason is not None:
            return self.gate.refuse(reason, query)
        try:
            msg = self.gate.open(body, query)
        except BadXml as exc:
            log.info("wechat: refusing a body: %s", exc)
            return BAD_REQUEST
        if isinstance(msg, str):
            return self.gate.refuse(msg, query)
        openid, ours = msg.get("FromUserName", ""), msg.get("ToUserName", "")
        if not OPENID.match(openid) or not ours or not msg.get("MsgType"):
            return BAD_REQUEST
        try:
            unused = await asyncio.to_thread(self.gate.claim_nonce, query, body)
        except DatabaseUnavailable:
            # Unchecked, nothing may act: "busy, try again", as when the dedupe claim fails.
            log.warning("wechat: database unavailable checking a nonce")
            return self.gate.reply(self._busy(openid, ours), query)
        if not unused:
            return self.gate.refuse("nonce already used for another body", query)
        inbound = inbound_of(msg, openid)
        if inbound is None:
            return NO_REPLY
        return self.gate.reply(await self._answer(inbound, openid, ours), query)

    # -- answering ------------------------------------------------------------------------
    async def _answer(self, inbound: Inbound, openid: str, ours: str) -> str:
        """The passive reply XML ("" for none); never processes one message twice."""
        try:
            seen, stored = await asyncio.to_thread(self.seen.claim, inbound.key,
                                                   f"wx:{openid}", self._now())
        except DatabaseUnavailable:
            # "success" would make WeChat drop the message for good (it retries only pushes
            # left unanswered): say "busy, try again" now, which needs no database.
            log.warning("wechat: database unavailable for %s", inbound.key)
            return self._busy(openid, ours)
        if seen:
            return stored or ""
        request = inbound.request
        if inbound.image is not None and request.identity in self.app.operators:
            request = await operator_photo(self.client, request, inbound.image)
        if inbound.menu_id is not None:
            data = await asyncio.to_thread(self.seen.recall,
                                           f"wx:btn:{openid}:{inbound.menu_id}")
            if data is not None:
                request = Request(channel="wechat", identity=request.identity,
                                  request_id=request.request_id, callback=data)
        task = asyncio.create_task(self._parts(request, openid))
        done, _ = await asyncio.wait({task}, timeout=self.passive_budget)
        if task not in done:
            # Too slow for a passive reply: answer now, follow up as customer service.
            self.follow.when_done(task, openid)
            await asyncio.to_thread(self.seen.remember, inbound.key, "", self._now())
            return ""
        if self.pay is not None and request.identity in self.app.operators:
            self._background(self.pay.sweep_refunds())  # e.g. after 退款: return the cash now
        xml, rest = await self.renderer.passive(task.result(), openid, ours, int(self.clock()))
        await asyncio.to_thread(self.seen.remember, inbound.key, xml, self._now())
        if rest:
            self.follow.send(openid, rest)
        return xml

    def _busy(self, openid: str, ours: str) -> str:
        return render_reply(openid, ours, "text", BUSY, int(self.clock()))

    async def _parts(self, request: Request, openid: str) -> list[Part]:
        """Dispatch and render; never raises (a failure becomes an apology)."""
        import handlers

        try:
            reply = await handlers.dispatch(self.app, request)
            return await self.render(reply, request, openid)
        except Exception:
            log.exception("wechat: answering %s failed", request.request_id)
            return [Part(text=APOLOGY)]

    async def render(self, reply: Reply, request: Request, openid: str) -> list[Part]:
        """A conversation's reply as WeChat messages (bot/wechat/render.py)."""
        return await self.renderer.render(reply, request, openid)

    @property
    def pay(self) -> Any:
        """The WeChat Pay gateway (bot.wechatpay), set by bot.http when configured."""
        return self.renderer.pay

    @pay.setter
    def pay(self, gateway: Any) -> None:
        self.renderer.pay = gateway

    # -- hooks for the rest of the shop ---------------------------------------------------
    async def after_payment(self, result: dict[str, Any]) -> None:
        """Tell a WeChat buyer their payment arrived (the receipt), as customer service."""
        found = await receipt_on(self.app, "wx", result)
        if found is not None:
            await self.sender.send(*found)

    async def prune_seen(self) -> int:
        now = self._now()
        return (await asyncio.to_thread(self.seen.prune, now)
                + await asyncio.to_thread(self.nonces.prune, now))

    def _background(self, coro: Any) -> None:
        self.follow.start(coro)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for the follow-ups in flight (shutdown, tests)."""
        await self.follow.drain(timeout)

    async def aclose(self) -> None:
        await self.follow.aclose()
        self.nonces.close()
