"""`storefront report`, `storefront simulate` and `storefront export` (docs/reports.md)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from engine.errors import Refusal
from engine.money import format_fen, format_micro


def _pct(ratio: Fraction | None) -> str:
    """A ratio as a percentage with 2 places, rounded down; `n/a` when undefined."""
    if ratio is None:
        return "n/a"
    hundredths = ratio.numerator * 10_000 // ratio.denominator
    return f"{hundredths // 100}.{hundredths % 100:02d}%"


def _days(n: int | None) -> str:
    return "-" if n is None else f"{n} d"


def format_report(r: dict[str, Any]) -> str:
    """The operator's pool report as plain text, labels in English and Chinese."""
    cur = r["currency"]
    w = r["pending_withdrawals"]
    lines = [
        f"Pool report 奖金池报告  {r['at'].isoformat(timespec='seconds')}",
        "",
        "Queue 排队返现",
        f"  pool balance 奖金池余额        {format_fen(r['queue_balance'])} {cur}",
        f"  liability 待返总额            {format_fen(r['liability'])} {cur}"
        f"  ({r['waiting_entries']} waiting entries 排队中)",
        f"  coverage 覆盖率               {_pct(r['coverage'])}",
        f"  matured unpaid 已到期未付      {format_fen(r['matured_unpaid'])} {cur}"
        f"  ({r['matured_entries']} entries; longest wait "
        f"{_days(r['longest_matured_wait_days'])})",
        f"  oldest waiting 最早排队        {_days(r['oldest_waiting_days'])}",
        f"  inflow 流入  7d {format_fen(r['inflow_7d'])}  30d {format_fen(r['inflow_30d'])}"
        f"  (per day 日均 {format_fen(r['inflow_30d'] // 30)})",
        f"  of which deposited 其中商家存入 30d {format_fen(r.get('deposits_30d', 0))}"
        f"  (sales per day 销售日均 "
        f"{format_fen((r['inflow_30d'] - r.get('deposits_30d', 0)) // 30)})",
        f"  paid out 释放  7d {format_fen(r['released_7d'])}  30d "
        f"{format_fen(r['released_30d'])}",
        "",
        "Points 绿色积分",
        f"  points pool 分红池             {format_fen(r['points_balance'])} {cur}",
        f"  supply 流通量                  {format_micro(r['supply'])}",
        f"  price 价格                     {format_micro(r['price_micro'])}",
    ]
    if r.get("points_unbacked"):
        lines.append(f"  pool money no points stand for 无积分对应的分红池资金  "
                     f"{format_fen(r['points_unbacked'])} {cur} (supply 0 流通量为零)")
    history = r["price_history"]
    if len(history) > 1:
        first_at, first = history[0]
        lines.append(f"  price on {first_at.date().isoformat()} 起始价格  {format_micro(first)}")
    within = r.get("near_exit_within", Fraction(1, 10))
    lines.append(f"  near forced exit 接近出局       {r.get('near_exit_count', 0)} holders within "
                 f"{_pct(within)} of their exit price (points × price ≥ "
                 f"{_pct(1 - within)} of exit multiple × basis)")
    if r["holders_near_exit"]:
        lines.append("  closest to forced exit 最接近出局:")
        for h in r["holders_near_exit"]:
            lines.append(f"    {h['handle']}: {format_micro(h['points'])} pts worth "
                         f"{format_fen(h['value'])}, basis {format_fen(h['basis'])}, "
                         f"{_pct(h['exit_ratio'])} of exit, exits at price "
                         f"{format_micro(h['exit_price_micro'])}")
    lines += ["", f"Pending withdrawals 待审提现: {w['count']} / {format_fen(w['amount'])} {cur}"]
    if "payouts" in r:  # issue 17: money held for withdrawals, paid out per day
        p = r["payouts"]
        lines.append(f"Held for withdrawals 提现冻结: {format_fen(p['held'])} {cur} "
                     f"(being paid by WeChat Pay 微信转账中 {format_fen(p['in_transfer'])})")
        lines.append("Paid out 已打款: " + ", ".join(
            f"{day} {format_fen(amount)}" for day, amount in p["paid_out"]))
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Fraction):
        return f"{value.numerator}/{value.denominator}"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _at(text: str | None) -> datetime:
    from engine.service import now
    from engine.times import parse_at

    return now() if text is None else parse_at(text)


def cmd_report(args: argparse.Namespace) -> int:
    from bot.cli import open_db
    from engine.report import pool_report

    try:
        at = _at(args.at)
    except Refusal:
        print("storefront report: --at is an ISO 8601 time with an offset", file=sys.stderr)
        return 2
    db = open_db(args.db)
    r = pool_report(db, at, history_days=args.history_days)
    if args.json:
        json.dump(_jsonable(r), sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_report(r))
    if args.charts:
        from handlers.charts import pool_chart_png, price_chart_png

        out = Path(args.charts)
        out.mkdir(parents=True, exist_ok=True)
        for name, png in (("pool.png", pool_chart_png(db, at, args.history_days)),
                          ("price.png", price_chart_png(db, at, args.history_days))):
            (out / name).write_bytes(png)
            print(f"wrote {out / name}", file=sys.stderr)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from bot.simulate import ScenarioError, simulate

    try:
        text, paths = simulate(args.scenario, args.out, days=args.days,
                               progress=not args.quiet)
    except ScenarioError as exc:
        print(f"storefront simulate: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bot.cli import open_db
    from engine.export import stream

    db = open_db(args.db)
    if args.out in (None, "-"):
        rows = stream(db, args.what, args.format, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        try:
            with open(args.out, "wb") as fh:
                rows = stream(db, args.what, args.format, fh)
        except OSError as exc:
            print(f"storefront export: cannot write {args.out}: {exc.strerror}",
                  file=sys.stderr)
            return 2
    print(f"exported {rows} {args.what} rows", file=sys.stderr)
    return 0


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number") from None
    if not 1 <= n <= 3650:
        raise argparse.ArgumentTypeError("a whole number 1-3650")
    return n


def register(sub: Any) -> None:
    from bot.cli import add_db_option
    from engine.export import FORMATS, WHATS

    p = sub.add_parser("report", help="pool balance, liability, coverage, points (and charts)")
    add_db_option(p)
    p.add_argument("--charts", metavar="DIR", help="also write pool.png and price.png here")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--at", help="report as of this ISO 8601 time (default: now)")
    p.add_argument("--history-days", type=_positive, default=90, help="chart window (days)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("simulate", help="run a what-if scenario on the real engine")
    p.add_argument("scenario", help="a scenario YAML file (see examples/)")
    p.add_argument("--out", default=".", metavar="DIR",
                   help="folder for daily.csv, charts, summary.txt (default: .)")
    p.add_argument("--days", type=_positive, help="override the scenario's number of days")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("export", help="stream journal, entries or users as CSV or JSON Lines")
    add_db_option(p)
    p.add_argument("--what", required=True, choices=WHATS)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    p.set_defaults(func=cmd_export)
