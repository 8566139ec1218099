"""Time rules: ISO 8601 instants with an offset, and store-local midnights (SPEC §3, §8)."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from .errors import Refusal


def parse_at(value: object) -> datetime:
    """An aware datetime, or `invalid_time` (a naive time has no meaning for a shop)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise Refusal("invalid_time", "no offset")
        return value
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        raise Refusal("invalid_time")
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise Refusal("invalid_time", value) from exc
    if at.tzinfo is None:
        raise Refusal("invalid_time", "no offset")
    return at


def local_midnight_after(at: datetime, days: int, tz: ZoneInfo) -> datetime:
    """00:00 store-local on the local date of `at` plus `days`."""
    day = at.astimezone(tz).date() + timedelta(days=days)
    return datetime.combine(day, time(0), tzinfo=tz)
