"""`storefront verify` over a journal of a million transactions written in the engine's own
shape (joins, then each order's `purchase` and `settle`, releases, forced exits, points sold,
withdrawals), run as the command a user runs: a fresh process, wall-clock time from its start
to its exit, transactions per second.

`python -m benchmarks.verify --child URL` is that process: it runs `bot.cli.main(["verify",
"--db", URL])` and then prints its exit status and peak memory as one JSON line. It imports
nothing of the benchmarks' own beyond benchmarks/common.py (the shop's preparation is imported
only where the shop is built), so its time is the command's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import TYPE_CHECKING

from .common import Context, Row, Stats, peak_rss_mb, run_child

if TYPE_CHECKING:
    from .fixtures import Built

OK_LINE = re.compile(r"journal OK: (\d+) transactions")


def verify_shop(ctx: Context) -> tuple[Row, Built]:
    """The verify row, and the shop it reads (1M journal transactions; 30k with --quick)."""
    from .fixtures import Plan, build_history  # not in the measured child (`child`)

    row = Row("verify", "`storefront verify` over 1M journal transactions", "transactions/s",
              (">=", 50_000))
    size = 30_000 if ctx.quick else 1_000_000
    built = build_history(ctx.scratch("verify") / "shop.db",
                          Plan(users=size // 20, txns=size, split_settle=True, seed=4))
    if ctx.quick:
        row.title = f"`storefront verify` over {built.txns:,} journal transactions (--quick)"
    return row, built


def verify_rate(ctx: Context) -> Row:
    row, built = verify_shop(ctx)
    url = f"sqlite:///{built.path}"
    rates, rss, txns = [], [], 0
    for _ in range(ctx.runs(5)):
        start = time.perf_counter()
        out = run_child("benchmarks.verify", "--child", url, timeout=900)
        elapsed = time.perf_counter() - start
        found = OK_LINE.search(out["stdout"])
        if out["status"] != 0 or found is None:
            raise RuntimeError(f"verify did not pass on the prepared shop: {out['stdout'][:500]}")
        txns = int(found.group(1))
        rates.append(txns / elapsed)
        rss.append(out["peak_rss_mb"])
    row.measured = Stats(rates)
    row.facts = {"journal_txns": txns, "entries": built.entries, "users": built.users,
                 "orders": built.orders, "prepared_in_s": round(built.seconds, 1),
                 "postings_per_txn": _postings_per_txn(built.path),
                 "peak_rss_mb": round(max(rss), 1), "timed": "process start to exit"}
    return row


def _postings_per_txn(path: object) -> float:
    import sqlite3

    conn = sqlite3.connect(str(path))
    try:
        postings = conn.execute("SELECT max(id) FROM postings").fetchone()[0] or 0
        txns = conn.execute("SELECT last_txn FROM head").fetchone()[0] or 1
    finally:
        conn.close()
    return round(postings / txns, 2)


def child(url: str) -> None:
    import contextlib
    import io

    from bot.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        status = main(["verify", "--db", url])
    print(json.dumps({"status": status, "stdout": buf.getvalue(),
                      "peak_rss_mb": round(peak_rss_mb(), 1)}))


ROWS = {"verify": verify_rate}

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    child(parser.parse_args().child)
    sys.exit(0)
