"""The release-date estimate for a waiting queue entry (docs/reports.md, "The estimate").

A pure function of a few numbers, so it can be checked by hand:

- `daily_inflow` is the queue pool's average daily inflow over the last 30 days
  (contributions + deposits: the positive postings to `pool:queue`), an exact Fraction of fen;
- `needed` is what the pool must hold for the entry to be paid under strict FIFO: the sum
  still owed to the waiting entries ahead of it (`owed_ahead`) plus its own remainder;
- the entry is estimated to be paid at 00:00 store-local on the first local date `D` with
  `D ≥ maturity date` and `balance + (D − today) × daily_inflow ≥ needed`.

The estimate ignores future new entries and accelerations. Accelerations paid to entries
ahead of it (or to itself) make the real date earlier; accelerations to entries behind it,
and new entries with a shorter lock that mature first, make it later. When the inflow is
zero and the pool is short, or the date lies beyond `HORIZON_DAYS`, the honest answer is
`None`: "not reached at the current inflow". It never invents a date.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

from .money import ceil_div

# Beyond a century the arithmetic still works but the promise means nothing.
HORIZON_DAYS = 36_500


def maturity_date(matures_at: datetime, tz: ZoneInfo) -> date:
    """The first store-local date whose releases may pay an entry maturing at `matures_at`.

    `matures_at` is a store-local midnight (SPEC §3); if the store's timezone changed since,
    an instant inside a day counts from the following day."""
    local = matures_at.astimezone(tz)
    day = local.date()
    return day if local.time() == time(0) else day + timedelta(days=1)


def days_to_fund(balance: int, needed: int, daily_inflow: Fraction) -> int | None:
    """Whole days until `balance + days × daily_inflow ≥ needed`, or None if never (or beyond
    the horizon)."""
    shortfall = needed - balance
    if shortfall <= 0:
        return 0
    if daily_inflow <= 0:
        return None
    days = ceil_div(shortfall * daily_inflow.denominator, daily_inflow.numerator)
    return days if days <= HORIZON_DAYS else None


def release_estimate(*, balance: int, needed: int, daily_inflow: Fraction, matures_at: datetime,
                     today: date, tz: ZoneInfo) -> datetime | None:
    """00:00 store-local on the estimated release date, or None ("not reached").

    A result at or before now means "payable at the next release run"."""
    wait = days_to_fund(balance, needed, daily_inflow)
    if wait is None:
        return None
    day = max(today + timedelta(days=wait), maturity_date(matures_at, tz))
    return datetime.combine(day, time(0), tzinfo=tz)
