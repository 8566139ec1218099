"""The final state as SPEC §7 prints it (`storefront replay`, `storefront state`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Entry, Pool, User

from .config import stored
from .money import format_fen, format_micro
from .points import price_of


def snapshot(session: Session) -> dict[str, Any]:
    cfg = stored(session)
    pools = {p.name: p for p in session.execute(select(Pool)).scalars()}
    users = session.execute(select(User).order_by(User.handle)).scalars().all()
    handles = {u.id: u.handle for u in users}
    entries = session.execute(select(Entry).order_by(Entry.seq)).scalars()
    tz = cfg.timezone
    return {
        "pools": {"queue": format_fen(pools["queue"].balance),
                  "points": format_fen(pools["points"].balance)},
        "points": {"supply": format_micro(pools["points"].supply),
                   "price": format_micro(
                       price_of(pools["points"], cfg.initial_price).display_micro())},
        "users": {u.handle: {"wallet": format_fen(u.wallet), "points": format_micro(u.points),
                             "basis": format_fen(u.basis),
                             "referrer": handles.get(u.referrer_id) if u.referrer_id else None}
                  for u in users},
        "entries": [{"seq": e.seq, "user": handles[e.user_id], "amount": format_fen(e.amount),
                     "released": format_fen(e.released), "status": e.status,
                     "matures_at": e.matures_at.astimezone(tz).isoformat()}
                    for e in entries],
    }
