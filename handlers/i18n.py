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

from engine.money import format_fen, format_micro

log = logging.getLogger(__name__)
LANGS = ("zh", "en")


@cache
def catalogue(lang: str) -> dict[str, str]:
    text = resources.files("handlers").joinpath("locales", f"{lang}.json").read_text("utf-8")
    data: dict[str, str] = json.loads(text)
    return data


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
    return format_micro(micro)


def price(price_micro: int) -> str:
    """A points price given in currency units × 10^6 (6 places)."""
    return format_micro(price_micro)


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
