"""The final state as SPEC §7 prints it (`storefront replay`, `storefront state`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Entry, Pool, Setting, User

from .config import Config
from .money import MICRO_PER_POINT, format_fen, format_micro


def _price_micro(pool: Pool, cfg: Config) -> int:
    """The price in currency units × 10^6, rounded down (SPEC §7)."""
    if pool.supply > 0:
        num, den = pool.balance, pool.supply
    elif pool.zero_price_num is not None and pool.zero_price_den:
        num, den = pool.zero_price_num, pool.zero_price_den
    else:
        num, den = cfg.initial_price, MICRO_PER_POINT
    return num * MICRO_PER_POINT * 10_000 // den


def snapshot(session: Session) -> dict[str, Any]:
    cfg = Config.from_values({r.key: r.value for r in session.execute(select(Setting)).scalars()})
    pools = {p.name: p for p in session.execute(select(Pool)).scalars()}
    users = session.execute(select(User).order_by(User.handle)).scalars().all()
    handles = {u.id: u.handle for u in users}
    entries = session.execute(select(Entry).order_by(Entry.seq)).scalars()
    tz = cfg.timezone
    return {
        "pools": {"queue": format_fen(pools["queue"].balance),
                  "points": format_fen(pools["points"].balance)},
        "points": {"supply": format_micro(pools["points"].supply),
                   "price": format_micro(_price_micro(pools["points"], cfg))},
        "users": {u.handle: {"wallet": format_fen(u.wallet), "points": format_micro(u.points),
                             "basis": format_fen(u.basis),
                             "referrer": handles.get(u.referrer_id) if u.referrer_id else None}
                  for u in users},
        "entries": [{"seq": e.seq, "user": handles[e.user_id], "amount": format_fen(e.amount),
                     "released": format_fen(e.released), "status": e.status,
                     "matures_at": e.matures_at.astimezone(tz).isoformat()}
                    for e in entries],
    }
