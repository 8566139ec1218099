"""The scheduler's clock: every time its jobs use comes from a `Clock` (aware datetimes), so
tests can run the real APScheduler on a controlled clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)
