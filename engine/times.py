"""Time rules: ISO 8601 instants with an offset, and store-local midnights (SPEC §3, §8)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from .errors import Refusal

YEARS = (1970, 9000)  # instants a shop can mean


def now() -> datetime:
    """The one clock: an action given no `at` happens now (UTC). Replays and tests pass `at`,
    so the rules never read the clock themselves."""
    return datetime.now(UTC)


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
    # The calendar's ends: year 1 or 9999 with an offset does not even convert to UTC, and
    # a lock or a return window added to it would overflow (docs/reliability.md).
    try:
        year = at.astimezone(UTC).year
    except OverflowError:
        year = 0
    if not YEARS[0] <= year <= YEARS[1]:
        raise Refusal("invalid_time", "outside the years 1970-9000")
    return at


def local_midnight_after(at: datetime, days: int, tz: ZoneInfo) -> datetime:
    """00:00 store-local on the local date of `at` plus `days`."""
    day = at.astimezone(tz).date() + timedelta(days=days)
    return datetime.combine(day, time(0), tzinfo=tz)
