"""Shared set-up for the release, scheduler and outbox tests: a shop with matured entries."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select

from engine import service
from engine.state import snapshot
from storage.db import Database
from storage.models import Entry, Head, JournalTxn, Outbox, User
from tests.helpers import seed_shop

ROOT = Path(__file__).resolve().parent.parent
SHANGHAI = ZoneInfo("Asia/Shanghai")
BOUGHT = datetime(2026, 8, 1, 10, 0, tzinfo=SHANGHAI)  # lock 15 days: matures 16 Aug 00:00
MATURED = datetime(2026, 8, 16, 0, 5, tzinfo=SHANGHAI)


def make_shop(db: Database, *, entries: int, users: int = 5, pool: str = "1000000.00",
              settle_days: int = 0, late: int = 0) -> None:
    """`entries` orders of 100.00 by `users` users, matured at MATURED; `late` more that
    mature a day later. With `settle_days` > 0 the orders are still pending at MATURED."""
    handles = [f"u{u}" for u in range(users)]
    seed_shop(db, config={"store": {"settle_days": str(settle_days)},
                          "queue": {"pool_share": "0.20"}},
              products=[("tea", "100.00", "0", 15, "queue"), ("wine", "100.00", "0", 16, "queue")],
              users=handles, langs={h: "en" if u % 2 else "zh" for u, h in enumerate(handles)},
              queue_seed=pool, at=BOUGHT)
    for n in range(entries + late):
        service.buy(db, user=f"u{n % users}", sku="tea" if n < entries else "wine",
                    at=BOUGHT + timedelta(seconds=n), order=f"o{n}")


def bulk_entries(db: Database, n: int, *, users: int = 20) -> None:
    """`n` matured entries of 100.00 written straight into the tables (for volume tests
    of the release itself: no orders, no journal history before it)."""
    seed_shop(db, config={"queue": {"pool_share": "0.20"}}, products=(),
              users=[f"u{u}" for u in range(users)], queue_seed=f"{n * 100}.00", at=BOUGHT)
    matures = datetime(2026, 8, 16, tzinfo=SHANGHAI)

    def work(session: Any) -> None:
        ids = session.execute(select(User.id).order_by(User.id)).scalars().all()
        session.execute(insert(Entry), [
            {"seq": seq, "user_id": ids[seq % len(ids)], "order_no": seq, "amount": 10000,
             "released": 0, "status": "waiting", "matures_at": matures, "created_at": BOUGHT}
            for seq in range(1, n + 1)])
        session.get(Head, 1).last_entry_seq = n

    db.run(work)


def fingerprint(db: Database) -> dict[str, Any]:
    """Everything a release decides: state, the journal's tip, every outbox row's key."""

    def work(session: Any) -> dict[str, Any]:
        head = session.get(Head, 1)
        return {
            "state": snapshot(session),
            "journal": (head.last_txn, head.last_hash),
            "release_txns": session.execute(select(func.count()).where(
                JournalTxn.kind == "release")).scalar_one(),
            "outbox": sorted(session.execute(select(Outbox.key, Outbox.kind, Outbox.params))
                             .all()),
        }

    return db.read(work)


def paid_entries(db: Database) -> list[tuple[int, int, str]]:
    return db.read(lambda s: s.execute(select(Entry.seq, Entry.released, Entry.status)
                                       .order_by(Entry.seq)).all())


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`storefront ARGS` (`bot.cli.main`) in a process of its own, as an operator would run
    it: forked from the session's fork server (tests/storefront_zygote.py), which did the
    imports once; its environment is its own (`STOREFRONT_FAULT` armed from it, as at
    import), and a fault's SIGKILL ends it as it would a fresh interpreter."""
    from tests.storefront_zygote import run_cli

    full_env = {k: v for k, v in os.environ.items()
                if k not in ("STOREFRONT_FAULT", "REDIS_URL", "DATABASE_URL")}
    full_env.update(env or {})
    return run_cli(list(args), env=full_env, cwd=ROOT, timeout=timeout)
