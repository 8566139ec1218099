"""`storefront inbox`: the chat updates stored before they were acknowledged, and the
payments that could not be recorded (docs/telegram.md, "The inbox").

Exit status 0 when nothing needs an operator; 1 when a payment is unrecorded (an inbox row
`spooled`, or a line in the charge spool) or an update was set aside as `failed`, so a
monitoring check can run it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_inbox(args: argparse.Namespace) -> int:
    from bot import charge_spool
    from bot import settings as settings_module
    from bot.cli import open_db
    from engine import inbox

    spool_path = Path(args.spool or settings_module.load().charge_spool)
    db = open_db(args.db)
    try:
        if args.prune:
            print(f"pruned {inbox.prune(db)} finished rows older than "
                  f"{inbox.KEEP.days} days")
        info = inbox.summary(db)
    finally:
        db.dispose()
    counts: dict[str, int] = info["counts"]
    order = ("pending", "done", "spooled", "failed", "expired")
    print("inbox: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in order))
    oldest = info["oldest_pending"]
    print(f"oldest pending: {oldest.isoformat() if oldest else '-'}")
    for row in info["spooled"]:
        print(f"UNRECORDED PAYMENT: inbox update {row['update_id']} from tg:{row['user_id']}"
              f" ({row['error']})")
    charges: list[dict[str, Any]] = charge_spool.pending(spool_path)
    print(f"charge spool {spool_path}: {len(charges)} waiting to be recorded")
    for c in charges:
        print(f"UNRECORDED CHARGE: {c.get('channel')} charge {c.get('charge_id')} "
              f"{c.get('amount')} {c.get('currency')} from {c.get('identity')} "
              f"(checkout {c.get('token')})")
    attention = counts.get("spooled", 0) + counts.get("failed", 0) + len(charges)
    return 1 if attention else 0


def register(sub: Any) -> None:
    from bot.cli import add_db_option

    p = sub.add_parser("inbox", help="stored chat updates, and payments not yet recorded "
                                     "(exit 1 when an operator must look)")
    add_db_option(p)
    p.add_argument("--spool", help="the charge spool file (default: STOREFRONT_CHARGE_SPOOL)")
    p.add_argument("--prune", action="store_true",
                   help="first delete finished rows older than the retention")
    p.set_defaults(func=cmd_inbox)
