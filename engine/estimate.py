"""The release-date estimate for a waiting queue entry (docs/reports.md, "The estimate").

Pure functions of a few numbers, so they can be checked by hand:

- `daily_inflow` is the queue pool's average daily inflow from sales over the last 30 days
  (deposits are one-offs, not a rate), an exact Fraction of fen;
- `owed_ahead` is what the static release pays before the entry (`ahead_of`): it walks the
  daily releases forward with that inflow, paying matured entries in `seq` order and stopping
  at the first the pool cannot pay, as engine/queue.py does. So an entry earlier in `seq`
  counts only if it matures by the day the entry is paid, and an entry later in `seq` counts
  if it matures first and the pool pays it before the entry matures;
- `needed` = `owed_ahead` + the entry's own remainder;
- the entry is estimated to be paid at 00:00 store-local on the first local date `D` with
  `D ≥ maturity date` and `balance + (D − today) × daily_inflow ≥ needed` (the walk's day).

The estimate ignores future new entries and accelerations. Accelerations paid to entries
ahead of it (or to itself) make the real date earlier; accelerations to entries behind it,
and new entries with a shorter lock that mature first, make it later. When the inflow is
zero and the pool is short, or the date lies beyond `HORIZON_DAYS`, the honest answer is
`None`: "not reached at the current inflow". It never invents a date.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Ahead:
    """Where one entry stands in the release order the walk found."""

    position: int  # 1 + the entries paid before it
    owed_ahead: int  # fen the pool pays before it
    paid_on: date | None  # the walk's release day for it; None: not reached


def ahead_of(waiting: Iterable[tuple[int, int, date]], *, balance: int,
             daily_inflow: Fraction, today: date,
             wanted: Collection[int] | None = None) -> dict[int, Ahead]:
    """Walk the static releases forward from `today`, one a day at 00:00, for the waiting
    entries `(seq, remaining, maturity date)`, with the pool at `balance` growing by
    `daily_inflow` a day and nothing else changing (no new entries, no accelerations).

    Each day's release pays the matured entries in `seq` order, each in full, and stops at the
    first the pool cannot pay (SPEC §3); entries not yet matured neither block nor get paid.
    Returns, for every seq (with `wanted`, for those at least: the walk then stops once they
    are all paid), what is paid before it. An entry the walk never reaches (no inflow, or beyond
    `HORIZON_DAYS`) is behind everything the walk paid and every unpaid entry earlier in
    `seq`.

    Event-driven, so it costs O(n log n) whatever the dates: between two maturity dates the
    only thing that changes is the pool, and the next payment day is computed, not stepped."""
    entries = sorted(waiting, key=lambda e: (e[2], e[0]))
    remaining = {seq: rem for seq, rem, _day in entries}
    out: dict[int, Ahead] = {}
    matured: list[int] = []  # heap of seqs
    # Integers only: money scaled by the inflow's denominator (r = per ÷ scale fen a day).
    per, scale = daily_inflow.numerator, daily_inflow.denominator
    i, day, paid, count = 0, today, 0, 0
    horizon = today + timedelta(days=HORIZON_DAYS)
    want = None if wanted is None else set(wanted) & remaining.keys()
    left = len(remaining) if want is None else len(want)
    while day <= horizon and left > 0:
        while i < len(entries) and entries[i][2] <= day:
            heapq.heappush(matured, entries[i][0])
            i += 1
        funds = (balance - paid) * scale + (day - today).days * per  # × scale
        while matured and remaining[matured[0]] * scale <= funds:
            seq = heapq.heappop(matured)
            out[seq] = Ahead(count + 1, paid, day)
            left -= want is None or seq in want
            paid += remaining[seq]
            funds -= remaining[seq] * scale
            count += 1
        upcoming = entries[i][2] if i < len(entries) else None
        if matured and per > 0:
            short = remaining[matured[0]] * scale - funds
            funded = day + timedelta(days=ceil_div(short, per))
            day = min(funded, upcoming) if upcoming is not None else funded
        elif upcoming is not None:
            day = upcoming
        else:
            break
    # Not reached: behind everything paid and every unpaid entry before it in `seq`.
    owed, n = paid, count
    for seq in sorted(seq for seq in remaining if seq not in out):
        if want is None or seq in want:
            out[seq] = Ahead(n + 1, owed, None)
        owed += remaining[seq]
        n += 1
    return out
