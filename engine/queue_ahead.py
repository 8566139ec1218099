"""The queue as the operator's dashboard shows it: the next entries the static release will
pay (SPEC §3), in that order, each with its owner, what it still owes, its maturity, what
the pool pays before it and the estimated payout day — engine/estimate.py's walk, the same
as a buyer's `/queue` (`report.queue_view`), over the whole store instead of one user.

The walk reads the `WINDOW` earliest-maturing waiting entries (an index range, not the
whole queue). Entries outside it mature no earlier than the last one inside, so they cannot
be paid before that day: an estimate on or before it is what the walk over everything would
say (`exact`); a later one may come later still, and says so."""

from __future__ import annotations

from datetime import datetime, time
from fractions import Fraction
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Entry, User

from .estimate import ahead_of, maturity_date
from .history import OWED, WAITING, pool_inflows, pools
from .history import config as stored_config

WINDOW = 5000
DAY_SECONDS = 86400


def queue_ahead(db: Database, at: datetime, *, limit: int = 20) -> dict[str, Any]:
    """`entries`: the first `limit` in payout order (`position`, `seq`, `user`, `remaining`,
    `matures_at`, `owed_ahead`, `estimate` — a datetime or None when the walk never gets
    there — and `exact`); `waiting`: how many entries the walk read; `daily_inflow` (fen,
    the last 30 days' sales ÷ 30)."""
    return db.read(lambda s: _queue_ahead(s, at, limit))


def _queue_ahead(session: Session, at: datetime, limit: int) -> dict[str, Any]:
    from datetime import timedelta

    cfg = stored_config(session)
    tz = cfg.timezone
    balance = pools(session)["queue"].balance
    sales, _deposits = pool_inflows(session, at - timedelta(days=30), at)
    inflow = Fraction(sales, 30)
    rows = session.execute(
        select(Entry.seq, OWED, Entry.matures_at, User.handle)
        .join(User, User.id == Entry.user_id).where(WAITING)
        .order_by(Entry.matures_at, Entry.seq).limit(WINDOW)).all()
    if not rows:
        return {"entries": [], "waiting": 0, "daily_inflow": int(inflow)}
    at_tz = at.astimezone(tz)
    days = {seq: maturity_date(_aware(m, at), tz) for seq, _o, m, _h in rows}
    stands = ahead_of([(seq, owed, days[seq]) for seq, owed, _m, _h in rows], balance=balance,
                      daily_inflow=inflow, today=at_tz.date())
    last_day = max(days.values())
    full = len(rows) < WINDOW
    order = sorted(rows, key=lambda r: stands[r[0]].position)[:limit]
    entries = []
    for seq, owed, matures_at, handle in order:
        ahead = stands[seq]
        paid_on = ahead.paid_on
        entries.append({
            "position": ahead.position, "seq": seq, "user": handle, "remaining": int(owed),
            "matures_at": _aware(matures_at, at).astimezone(tz), "owed_ahead": ahead.owed_ahead,
            "estimate": datetime.combine(paid_on, time(0), tzinfo=tz) if paid_on else None,
            "exact": full or (paid_on is not None and paid_on <= last_day)})
    return {"entries": entries, "waiting": len(rows), "daily_inflow": int(inflow)}


def _aware(value: datetime, like: datetime) -> datetime:
    """SQLite gives naive UTC datetimes back."""
    return value if value.tzinfo is not None else value.replace(tzinfo=like.tzinfo)
