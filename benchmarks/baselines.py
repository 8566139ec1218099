"""Issue 19: same-run baselines for the rows that were absolute (release, verify, `/me`).

An absolute figure moves with the machine (the same code read 75,462 and 44,191 verify
transactions/s ten days apart), so each of these rows now also measures, in the same run and
with the same fixtures, what its work costs with no engine, and is judged on the ratio
(target ≥ 0.7); the absolute target is kept beside it (`facts.absolute_target`,
`facts.absolute_met`), as it holds only on the machine docs/perf.md names.

- release: the bare statements of the same pages (entries, wallets, postings, the run
  record) — captured from a release of the same shop and replayed on a copy of it, one
  transaction and one durable commit per page as the release commits them, no reads, no
  checks (benchmarks/floor.py) — entries paid per second of replay;
- verify: a fresh process reading the same pages of the journal and its postings and
  hashing each transaction's stored bytes with hashlib and summing its amounts, no checks,
  timed from its start to its exit like `storefront verify` (benchmarks/verify_floor.py:
  the standard library only, so none of the engine's imports are in the baseline's time);
- `/me`: the stand-in answering the same calls with no bot: a bare HTTP client long-polls the
  same stand-in process for the same updates and sends each chat one answer of the same
  length (16 at once, as the bot's inbox does), timed the same way.

`verify`'s and the release's runs alternate with their baselines' (benchmarks/common.py
`paired`; the release through `release_rate`'s `beside`); the `/me` row runs first (its own
code, unchanged) and its baseline runs follow, as many; the ratio is taken run by run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from . import release, telegram_me, verify
from .common import Context, Row, Stats, paired, run_child
from .verify_floor import verify_child

TARGET = 0.7


def _judge(row: Row, base: list[float], what: str, absolute: tuple[str, float]) -> Row:
    """Row `row` (its measured runs done) with `base` as its same-run baseline."""
    if row.status != "ok" or row.measured is None:
        return row
    runs = row.measured.runs
    row.baseline = Stats(base)
    row.baseline_what = what
    row.ratios = Stats([m / b for m, b in zip(runs, base, strict=True)])
    op, limit = absolute
    row.facts["absolute_target"] = f"{op} {limit:,.0f} {row.unit} (the machine docs/perf.md names)"
    row.facts["absolute_met"] = (row.measured.median >= limit if op == ">="
                                 else row.measured.median <= limit)
    row.target = ("ratio>=", TARGET)
    return row


# -- release --------------------------------------------------------------------------------

def release_row(ctx: Context) -> Row:
    """The release row, each of its runs paired with a baseline run (before it on even runs,
    after it on odd ones, as `paired` alternates), so both meet the same load."""
    cap = 3.0 if ctx.quick else 20.0
    base: list[float] = []
    floor_runs: list[dict[str, Any]] = []

    def baseline(i: int) -> None:
        template = ctx.scratch("release") / "template.db"
        work = ctx.scratch("release-floor")
        copy = work / f"run{i}.db"
        shutil.copyfile(template, copy)
        out = run_child("benchmarks.baselines", "release", str(copy),
                        _release_at(template).isoformat(), str(cap), timeout=900)
        for p in work.glob(f"run{i}*"):
            p.unlink()
        base.append(out["paid"] / out["replay_seconds"])
        floor_runs.append(out)

    row = release.release_rate(ctx, beside=baseline)
    row.facts["floor_runs"] = floor_runs
    row.facts["interleaved"] = True
    return _judge(row, base, "the same release's write statements (entries, wallets, "
                  "postings, run record) replayed with no engine on a copy of the shop, one "
                  "durable commit per page (benchmarks/floor.py); runs interleaved with the "
                  "release's", (">=", 20_000))


def _release_at(path: Path) -> datetime:
    conn = sqlite3.connect(path)
    try:
        last = conn.execute("SELECT max(at) FROM journal").fetchone()[0]
    finally:
        conn.close()
    at = datetime.fromisoformat(str(last))
    return (at if at.tzinfo else at.replace(tzinfo=UTC)) + timedelta(days=31)


def release_child(path: str, at_text: str, cap: float) -> dict[str, Any]:
    """Deposit (as the measured child does), keep a copy, release with every write captured
    (untimed), then replay the captured transactions on the copy (timed)."""
    from engine import service
    from engine.money import format_fen
    from storage.db import Database

    from .floor import SQLiteFloor, Writes, sqlite_copy

    at = datetime.fromisoformat(at_text)
    url = f"sqlite:///{path}"
    _matured, owed, pool = release._matured(path, at)
    db = Database(url)
    if owed > pool:
        service.deposit(db, pool="queue", amount=format_fen(owed - pool), at=at,
                        key="bench:release:seed")
    db.dispose()
    replica = sqlite_copy(Path(path), Path(f"{path}.floor"))
    db = Database(url)
    writes = Writes(db)
    out = _release(db, at, cap)
    txns = writes.take()
    writes.close()
    db.dispose()
    floor = SQLiteFloor(replica)
    try:
        seconds = floor.replay(txns)
    finally:
        floor.close()
    return {"paid": out["paid"], "capped": out["capped"], "commits": len(txns),
            "statements": sum(len(t) for t in txns), "replay_seconds": seconds}


def _release(db: Any, at: datetime, cap: float) -> dict[str, Any]:
    from engine.jobs import run_release

    pages: list[int] = []
    start = time.perf_counter()

    def progress(paid: int, _amount: int) -> None:
        pages.append(paid)
        if time.perf_counter() - start > cap:
            raise release.Capped

    try:
        return {"paid": int(run_release(db, at=at, progress=progress)["paid"]), "capped": False}
    except release.Capped:
        return {"paid": pages[-1], "capped": True}


# -- verify ---------------------------------------------------------------------------------

def verify_row(ctx: Context) -> Row:
    """benchmarks/verify.py's row, its runs interleaved with the baseline's (`paired`), five
    pairs (two with --quick); the ratio is the median of the pairs'. Each run's CPU time (the
    child's user + system) is kept beside its wall time: on a shared machine the wall time
    moves with the other processes' load, the CPU time much less (`facts.cpu_ratio`)."""
    row, built = verify.verify_shop(ctx)
    url, path = f"sqlite:///{built.path}", str(built.path)
    rss: list[float] = []
    txns = [0]
    cpu: dict[str, list[float]] = {"verify": [], "baseline": []}

    def child_cpu() -> float:
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        return used.ru_utime + used.ru_stime

    def measure() -> float:
        start, used = time.perf_counter(), child_cpu()
        out = run_child("benchmarks.verify", "--child", url, timeout=900)
        elapsed = time.perf_counter() - start
        cpu["verify"].append(child_cpu() - used)
        found = verify.OK_LINE.search(out["stdout"])
        if out["status"] != 0 or found is None:
            raise RuntimeError(f"verify did not pass on the prepared shop: {out['stdout'][:500]}")
        txns[0] = int(found.group(1))
        rss.append(out["peak_rss_mb"])
        return txns[0] / elapsed

    def baseline() -> float:
        start, used = time.perf_counter(), child_cpu()
        out = run_child("benchmarks.verify_floor", path, timeout=900)
        elapsed = time.perf_counter() - start
        cpu["baseline"].append(child_cpu() - used)
        return int(out["txns"]) / elapsed

    row.measured, bases, _ratios = paired(ctx.runs(5), measure, baseline)
    cpu_ratios = Stats([b / m for m, b in zip(cpu["verify"], cpu["baseline"], strict=True)])
    row.facts = {"journal_txns": txns[0], "entries": built.entries, "users": built.users,
                 "orders": built.orders, "prepared_in_s": round(built.seconds, 1),
                 "postings_per_txn": verify._postings_per_txn(built.path),
                 "peak_rss_mb": round(max(rss), 1), "timed": "process start to exit",
                 "interleaved": True,
                 "cpu_s": {k: [round(x, 2) for x in v] for k, v in cpu.items()},
                 "cpu_ratio": round(cpu_ratios.median, 3),
                 "cpu_ratio_runs": [round(x, 3) for x in cpu_ratios.runs]}
    return _judge(row, bases.runs, "a fresh process hashing each transaction's stored bytes "
                  "and its postings' with hashlib and summing the amounts, no checks, same "
                  "pages, importing only the standard library (benchmarks/verify_floor.py); "
                  "runs interleaved with verify's", (">=", 50_000))


# -- /me ------------------------------------------------------------------------------------

def me_row(ctx: Context) -> Row:
    row = telegram_me.me_rate(ctx)
    if row.measured is None:
        return row
    users = int(row.facts["users"])
    per_run = int(row.facts["updates_per_run"])
    chats = [telegram_me.FIRST_CHAT + u for u in range(users)]
    runs = len(row.measured.runs)
    batches = [[chats[(r * per_run + k) % users] for k in range(per_run)] for r in range(runs)]
    results = telegram_me.on_standin(
        lambda port, pipe: asyncio.run(_bare_bot(port, pipe, batches)))
    for r in results:
        if r["answered"] < r["wanted"] or r["wrong"]:
            raise RuntimeError(f"the bare client's answers did not all arrive: {r}")
    return _judge(row, [r["answered"] / r["seconds"] for r in results],
                  "the same stand-in process answering the same calls with no bot (a bare "
                  "aiohttp client: getUpdates, one sendMessage per update, 16 at once)",
                  (">=", 300))


async def _bare_bot(port: int, conn: Any, batches: list[list[int]]) -> list[dict[str, Any]]:
    """getUpdates, then one sendMessage per update (16 at once), through aiohttp — the HTTP
    client the bot itself uses (docs/telegram.md) — and nothing else."""
    import aiohttp

    base = f"http://127.0.0.1:{port}/bot{telegram_me.TOKEN}"
    text = telegram_me.ANSWER_PREFIX + "x" * 200  # about the length of a /me answer
    results = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as http:
        offset = 0
        slots = asyncio.Semaphore(16)

        async def answer(chat: int) -> None:
            async with slots, http.post(f"{base}/sendMessage",
                                        json={"chat_id": chat, "text": text}) as r:
                await r.read()

        for chats in batches:
            conn.send(chats)
            done = asyncio.create_task(asyncio.to_thread(conn.recv))
            sent: set[asyncio.Task[None]] = set()
            while not done.done():
                async with http.post(f"{base}/getUpdates",
                                     json={"offset": offset, "timeout": 1}) as r:
                    got = (await r.json()).get("result", [])
                for u in got:
                    offset = max(offset, u["update_id"] + 1)
                    sent.add(asyncio.create_task(answer(u["message"]["chat"]["id"])))
                sent = {t for t in sent if not t.done()}
            await asyncio.gather(*sent)
            results.append(done.result())
    return results


ROWS = {"telegram-me": me_row, "verify": verify_row, "release": release_row}

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("release", "verify"))
    p.add_argument("args", nargs="*")
    a = p.parse_args()
    if a.what == "verify":
        print(json.dumps(verify_child(a.args[0])))
    else:
        print(json.dumps(release_child(a.args[0], a.args[1], float(a.args[2]))))
    sys.exit(0)
