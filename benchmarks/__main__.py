"""`python -m benchmarks [--quick] [--only ROW[,ROW…]] [--out FILE]` (what `make bench` runs).

Runs the rows in a fixed order (the shop with a million entries is built once and used by the
queue-latency, verify and release rows, the release last since it pays that queue), prints the
table (Markdown, as docs/perf.md shows it) and writes one JSON object per row to
`var/bench.json`. Exit status 0 when every row ran (missed targets are results, reported in
the table), 1 when a row could not run.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import (
    baselines,
    latency,
    purchases,
    release,
    scale,
    telegram_me,
    two_process,
    verify,
    web_catalogue,
)
from .bare import PG_URL, pg_available
from .common import Context, Row
from .report import machine, table, write_json

ROWS: dict[str, Callable[[Context], Row]] = {
    **purchases.ROWS, **telegram_me.ROWS, "latency-holders": latency.holders,
    "latency-queue": latency.queue_size, **verify.ROWS, **release.ROWS,
    **web_catalogue.ROWS,
    **baselines.ROWS, **scale.ROWS, **two_process.ROWS,  # issue 19 (baselines in place)
}
FAMILIES = {"purchases": [*purchases.ROWS, *scale.ROWS], "latency": list(latency.ROWS)}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: small fixtures, short and few runs")
    p.add_argument("--only", action="append", default=[], metavar="ROW",
                   help="run only these rows (comma-separated, repeatable): "
                        + ", ".join([*ROWS, *FAMILIES]))
    p.add_argument("--out", type=Path, default=Path("var/bench.json"),
                   help="where to write the rows (default: var/bench.json)")
    p.add_argument("--work", type=Path, default=None,
                   help="scratch directory for the databases (default: var/bench-work; "
                        "removed afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the scratch databases")
    return p.parse_args(argv)


def selected(only: list[str]) -> list[str]:
    if not only:
        return list(ROWS)
    wanted: list[str] = []
    for item in ",".join(only).split(","):
        name = item.strip()
        if not name:
            continue
        names = FAMILIES.get(name, [name])
        for n in names:
            if n not in ROWS:
                raise SystemExit(f"unknown row {n!r}; rows: {', '.join(ROWS)}")
            wanted.append(n)
    return [n for n in ROWS if n in wanted]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    names = selected(args.only)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = (args.work or Path("var/bench-work")).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pg_problem = pg_available() if any(n.startswith("purchase-pg") for n in names) else None
    ctx = Context(quick=args.quick, work=work, pg_problem=pg_problem)
    facts = machine(work, None if pg_problem else _pg_version())
    facts["mode"] = "quick" if args.quick else "full"
    print(f"benchmarks ({facts['mode']}): {', '.join(names)}", flush=True)
    print(f"machine: {facts['nproc']} × {facts['cpu']}, {facts['disk']}; Python "
          f"{facts['python']}, SQLite {facts['sqlite']}, PostgreSQL {facts['postgresql']}",
          flush=True)
    rows: list[Row] = []
    started = time.perf_counter()
    failed = False
    try:
        for name in names:
            t0 = time.perf_counter()
            print(f"- {name} …", end=" ", flush=True)
            try:
                row = ROWS[name](ctx)
            except Exception as exc:  # noqa: BLE001 - one broken row must not hide the others
                failed = True
                row = Row(name, name, "", (">=", 0), status="error",
                          notes=[f"{type(exc).__name__}: {exc}"])
                traceback.print_exc()
            row.seconds = time.perf_counter() - t0
            rows.append(row)
            print(f"{row.status}, {row.seconds:.0f} s", flush=True)
            write_json(args.out, rows, facts)  # what is done is kept if a later row hangs
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    facts["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, rows, facts)
    print()
    print(table(rows))
    print(f"\n{len(rows)} rows in {facts['total_seconds']:.0f} s; written to {args.out}")
    return 1 if failed else 0


def _pg_version() -> str | None:
    import psycopg

    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else None
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    raise SystemExit(main())
