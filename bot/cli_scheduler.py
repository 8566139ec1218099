"""`storefront release` and `storefront outbox`: the scheduler's jobs, run by hand."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from engine.queue import RELEASE_PAGE

EX_TEMPFAIL = 75  # sysexits.h: "try again later" - another process holds the release lock


def register(sub: Any) -> None:
    p = sub.add_parser("release", help="settle what is due, then pay matured entries now")
    p.add_argument("--db", help="database URL (default: DATABASE_URL or var/storefront.db)")
    p.add_argument("--at", help="as of this ISO 8601 time with an offset (default: now)")
    p.add_argument("--batch", type=int, default=RELEASE_PAGE,
                   help=f"entries paid per transaction (default {RELEASE_PAGE})")
    p.set_defaults(func=cmd_release)

    o = sub.add_parser("outbox", help="show pending, sent and failed notifications")
    o.add_argument("--db", help="database URL (default: DATABASE_URL or var/storefront.db)")
    o.add_argument("--json", action="store_true", help="print the summary as JSON")
    o.add_argument("--requeue", action="append", default=[],
                   choices=["interrupted", "failed", "unreachable"],
                   help="send rows in this state again (an interrupted one may arrive twice)")
    o.add_argument("--deliver", action="store_true",
                   help="send what is due now through the configured channels, then report")
    o.set_defaults(func=cmd_outbox)


def _settings() -> Any:
    from pydantic import ValidationError

    from bot.settings import load

    try:
        return load()
    except ValidationError as exc:
        print(f"storefront: bad settings in the environment: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def cmd_release(args: argparse.Namespace) -> int:
    from bot.cli import open_db
    from engine.errors import Refusal
    from engine.jobs import run_release
    from engine.money import format_fen

    if not 1 <= args.batch <= 10_000:
        print("storefront release: --batch must be between 1 and 10000", file=sys.stderr)
        return 2
    settings = _settings()
    db = open_db(args.db)

    def progress(paid: int, amount: int) -> None:
        print(f"released {paid} entries, {format_fen(amount)} so far", file=sys.stderr,
              flush=True)

    try:
        result = run_release(db, at=args.at, progress=progress, redis_url=settings.redis_url,
                             actor="cli", batch=args.batch)
    except Refusal:
        print("storefront release: --at must be an ISO 8601 time with an offset, "
              "e.g. 2026-08-16T00:05:00+08:00", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    if result["skipped"]:
        print(f"storefront release: another release is running (held by {result['holder']});"
              " skipped", file=sys.stderr)
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return EX_TEMPFAIL
    print(f"release as of {result['at']}: settled {result['settled']} orders, paid "
          f"{result['paid']} entries, {format_fen(result['amount'])}"
          + (" (stopped at an entry the pool cannot pay in full)" if result["blocked"] else ""),
          file=sys.stderr)
    json.dump({**result, "amount": format_fen(result["amount"])}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from bot.cli import open_db
    from engine import outbox

    db = open_db(args.db)
    try:
        now = datetime.now(UTC)
        if args.requeue:
            n = outbox.requeue(db, now=now, statuses=args.requeue)
            print(f"requeued {n} notifications ({', '.join(args.requeue)})", file=sys.stderr)
        if args.deliver:
            stats = asyncio.run(_deliver(db, _settings()))
            if stats is None:
                return 2
            print("delivered: " + (", ".join(f"{n} {k}" for k, n in sorted(stats.items()))
                                   or "nothing was due"), file=sys.stderr)
        summary = outbox.summary(db, now=datetime.now(UTC))
    finally:
        db.dispose()
    if args.json:
        json.dump(summary, sys.stdout, default=_iso, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
        return 0
    counts = summary["counts"]
    print(f"outbox: {counts['pending']} pending ({summary['due_now']} due now), "
          f"{counts['sending']} sending, {counts['sent']} sent, {counts['failed']} failed, "
          f"{counts['unreachable']} unreachable, {counts['interrupted']} interrupted")
    if summary["oldest_pending"] is not None:
        print(f"oldest pending written {_iso(summary['oldest_pending'])}; "
              f"next due {_iso(summary['next_due'])}")
    if summary["problems"]:
        print("latest problems:")
        for p in summary["problems"]:
            print(f"  #{p['id']} {p['kind']} to user {p['user_id']}: {p['status']} after "
                  f"{p['attempts']} attempt(s): {p['error'] or '-'}")
    return 0


async def _deliver(db: Any, settings: Any) -> Counter[str] | None:
    from bot.senders import TelegramSender, senders_from_settings
    from handlers.notify import buttons, render
    from scheduler import Deliverer

    senders = senders_from_settings(settings)
    if not senders:
        print("storefront outbox --deliver: no channel configured (set TELEGRAM_BOT_TOKEN, or "
              "WECHAT_APP_ID and WECHAT_APP_SECRET)", file=sys.stderr)
        return None
    bot = senders["tg"].bot if isinstance(senders.get("tg"), TelegramSender) else None
    if bot is not None:
        await bot.initialize()
    try:
        return await Deliverer(db, senders, renderer=render, buttons=buttons).drain()
    finally:
        if bot is not None:
            await bot.shutdown()


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)
