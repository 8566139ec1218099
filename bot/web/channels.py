"""What the web pages ask of the chat platforms: Telegram's `createInvoiceLink` (opened by
`Telegram.WebApp.openInvoice`) and WeChat's OAuth (`snsapi_base`: the visitor's openid).

Both are plain HTTPS calls (httpx) to the base URLs in the settings, so the tests point
them at loopback stand-ins."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from bot.settings import Settings

log = logging.getLogger(__name__)

OAUTH_BASE = "https://open.weixin.qq.com"
WECHAT_API = "https://api.weixin.qq.com"


@dataclass(frozen=True)
class WebConfig:
    """The web pages' settings, taken from `Settings` at start."""

    secret: bytes
    bot_token: str | None = None
    telegram_api_base: str = "https://api.telegram.org/bot"
    provider_token: str | None = None
    wechat_app_id: str | None = None
    wechat_app_secret: str | None = None
    wechat_oauth_base: str = OAUTH_BASE
    wechat_api_base: str = WECHAT_API
    console: str | None = None  # the console user's identity when no chat channel runs

    @classmethod
    def from_settings(cls, settings: Settings, *, console: str | None = None) -> WebConfig:
        def value(secret: Any) -> str | None:
            return secret.get_secret_value() if secret is not None else None

        token = value(settings.telegram_bot_token)
        app_secret = value(settings.wechat_app_secret)
        # The signing key follows the shop's own secrets, so sessions survive a restart;
        # a shop with none (the console) gets a fresh one per process.
        seed = "|".join(x for x in (token, app_secret, value(settings.wechat_token)) if x)
        secret = (hashlib.sha256(f"storefront-web|{seed}".encode()).digest() if seed
                  else secrets.token_bytes(32))
        # a stand-in (tests) at WECHAT_API_BASE_URL answers both the authorize page and the
        # API, at its origin (the OA API is under /cgi-bin/ there, OAuth is not)
        base = None
        if settings.wechat_api_base_url:
            parts = urlsplit(settings.wechat_api_base_url)
            base = f"{parts.scheme}://{parts.netloc}"
        return cls(secret=secret, bot_token=token,
                   telegram_api_base=settings.telegram_api_base_url,
                   provider_token=value(settings.telegram_payment_provider_token),
                   wechat_app_id=settings.wechat_app_id if settings.wechat_enabled else None,
                   wechat_app_secret=app_secret,
                   wechat_oauth_base=base or OAUTH_BASE, wechat_api_base=base or WECHAT_API,
                   console=console)


async def create_invoice_link(cfg: WebConfig, *, title: str, description: str, payload: str,
                              currency: str, amount: int, need_shipping: bool) -> str:
    """A Telegram invoice link for `amount` (smallest units), payload = checkout token."""
    if not cfg.bot_token or not cfg.provider_token:
        raise RuntimeError("Telegram payments are not configured")
    params: dict[str, Any] = {
        "title": title[:32], "description": description[:255], "payload": payload,
        "provider_token": cfg.provider_token, "currency": currency,
        "prices": [{"label": title[:32], "amount": amount}]}
    if need_shipping:
        params.update(need_name=True, need_phone_number=True, need_shipping_address=True)
    async with httpx.AsyncClient(timeout=15) as client:
        r = await client.post(f"{cfg.telegram_api_base}{cfg.bot_token}/createInvoiceLink",
                              json=params)
    data = r.json()
    if not data.get("ok"):
        raise RuntimeError(f"createInvoiceLink: {data.get('description')}")
    return str(data["result"])


def oauth_url(cfg: WebConfig, redirect_uri: str, state: str) -> str:
    query = urlencode({"appid": cfg.wechat_app_id, "redirect_uri": redirect_uri,
                       "response_type": "code", "scope": "snsapi_base", "state": state})
    return f"{cfg.wechat_oauth_base}/connect/oauth2/authorize?{query}#wechat_redirect"


async def oauth_openid(cfg: WebConfig, code: str) -> str | None:
    """The openid WeChat gives for an OAuth `code` (snsapi_base), None when refused."""
    query = {"appid": cfg.wechat_app_id or "", "secret": cfg.wechat_app_secret or "",
             "code": code, "grant_type": "authorization_code"}
    try:
        async with httpx.AsyncClient(timeout=15) as client:
            r = await client.get(f"{cfg.wechat_api_base}/sns/oauth2/access_token",
                                 params=query)
        data = r.json()
    except (httpx.HTTPError, ValueError):
        log.warning("WeChat OAuth: the code could not be exchanged")
        return None
    openid = data.get("openid") if isinstance(data, dict) else None
    if not isinstance(openid, str) or not openid or len(openid) > 64:
        log.warning("WeChat OAuth refused: %s", data.get("errcode") if isinstance(data, dict)
                    else "?")
        return None
    return openid


MENU_TEXT = "🛍 商店 Shop"


async def announce(cfg: WebConfig, public_url: str | None, wechat_client: object = None) -> None:
    """Point the chats' menus at the buyer's page, at start, when the page has a public
    address: Telegram's menu button (`setChatMenuButton`, a `web_app` button) and the
    Official Account's menu (`menu/create`, a `view` button; WeChat's own page then goes
    through OAuth). A failure is logged; the shop runs on without it."""
    if not public_url:
        return
    url = f"{public_url.rstrip('/')}/app"
    if cfg.bot_token:
        try:
            async with httpx.AsyncClient(timeout=15) as client:
                r = await client.post(
                    f"{cfg.telegram_api_base}{cfg.bot_token}/setChatMenuButton",
                    json={"menu_button": {"type": "web_app", "text": MENU_TEXT,
                                          "web_app": {"url": url}}})
            if not r.json().get("ok"):
                log.warning("Telegram's menu button was not set: %s", r.json().get("description"))
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("Telegram's menu button was not set: %s", type(exc).__name__)
    if wechat_client is not None:
        import asyncio

        menu = {"button": [{"type": "view", "name": MENU_TEXT, "url": url}]}
        try:
            await asyncio.to_thread(wechat_client.menu.create, menu)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - wechatpy raises several kinds
            log.warning("the Official Account's menu was not created: %s", exc)
