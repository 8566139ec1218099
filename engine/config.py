"""Store configuration (SPEC §3, §4, §7 `config`, §8) and its validation.

Values are kept as the exact strings the operator gave; `Config` turns them into fen,
fractions and a timezone. A config change is validated whole: one bad key refuses it all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.orm import Session

from storage import queries
from storage.driver import Driver

from .errors import Refusal
from .money import AmountError, Fen, parse_fen, parse_rate

DEFAULTS: dict[str, str] = {
    "store.currency": "CNY",
    "store.timezone": "Asia/Shanghai",
    "store.settle_days": "0",
    "store.settle_from": "payment",
    "store.paused": "0",
    "queue.min_order": "100.00",
    "queue.pool_share": "0.20",
    "queue.accel_rate": "0.20",
    "points.pool_rate": "0.30",
    "points.mint_rate": "0.70",
    "points.initial_price": "1.00",
    "points.withdraw_fee": "0.10",
    "points.exit_multiple": "2",
}

# What each rule's value is, for showing it (`/settings`, `storefront config`): a rule not
# listed here is shown as its plain text.
KINDS: dict[str, str] = {
    "store.currency": "currency", "store.timezone": "timezone", "store.settle_days": "days",
    "store.paused": "flag", "queue.min_order": "money", "queue.pool_share": "rate",
    "queue.accel_rate": "rate", "points.pool_rate": "rate", "points.mint_rate": "rate",
    "points.initial_price": "money", "points.withdraw_fee": "rate",
    "points.exit_multiple": "multiple",
}

_UNIT_RATES = {"queue.pool_share", "queue.accel_rate", "points.pool_rate", "points.mint_rate",
               "points.withdraw_fee"}
SETTLE_FROM = ("payment", "receipt")  # SPEC §9: when an order's return window starts
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class InvalidSetting(Refusal):
    """`invalid_config`, naming the rule (`queue.accel_rate`) or section that broke it."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__("invalid_config", f"{key}: {detail}")
        self.key = key


def _check(key: str, value: Any) -> str:
    """One `section.key` value; raises `invalid_config` when it breaks SPEC §7's rules."""
    if key not in DEFAULTS:
        raise Refusal("invalid_config", "unknown key")
    if not isinstance(value, str):
        raise Refusal("invalid_config", "not a string")
    try:
        if key == "store.currency":
            if not _CURRENCY.fullmatch(value):
                raise Refusal("invalid_config", "currency is a 3-letter code")
        elif key == "store.timezone":
            if not re.fullmatch(r"[A-Za-z0-9_+\-/]{1,64}", value):
                raise Refusal("invalid_config", "unknown timezone")
            try:
                ZoneInfo(value)
            # OSError: `ZoneInfo("Asia")` names a folder of the tz database, not a zone
            except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
                raise Refusal("invalid_config", "unknown timezone") from exc
        elif key == "store.settle_days":
            if not re.fullmatch(r"[0-9]{1,3}", value) or int(value) > 365:
                raise Refusal("invalid_config", "settle_days is a whole number 0-365")
        elif key == "store.settle_from":
            if value not in SETTLE_FROM:
                raise Refusal("invalid_config", "settle_from is payment or receipt")
        elif key == "store.paused":
            if value not in ("0", "1"):
                raise Refusal("invalid_config", "paused is 0 or 1")
        elif key == "queue.min_order":
            if not re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,2})?", value):
                raise Refusal("invalid_config", "min_order is money with at most 2 places")
        elif key == "points.initial_price":
            parse_fen(value)
        else:
            rate = parse_rate(value)
            if key in _UNIT_RATES and rate > 1:
                raise Refusal("invalid_config", "above 1")
    except (AmountError, ValueError) as exc:
        raise Refusal("invalid_config", str(exc)) from exc
    return value


def validate_update(sections: Any) -> dict[str, str]:
    """`{"queue": {"accel_rate": "0.5"}}` → `{"queue.accel_rate": "0.5"}`, or `invalid_config`."""
    if not isinstance(sections, dict) or not sections:
        raise Refusal("invalid_config", "no sections")
    flat: dict[str, str] = {}
    for section, values in sections.items():
        if section not in ("store", "queue", "points") or not isinstance(values, dict):
            raise InvalidSetting(str(section), "unknown section")
        for key, value in values.items():
            name = f"{section}.{key}"
            try:
                flat[name] = _check(name, value)
            except Refusal as refusal:
                raise InvalidSetting(name, refusal.detail) from refusal
    return flat


@dataclass(frozen=True)
class Config:
    currency: str
    timezone: ZoneInfo
    settle_days: int
    settle_from: str
    paused: bool
    min_order: Fen
    pool_share: Fraction
    accel_rate: Fraction
    pool_rate: Fraction
    mint_rate: Fraction
    initial_price: Fen
    withdraw_fee: Fraction
    exit_multiple: Fraction
    raw: dict[str, str]

    @classmethod
    def from_values(cls, stored: dict[str, str]) -> Config:
        v = {**DEFAULTS, **stored}
        return cls(
            currency=v["store.currency"],
            timezone=ZoneInfo(v["store.timezone"]),
            settle_days=int(v["store.settle_days"]),
            settle_from=v["store.settle_from"],
            paused=v["store.paused"] == "1",
            min_order=Fen(int(parse_rate(v["queue.min_order"]) * 100)),
            pool_share=parse_rate(v["queue.pool_share"]),
            accel_rate=parse_rate(v["queue.accel_rate"]),
            pool_rate=parse_rate(v["points.pool_rate"]),
            mint_rate=parse_rate(v["points.mint_rate"]),
            initial_price=parse_fen(v["points.initial_price"]),
            withdraw_fee=parse_rate(v["points.withdraw_fee"]),
            exit_multiple=parse_rate(v["points.exit_multiple"]),
            raw=v,
        )


def stored(session: Session) -> Config:
    """The store's configuration as saved, in `session`'s transaction: the one loader."""
    session.flush()  # settings this transaction changed through the ORM (a no-op if none)
    return stored_via(Driver(session))


def stored_via(db: Driver) -> Config:
    """`stored`, for a caller already speaking to the driver."""
    return Config.from_values(queries.settings(db))
