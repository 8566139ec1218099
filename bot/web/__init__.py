"""The shop as web pages, served by the one HTTP server (bot/http.py mounts `routes`):

    GET  /app                          the buyer's page (Telegram Mini App, WeChat H5, browser)
    GET  /app/api/me                   who the page speaks for, and its CSRF token
    GET  /app/v/<view>                 a view as an HTML fragment (shop, product, cart, …)
    POST /app/api/cart                 add to / take out of the cart (JSON)
    POST /app/api/checkout             the cart's checkout (JSON)
    POST /app/api/receive              the buyer confirms an order arrived (JSON)
    POST /app/api/address              the buyer's delivery address (JSON)
    POST /app/api/withdraw             a cash withdrawal request (JSON)
    GET  /app/photo/<sha256>           a product photo
    GET  /app/oauth/wechat[/callback]  WeChat OAuth (snsapi_base) → session cookie
    GET  /app/static/…                 the script and style sheet
    GET  /admin                        the operator's dashboard (or its sign-in page)
    GET  /admin/login?token=…          a one-time login link → session cookie
    POST /admin/signin/telegram        the Mini App's initData → session cookie (operators)
    POST /admin/do/<action>            the dashboard's forms (CSRF-checked)
    GET  /admin/chart/<pool|price>.png, /admin/journal.csv

docs/web.md tells how each sign-in works and what each page shows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from bot.settings import Settings
from bot.web.admin import Admin
from bot.web.auth import LoginLinks, Signer
from bot.web.buyer import Buyer
from bot.web.channels import WebConfig, announce
from bot.web.render import pick_lang, t
from bot.web.site import Blocked, Endpoint, Site
from handlers.base import App

__all__ = ["Site", "WebConfig", "announce", "login_link_maker", "routes"]

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def _guarded(endpoint: Endpoint) -> Endpoint:
    """bot/http.py's guard (no request gets a 500 with a traceback), and a blocked person
    gets a polite 403 in their language."""
    from bot.http import _guarded as http_guarded

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Blocked:
            return JSONResponse({"ok": False, "code": "blocked",
                                 "error": t(pick_lang(request.cookies.get("sf_lang")),
                                            "blocked")}, status_code=403)

    return http_guarded(guarded)


def login_link_maker(settings: Settings) -> Callable[[str], str] | None:
    """`/weblink`'s maker: a one-time `/admin/login?token=…` link for an operator, signed
    with the key the server checks it with (its one use is remembered by the server);
    None without STOREFRONT_PUBLIC_URL."""
    if not settings.public_url:
        return None
    links = LoginLinks(Signer(WebConfig.from_settings(settings).secret))
    base = settings.public_url.rstrip("/")
    return lambda identity: f"{base}/admin/login?token={links.make(identity)}"


def routes(app: App, cfg: WebConfig, *, pay: Any = None) -> tuple[list[BaseRoute], Site]:
    """The web pages' routes over `app` (and WeChat Pay's gateway when configured)."""
    site = Site(app, cfg, pay)
    buyer, admin = Buyer(site), Admin(site)

    def get(path: str, endpoint: Endpoint, name: str | None = None) -> Route:
        return Route(path, _guarded(endpoint), methods=["GET"], name=name)

    def post(path: str, endpoint: Endpoint) -> Route:
        return Route(path, _guarded(endpoint), methods=["POST"])

    def posts(prefix: str, **endpoints: Endpoint) -> list[Route]:
        return [post(prefix + name, endpoint) for name, endpoint in endpoints.items()]

    return [
        get("/app", buyer.shell),
        get("/app/api/me", buyer.me),
        get("/app/v/{view:str}", buyer.view),
        *posts("/app/api/", cart=buyer.cart_change, checkout=buyer.checkout,
               receive=buyer.receive, address=buyer.address, withdraw=buyer.withdraw),
        get("/app/photo/{sha256:str}", buyer.photo),
        get("/app/oauth/wechat", buyer.oauth_start),
        get("/app/oauth/wechat/callback", buyer.oauth_callback, name="wechat_oauth_callback"),
        Mount("/app/static", StaticFiles(directory=STATIC), name="web_static"),
        get("/admin", admin.page),
        get("/admin/login", admin.login_link),
        post("/admin/signin/telegram", admin.telegram_signin),
        post("/admin/signout", admin.signout),
        post("/admin/do/{action:str}", admin.action),
        get("/admin/chart/{name:str}.png", admin.chart),
        get("/admin/journal.csv", admin.journal),
    ], site
