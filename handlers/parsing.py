"""Arguments and button data, parsed strictly: anything malformed becomes `BadInput`, which
the dispatcher answers with a short polite message and the command's usage line.

Amounts follow SPEC §2 (plain decimals, 2 places for money, 6 for points, never zero or
negative) through `engine.money`; nothing here ever converts money to a float.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

from engine.money import (
    FEN_PLACES,
    MICRO_PLACES,
    AmountError,
    AmountTooLarge,
    max_amount,
    parse_fen,
    parse_micro,
)

MAX_TEXT = 4096
MAX_ECHO = 48
MAX_QTY = 10_000
SKU = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FIELD = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CALLBACK_VERSION = "v1"
MAX_CALLBACK_BYTES = 64


class BadInput(Exception):
    """Input that cannot mean anything: `key` names the message shown, `params` fill it."""

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


def is_clean(text: str) -> bool:
    """Text a person could have typed: not oversized, no NULs or other control characters."""
    if len(text) > MAX_TEXT:
        return False
    return all(ch in "\n\r\t" or unicodedata.category(ch) not in ("Cc", "Cs", "Co")
               for ch in text)


# Full-width ASCII (U+FF01–U+FF5E) and the ideographic space, as Chinese input methods type
# them; nothing else is folded (NFKC would also turn "²" into "2").
_FULL_WIDTH = {0xFF01 + i: 0x21 + i for i in range(0x5E)} | {0x3000: 0x20}


def normalise(text: str) -> str:
    """Full-width digits, letters and spaces (Chinese input methods) become plain ASCII."""
    return text.translate(_FULL_WIDTH)


# Characters that reorder or hide the text around them (bidirectional overrides, isolates,
# marks, zero-width spaces): a name must not make "earned 1.00" read "00.1 denrae".
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                    "\u2060\u2066\u2067\u2068\u2069\ufeff"))


def visible(text: str) -> str:
    """User text kept as written (lines too), without what reorders or hides it."""
    return text.translate(_INVISIBLE)


def echo(text: object, limit: int = MAX_ECHO) -> str:
    """User text safe to repeat back: one line, capped, nothing that reorders or hides."""
    s = " ".join(str(text).translate(_INVISIBLE).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _amount(text: str, parse: Callable[[str], int], places: int, bad: str) -> int:
    try:
        return parse(normalise(text))
    except AmountTooLarge:
        raise BadInput("bad.amount_too_large", value=echo(text),
                       max=max_amount(places)) from None
    except AmountError:
        raise BadInput(bad, value=echo(text)) from None


def money(text: str) -> int:
    return _amount(text, parse_fen, FEN_PLACES, "bad.money")


def points(text: str) -> int:
    return _amount(text, parse_micro, MICRO_PLACES, "bad.points")


def qty(text: str) -> int:
    t = normalise(text)
    if not t.isascii() or not t.isdigit() or len(t) > 5 or not 1 <= int(t) <= MAX_QTY:
        raise BadInput("bad.qty", value=echo(text))
    return int(t)


def whole(text: str, key: str = "bad.number", *, low: int = 0, high: int = 10**12) -> int:
    t = normalise(text)
    if not t.isascii() or not t.isdigit() or len(t) > 13 or not low <= int(t) <= high:
        raise BadInput(key, value=echo(text))
    return int(t)


def sku(text: str) -> str:
    t = normalise(text)
    if not SKU.match(t):
        raise BadInput("bad.sku", value=echo(text))
    return t


def callback(kind: str, *fields: object) -> str | None:
    """Button data `kind:v1:field:…`, or None when it would not fit Telegram's 64 bytes."""
    data = ":".join([kind, CALLBACK_VERSION, *map(str, fields)])
    return data if len(data.encode()) <= MAX_CALLBACK_BYTES else None


def parse_callback(data: str) -> tuple[str, tuple[str, ...]]:
    """`buy:v1:TEA:2` → (`buy`, (`TEA`, `2`)). Never trusted: each part is checked here and
    again by its handler; an old version or anything malformed is `bad.button`."""
    if not isinstance(data, str) or len(data.encode()) > MAX_CALLBACK_BYTES:
        raise BadInput("bad.button")
    parts = data.split(":")
    if len(parts) < 2 or parts[1] != CALLBACK_VERSION or not all(FIELD.match(p) for p in parts):
        raise BadInput("bad.button")
    return parts[0], tuple(parts[2:])
