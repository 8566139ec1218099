"""`python -m benchmarks.release_cpu [--entries N] [--work DIR]`: the release row's ratio in
CPU time, for a machine too loaded for wall-clock rates.

On a copy of the release row's shop (`benchmarks/release.py`, ~94% of N entries matured and
owed a deposit first, untimed), `engine.jobs.run_release` with its write statements captured
(benchmarks/floor.py `Writes`), then those statements replayed on a copy of the shop as it was
before (one durable commit per page, as the row's baseline does). Each side is timed with
`time.process_time` (this process's own CPU, SQLite's included: not time spent waiting for a
core or the disk). Prints one JSON line: CPU µs per entry paid of each, and their ratio
(writes alone / release; ≥ 0.7 is the row's target). Run it from each tree to compare two.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from .fixtures import Plan, build_history
from .latency import ENTRIES_PER_USER


def measure(entries: int, work: Path) -> dict[str, Any]:
    from engine import service
    from engine.jobs import run_release
    from engine.money import format_fen
    from storage.db import Database

    from . import release
    from .baselines import _release_at
    from .floor import SQLiteFloor, Writes, sqlite_copy

    work.mkdir(parents=True, exist_ok=True)
    template = work / f"release-cpu-{entries}.db"
    if not template.exists():
        build_history(template, Plan(users=entries // ENTRIES_PER_USER, entries=entries, seed=3))
    at = _release_at(template)  # every lock (at most 30 days) has run out
    path = work / "release-cpu-run.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, path)
    url = f"sqlite:///{path}"
    _matured, owed, pool = release._matured(str(path), at)
    db = Database(url)
    if owed > pool:
        service.deposit(db, pool="queue", amount=format_fen(owed - pool), at=at,
                        key="bench:release:seed")
    db.dispose()
    replica = sqlite_copy(path, Path(f"{path}.floor"))
    db = Database(url)
    writes = Writes(db)
    start = time.process_time()
    paid = int(run_release(db, at=at)["paid"])
    engine_cpu = time.process_time() - start
    txns = writes.take()
    writes.close()
    db.dispose()
    floor = SQLiteFloor(replica)
    try:
        start = time.process_time()
        floor.replay(txns)
        floor_cpu = time.process_time() - start
    finally:
        floor.close()
    return {"entries_paid": paid, "release_cpu_us_per_entry": round(1e6 * engine_cpu / paid, 1),
            "writes_alone_cpu_us_per_entry": round(1e6 * floor_cpu / paid, 1),
            "cpu_ratio": round(floor_cpu / engine_cpu, 3)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m benchmarks.release_cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=106_000)
    p.add_argument("--work", type=Path, default=Path("var/bench-work"))
    a = p.parse_args()
    print(json.dumps(measure(a.entries, a.work)))
