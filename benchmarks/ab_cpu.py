"""`python -m benchmarks.ab_cpu --old REV [--new REV] [--rounds N]`: CPU seconds per unit of
work on two trees, interleaved — the A/B for a machine too loaded for wall-clock rates.

`benchmarks.ab` compares the rows' own wall-clock figures; on a box whose load average is
several times its cores those move by a factor of ten between minutes. The CPU time a process
spends on the same work (`time.process_time`: its own CPU, not time spent waiting for a core
or for the disk) moves far less. Each round runs, on each tree (order flipping by round),
one child per kind of work, on that tree's code, timing only the work:

- `purchase-sqlite` / `purchase-pg`: `service.buy` on one connection (the bench's shop of 200
  users and its purchase mix), after 30 warm-up purchases; CPU ms per purchase;
- `verify`: `storefront verify` (in process) over a 30,001-transaction journal; CPU µs per
  transaction;
- `release`: the static release over ~3,000 matured entries; CPU µs per entry paid.

The child is this file run by path with the tree first on `sys.path`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

KINDS = ("purchase-sqlite", "purchase-pg", "verify", "release")
PURCHASES = 300


def _purchase(url: str) -> dict[str, Any]:
    import uuid

    from benchmarks.workload import T0, Purchases, buy, setup_shop
    from storage.db import Database
    from storage.migrate import migrate

    db = Database(url)
    migrate(db)
    stream = iter(Purchases(setup_shop(db, 200), T0 + timedelta(days=1), uuid.uuid4().hex[:8]))
    for _ in range(30):
        buy(db, next(stream))
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(PURCHASES):
        buy(db, next(stream))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    db.dispose()
    return {"unit": "CPU ms per purchase", "value": 1000 * cpu / PURCHASES,
            "wall_per_s": PURCHASES / wall}


def _verify(scratch: Path) -> dict[str, Any]:
    import contextlib
    import io

    from benchmarks.fixtures import Plan, build_history
    from bot.cli import main

    built = build_history(scratch / "verify.db", Plan(users=1500, txns=30_000,
                                                      split_settle=True, seed=4))
    url = f"sqlite:///{built.path}"
    main(["migrate", "--db", url])  # not timed: the schema check and imports
    with contextlib.redirect_stdout(io.StringIO()):
        cpu = time.process_time()
        status = main(["verify", "--db", url])
        cpu = time.process_time() - cpu
    assert status == 0
    return {"unit": "CPU µs per transaction", "value": 1e6 * cpu / built.txns}


def _release(scratch: Path) -> dict[str, Any]:
    from benchmarks.fixtures import Plan, build_history
    from benchmarks.release import ENTRIES_PER_USER, child

    n = 3_200
    built = build_history(scratch / "release.db",
                          Plan(users=n // ENTRIES_PER_USER, entries=n, seed=3))
    at = built.end + timedelta(days=31)
    cpu = time.process_time()
    out = child(f"sqlite:///{built.path}", at.isoformat(), 600.0)
    cpu = time.process_time() - cpu
    return {"unit": "CPU µs per entry paid", "value": 1e6 * cpu / max(1, out["paid"])}


def child(kind: str, scratch: Path) -> dict[str, Any]:
    if kind == "purchase-sqlite":
        return _purchase(f"sqlite:///{scratch / 'shop.db'}")
    if kind == "purchase-pg":
        from benchmarks.bare import pg_schema

        with pg_schema() as url:
            return _purchase(url)
    if kind == "verify":
        return _verify(scratch)
    return _release(scratch)


def tree_of(rev: str) -> Path:
    from benchmarks.ab import tree_of as made

    return made(rev)


def run(tree: Path, kind: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ab-cpu-") as scratch:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", kind, scratch],
            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
            text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} on {tree}: {done.stderr[-1500:]}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab_cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old")
    p.add_argument("--new", default="HEAD")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", default=",".join(KINDS))
    p.add_argument("--out", type=Path, default=Path("var/bench-ab-cpu.json"))
    p.add_argument("--child", nargs=2, metavar=("KIND", "SCRATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return 0
    trees = {"old": tree_of(args.old), "new": tree_of(args.new)}
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    got: dict[str, dict[str, list[float]]] = {k: {"old": [], "new": []} for k in kinds}
    units: dict[str, str] = {}
    for i in range(args.rounds):
        for kind in kinds:
            for side in (("old", "new") if i % 2 == 0 else ("new", "old")):
                out = run(trees[side], kind)
                units[kind] = out["unit"]
                got[kind][side].append(out["value"])
                print(f"round {i + 1} {kind} {side}: {out['value']:.3f} {out['unit']}",
                      flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"old": args.old, "new": args.new, "rounds": args.rounds,
                                    "units": units, "runs": got}, indent=1))
    print(f"\n| work | old: median of {args.rounds} | new | new/old (above 1: more CPU) "
          "| per-round new/old, min–max |\n|---|---|---|---|---|")
    for kind in kinds:
        old, new = (statistics.median(got[kind][s]) for s in ("old", "new"))
        pairs = [n / o for n, o in zip(got[kind]["new"], got[kind]["old"], strict=True)]
        print(f"| {kind} | {old:.3f} {units[kind]} | {new:.3f} | {new / old:.2f} "
              f"| {min(pairs):.2f}–{max(pairs):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
