"""Units, parsing, formatting and rounding (SPEC §2).

Money is integer fen, points are integer micro-points, rates are exact fractions.
Money into or out of a pool rounds through ``into_pool`` (up) or ``out_of_pool`` (down), and
conversions at the points price (``points.Price``) round down, so a reader can see which way
a number leans: always in the pool's favour.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from typing import NewType

Fen = NewType("Fen", int)
Micro = NewType("Micro", int)
Rate = Fraction

FEN_PLACES = 2
MICRO_PLACES = 6
FEN_PER_UNIT = 100
MICRO_PER_POINT = 1_000_000

_PLAIN_DECIMAL = re.compile(r"^([0-9]+)(?:\.([0-9]+))?$")
# A sanity ceiling: 10^15 units is beyond any real order and keeps every product in 64 bits
# where the database needs it.
MAX_UNITS = 10**12


class AmountError(ValueError):
    """A string that is not a plain positive decimal with at most the unit's places."""


class AmountTooLarge(AmountError):
    """A well-formed amount of `MAX_UNITS` units or more: beyond any real order."""


def _parse_scaled(text: object, places: int, *, allow_zero: bool = False) -> int:
    if not isinstance(text, str):
        raise AmountError("not a string")
    m = _PLAIN_DECIMAL.fullmatch(text)
    if m is None:
        raise AmountError(f"not a plain decimal: {text!r}")
    whole, frac = m.group(1), m.group(2) or ""
    if len(frac) > places:
        raise AmountError(f"more than {places} places: {text!r}")
    if len(whole) > 13 or int(whole) >= MAX_UNITS:
        raise AmountTooLarge(f"too large: {text!r}")
    value = int(whole) * 10**places + int(frac.ljust(places, "0") or "0")
    if value == 0 and not allow_zero:
        raise AmountError("zero")
    return value


def parse_fen(text: object) -> Fen:
    """`"100.00"` → 10000. Refuses zero, negatives, exponents and a third decimal place."""
    return Fen(_parse_scaled(text, FEN_PLACES))


def parse_micro(text: object) -> Micro:
    """`"21.5"` → 21_500_000. Refuses zero, negatives, exponents and a seventh place."""
    return Micro(_parse_scaled(text, MICRO_PLACES))


def parse_rate(text: object) -> Rate:
    """An exact non-negative decimal string (`"0.20"`) as a Fraction; anything else refused."""
    if not isinstance(text, str):
        raise AmountError("not a string")
    return _parsed_rate(text)


@lru_cache(maxsize=1024)  # a settlement parses its order's frozen rates: the same few strings
def _parsed_rate(text: str) -> Rate:
    m = _PLAIN_DECIMAL.fullmatch(text)
    if m is None or len(text) > 40:
        raise AmountError(f"not a plain decimal: {text!r}")
    whole, frac = m.group(1), m.group(2) or ""
    return Fraction(int(whole + frac), 10 ** len(frac))


def format_rate(rate: Rate) -> str:
    """A rate back to its exact decimal string (rates are parsed from decimals, so it ends)."""
    places = 0
    while (10**places) % rate.denominator and places < 40:
        places += 1
    whole, frac = divmod(rate.numerator * 10**places // rate.denominator, 10**places)
    return f"{whole}.{str(frac).rjust(places, '0')}" if places else str(whole)


def _format_scaled(value: int, places: int) -> str:
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**places)
    return f"{sign}{whole}.{str(frac).rjust(places, '0')}"


def format_fen(value: int) -> str:
    """10000 → `"100.00"`."""
    return _format_scaled(value, FEN_PLACES)


def format_micro(value: int) -> str:
    """21_500_000 → `"21.500000"`."""
    return _format_scaled(value, MICRO_PLACES)


def max_amount(places: int) -> str:
    """The largest amount `_parse_scaled` accepts with `places` places: `"999999999999.99"`."""
    return _format_scaled(MAX_UNITS * 10**places - 1, places)


# -- what shoppers read -------------------------------------------------------------------
# Shoppers see points like money, 2 places, and the points price with up to 4 places (at
# least 2: `1.00`, `1.4285`), both rounded toward zero, so neither a holding nor a price is
# shown above what it is (docs/conversations.md, "Amounts"). Operators' exact views (/user,
# /pool), exports and replay keep all 6 places.
POINTS_SHOWN_PLACES = 2
PRICE_SHOWN_PLACES = 4


def _shown(value: int, places: int, *, up: bool = False, trim_to: int | None = None) -> str:
    step = 10 ** (MICRO_PLACES - places)
    whole = -(-abs(value) // step) if up else abs(value) // step
    text = _format_scaled(-whole if value < 0 else whole, places)
    if trim_to is not None:
        while len(text.rsplit(".", 1)[1]) > trim_to and text.endswith("0"):
            text = text[:-1]
    return text


def format_points_shown(value: int) -> str:
    """Micro-points for a shopper: 10_504_999 → `"10.50"` (rounded toward zero)."""
    return _shown(value, POINTS_SHOWN_PLACES)


def format_price_shown(price_micro: int, *, up: bool = False) -> str:
    """A points price (currency units × 10^6) for a shopper: 1_428_571 → `"1.4285"`,
    2_000_000 → `"2.00"`; `up` for a threshold the price must reach (a forced exit), which
    is never shown below itself."""
    return _shown(price_micro, PRICE_SHOWN_PLACES, up=up, trim_to=FEN_PLACES)


def format_percent(rate: Rate) -> str:
    """An exact rate as a percentage: 0.20 → `"20%"`, 0.125 → `"12.5%"` (rates are parsed
    from decimals, so the digits end)."""
    return format_rate(Fraction(rate) * 100) + "%"


def floor_div(num: int, den: int) -> int:
    return num // den


def ceil_div(num: int, den: int) -> int:
    return -((-num) // den)


# An int is a fraction too (`numerator`, `denominator` 1): neither needs converting first.
def into_pool(amount: Fraction | int) -> int:
    """Money paid into a pool rounds up to the fen (SPEC §2)."""
    return ceil_div(amount.numerator, amount.denominator)


def out_of_pool(amount: Fraction | int) -> int:
    """Money or points paid out of a pool, and fees' complements, round down (SPEC §2)."""
    return floor_div(amount.numerator, amount.denominator)
