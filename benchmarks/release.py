"""The static release (SPEC §3): matured entries paid per second, and peak memory.

Every run is a fresh process on a fresh copy of a shop whose ~100k waiting entries have all
matured; the operator first deposits what they are owed (an engine deposit, untimed), then
`engine.jobs.run_release` — the lock, the settlement, the paged payments, the run record, as
the scheduler runs it — is timed. Peak memory is the child's own peak resident set
(getrusage), on the shop with a million entries.

A run stops at a time cap after a committed page (the release is built to be stopped between
pages and resumed), so a slow release cannot hold the whole benchmark; the rate is then the
entries paid in the capped time, and the row says how many of the matured entries that was.

`python -m benchmarks.release --child URL --at TIME --cap SECONDS` is one such process; it
prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from .common import Context, Row, Stats, current_rss_mb, peak_rss_mb, run_child
from .fixtures import Plan, build_history, sql_time
from .latency import ENTRIES_PER_USER, big_shop

MEMORY_LIMIT_MB = 200


def release_rate(ctx: Context, beside: Callable[[int], None] | None = None) -> Row:
    """The row. `beside(i)`, if given, runs next to the i-th measured run — before it on even
    runs, after it on odd ones — so a same-run baseline meets the same load (issue 19)."""
    row = Row("release", "static release, entries/s over 100k matured entries",
              "entries/s", (">=", 20_000))
    n = 3_200 if ctx.quick else 106_000  # ~94% are still waiting when the history ends
    cap = 3.0 if ctx.quick else 20.0
    template = build_history(ctx.scratch("release") / "template.db",
                             Plan(users=n // ENTRIES_PER_USER, entries=n, seed=3))
    at = template.end + timedelta(days=31)  # every lock (at most 30 days) has run out
    rates, runs = [], []
    for i in range(ctx.runs(3)):
        if beside is not None and i % 2 == 0:
            beside(i)
        copy = ctx.scratch("release") / f"run{i}.db"
        shutil.copyfile(template.path, copy)
        out = run_child("benchmarks.release", "--child", f"sqlite:///{copy}",
                        "--at", at.isoformat(), "--cap", str(cap), timeout=600)
        copy.unlink()
        rates.append(out["paid"] / out["seconds"])
        runs.append(out)
        if beside is not None and i % 2 == 1:
            beside(i)
    row.measured = Stats(rates)
    if ctx.quick:
        row.title = f"static release, entries/s over {runs[0]['matured']:,} matured entries " \
            "(--quick)"
    big = big_shop(ctx)
    memory = run_child("benchmarks.release", "--child", f"sqlite:///{big.path}",
                       "--at", (big.end + timedelta(days=31)).isoformat(),
                       "--cap", str(cap * 1.5), timeout=900)
    ctx.cache.pop("big")  # its queue is paid now: no later row may use it
    row.extra_checks.append((f"peak MB at {big.entries:,} entries", memory["peak_rss_mb"], "<=",
                             MEMORY_LIMIT_MB))
    row.facts = {
        "matured_entries": runs[0]["matured"], "cap_seconds": cap,
        "capped_runs": sum(1 for r in runs if r["capped"]),
        "paid_per_run": [r["paid"] for r in runs],
        "peak_rss_mb_100k": max(r["peak_rss_mb"] for r in runs),
        "memory_run": {k: memory[k] for k in ("matured", "paid", "seconds", "capped",
                                              "peak_rss_mb", "rss_first_page_mb",
                                              "rss_last_page_mb")},
        "runner": runs[0]["runner"],
    }
    if any(r["capped"] for r in runs):
        row.notes.append(f"runs stopped at the {cap:g} s cap after a committed page; the rate "
                         "is over the entries paid in that time")
    return row


def _matured(path: str, at: datetime) -> tuple[int, int, int]:
    """(matured waiting entries, what they are owed, the queue pool) — read before timing."""
    conn = sqlite3.connect(path)
    try:
        count, owed = conn.execute(
            "SELECT count(*), coalesce(sum(amount - released), 0) FROM entries "
            "WHERE status = 'waiting' AND matures_at <= ?", (sql_time(at),)).fetchone()
        pool = conn.execute("SELECT balance FROM pools WHERE name = 'queue'").fetchone()[0]
    finally:
        conn.close()
    return count, owed, pool


class Capped(Exception):
    """Raised from the progress callback after a committed page, once the cap has passed."""


def child(url: str, at_text: str, cap: float) -> dict[str, Any]:
    from engine import service
    from engine.money import format_fen
    from storage.db import Database

    at = datetime.fromisoformat(at_text)
    matured, owed, pool = _matured(url.removeprefix("sqlite:///"), at)
    db = Database(url)
    if owed > pool:
        service.deposit(db, pool="queue", amount=format_fen(owed - pool), at=at,
                        key="bench:release:seed")
    try:
        from engine.jobs import run_release

        def run(progress: Any) -> dict[str, Any]:
            return run_release(db, at=at, progress=progress)
        runner = "engine.jobs.run_release"
    except ImportError:
        def run(progress: Any) -> dict[str, Any]:
            return service.release(db, at=at, progress=progress)
        runner = "engine.service.release"
    pages: list[tuple[int, float]] = []
    start = time.perf_counter()

    def progress(paid: int, _amount: int) -> None:
        pages.append((paid, current_rss_mb()))
        if time.perf_counter() - start > cap:
            raise Capped

    capped = False
    try:
        result = run(progress)
        if result.get("skipped"):
            raise RuntimeError(f"the release lock is held by {result.get('holder')}")
        paid = int(result["paid"])
    except Capped:
        capped = True
        paid = pages[-1][0]
    seconds = time.perf_counter() - start
    db.dispose()
    return {"matured": matured, "paid": paid, "seconds": seconds,
            "capped": capped, "pages": len(pages), "runner": runner,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_first_page_mb": round(pages[0][1], 1) if pages else None,
            "rss_last_page_mb": round(pages[-1][1], 1) if pages else None}


ROWS = {"release": release_rate}

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    parser.add_argument("--at", required=True)
    parser.add_argument("--cap", type=float, required=True)
    args = parser.parse_args()
    print(json.dumps(child(args.child, args.at, args.cap)))
