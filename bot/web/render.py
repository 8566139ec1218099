"""Templates (Jinja2, autoescaped) and the web pages' own texts (zh, en).

The pages' texts live in bot/web/locales/<lang>.json; a key they lack (the engine's refusal
codes, `outlook.*`, …) comes from the chat's catalogue (handlers/locales), so a refusal reads
the same in the page as in the chat."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse

from handlers import i18n

LANGS = ("en", "zh")


@cache
def _catalogue(lang: str) -> dict[str, str]:
    return i18n.read_catalogue("bot.web", lang)


def t(lang: str, key: str, /, **params: Any) -> str:
    lang = lang if lang in LANGS else "en"
    text = _catalogue(lang).get(key)
    if text is None:
        return i18n.t(lang, key, **params)
    return text.format(**params) if params else text


def pick_lang(*candidates: str | None) -> str:
    for lang in candidates:
        if lang:
            lang = lang.lower()
            if lang.startswith("zh"):
                return "zh"
            if lang.startswith("en"):
                return "en"
    return "en"


def _day(at: datetime | None) -> str:
    return i18n.day(at) if at is not None else "-"


@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("bot.web", "templates"),
                      autoescape=select_autoescape(("html",)), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["pts"] = i18n.pts
    env.filters["price"] = i18n.price
    env.filters["day"] = _day
    env.filters["when"] = lambda at: i18n.when(at) if at is not None else "-"
    env.filters["percent"] = i18n.percent
    return env


def render(name: str, lang: str, currency: str, status: int = 200, **context: Any) -> HTMLResponse:
    def text(key: str, **params: Any) -> str:
        return t(lang, key, **params)

    def money(fen: int | None) -> str:
        return i18n.money(fen or 0, currency)

    html = environment().get_template(name).render(t=text, money=money, lang=lang,
                                                   currency=currency, **context)
    return HTMLResponse(html, status_code=status,
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "same-origin"})


# Scripts from this server and Telegram's Mini App script only; images may be data: URIs
# (the invite QR code); WeChat's JS bridge is injected by WeChat itself.
CSP = ("default-src 'self'; script-src 'self' https://telegram.org; img-src 'self' data:; "
       "style-src 'self' 'unsafe-inline'; frame-ancestors 'self' https://web.telegram.org")
