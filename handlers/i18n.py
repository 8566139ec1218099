"""The message catalogue: every user-facing string, by message id, in Chinese and English.

`t(lang, key, **params)` fills `{name}` placeholders; parameters are inserted as plain text
(never re-read as a template), and amounts arrive already formatted by `engine.money`
through `money()` / `pts()` / `price()`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

from engine.money import (
    AmountError,
    format_fen,
    format_micro,
    format_percent,
    format_points_shown,
    format_price_shown,
    parse_rate,
)

log = logging.getLogger(__name__)
LANGS = ("zh", "en")


def read_catalogue(package: str, lang: str) -> dict[str, str]:
    """`<package>/locales/<lang>.json`: these texts, or bot.web's own."""
    text = resources.files(package).joinpath("locales", f"{lang}.json").read_text("utf-8")
    data: dict[str, str] = json.loads(text)
    return data


@cache
def catalogue(lang: str) -> dict[str, str]:
    return read_catalogue("handlers", lang)


class _Params(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def t(lang: str, key: str, /, **params: Any) -> str:
    """The message `key` in `lang` (falling back to English, then to the key itself)."""
    text = catalogue(lang if lang in LANGS else "en").get(key)
    if text is None:
        text = catalogue("en").get(key)
        if text is None:
            log.error("message %s missing from the catalogue", key)
            return key
    return text.format_map(_Params(params))


def has(key: str) -> bool:
    return all(key in catalogue(lang) for lang in LANGS)


def money(fen: int, currency: str = "CNY") -> str:
    return f"{format_fen(fen)} {currency}"


def pts(micro: int) -> str:
    """Points as shoppers read them: 2 places, rounded toward zero (`engine.money`)."""
    return format_points_shown(micro)


def price(price_micro: int, *, up: bool = False) -> str:
    """A points price (currency units × 10^6) as shoppers read it: 2 places, rounded down
    (`up` for a threshold such as the forced-exit price)."""
    return format_price_shown(price_micro, up=up)


def pts_exact(micro: int) -> str:
    """Points with all 6 places, for operators' views."""
    return format_micro(micro)


def price_exact(price_micro: int) -> str:
    """A points price with all 6 places, for operators' views."""
    return format_micro(price_micro)


def percent(rate: object) -> str:
    """A rate as a percentage (`"0.20"` → `20%`); `-` if it is not a rate."""
    try:
        return format_percent(parse_rate(str(rate)))
    except AmountError:
        return "-"


def days(lang: str, n: int) -> str:
    """`1 day`, `2 days`; Chinese has no plural (`2 天`)."""
    return t(lang, "unit.day" if n == 1 else "unit.days", n=n)


def lock_start(lang: str, lock_days: int) -> str:
    """When a lock period ends, counted from payment: "from payment" for 0 days."""
    if lock_days <= 0:
        return t(lang, "lock.from_payment")
    return t(lang, "lock.after", days=days(lang, lock_days))


def when(at: datetime | None, tz: ZoneInfo | None = None) -> str:
    """A moment in store-local time, to the minute; `-` when there is none."""
    if at is None:
        return "-"
    local = at.astimezone(tz) if tz is not None else at
    return local.strftime("%Y-%m-%d %H:%M")


def day(at: datetime | None, tz: ZoneInfo | None = None) -> str:
    if at is None:
        return "-"
    return (at.astimezone(tz) if tz is not None else at).strftime("%Y-%m-%d")
