"""What every web endpoint shares: the shop (`App`), the settings (`WebConfig`), who is asking
(`Site.visitor`), CSRF, and answers (refusals in the visitor's language, never a traceback).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.web import auth
from bot.web.auth import LoginLinks, Session, Signer
from bot.web.channels import WebConfig
from bot.web.render import pick_lang, t
from engine import users, views
from engine.errors import Refusal
from handlers.base import App

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_JSON = 32 * 1024
Endpoint = Callable[[Request], Awaitable[Response]]


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Blocked(Exception):
    """The visitor's account is blocked by an operator (the chat's `blocked` answer)."""


@dataclass
class Visitor:
    """Who asks, in which language; `session` carries the CSRF binding."""

    session: Session
    lang: str
    tg: auth.TelegramUser | None = None

    @property
    def identity(self) -> str:
        return self.session.identity


@dataclass
class Site:
    app: App
    cfg: WebConfig
    pay: Any = None  # bot.wechatpay.WeChatPayGateway when WeChat Pay is configured
    announcing: Any = None  # the task pointing the chats' menus here (channels.announce)
    signer: Signer = field(init=False)
    links: LoginLinks = field(init=False)

    def __post_init__(self) -> None:
        self.signer = Signer(self.cfg.secret)
        self.links = LoginLinks(self.signer)

    @property
    def db(self) -> Any:
        return self.app.db

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def visitor_session(self, request: Request) -> tuple[Session, auth.TelegramUser | None] | None:
        """Telegram's initData when the request carries it (then nothing else counts), else
        the signed session cookie, else the console user on loopback when no chat runs."""
        init = request.headers.get("x-telegram-init-data")
        if init is not None:
            if not self.cfg.bot_token:
                return None
            user = auth.check_init_data(init, self.cfg.bot_token)
            if user is None:
                return None
            sid = hashlib.sha256(init.encode()).hexdigest()[:16]
            return Session(user.identity, sid, "telegram"), user
        found = auth.read_session(self.signer, request.cookies.get(auth.COOKIE))
        if found is not None:
            return found, None
        if self.cfg.console and _loopback(request):
            return Session(self.cfg.console, "console", "console"), None
        return None

    async def visitor(self, request: Request) -> Visitor | None:
        found = self.visitor_session(request)
        if found is None:
            return None
        session, tg = found
        asked = request.query_params.get("lang") or request.cookies.get("sf_lang")
        stored = None if asked else await self.call(views.lang_of, self.db, session.identity)
        lang = pick_lang(asked, stored, tg.lang if tg else None,
                         request.headers.get("accept-language"))
        return Visitor(session, lang, tg)

    async def join(self, v: Visitor) -> dict[str, Any]:
        """The visitor as a shop user, created at first visit as at a first chat message.
        A user an operator blocked is refused here, as the chat refuses them (`Blocked`)."""
        user = await self.call(users.resolve, self.db, v.identity, lang=v.lang,
                               display_name=v.tg.name if v.tg else None)
        if user["blocked"]:
            raise Blocked()
        return user

    def csrf(self, v: Visitor) -> str:
        return auth.csrf_token(self.signer, v.session)

    def csrf_ok(self, v: Visitor, given: object) -> bool:
        return isinstance(given, str) and auth.csrf_ok(self.signer, v.session, given)

    def is_operator(self, v: Visitor | None) -> bool:
        return v is not None and v.identity in self.app.operators


async def json_body(request: Request) -> dict[str, Any]:
    from bot.http import read_body

    raw = await read_body(request, MAX_JSON)
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def refusal_json(lang: str, exc: Refusal, status: int = 409) -> JSONResponse:
    return JSONResponse({"ok": False, "code": exc.code, "error": t(lang, f"refusal.{exc.code}")},
                        status_code=status)


def error_json(lang: str, key: str, status: int) -> JSONResponse:
    return JSONResponse({"ok": False, "code": key, "error": t(lang, key)}, status_code=status)
