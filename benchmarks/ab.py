"""`python -m benchmarks.ab --old REV [--rounds N] [--only ROW,…] [--full]`: the same benchmark
rows on two trees in one run, interleaved, so both meet the same load of a shared machine.

Each tree is a detached git worktree of its revision (made under /tmp, kept for the next run):
`--old REV`, and `--new` (default HEAD), so editing this checkout during a run changes nothing. Each round runs every row once on each tree, the order flipping
round by round (old-new, new-old, …), each run a fresh `python -m benchmarks --only ROW` child
whose code comes from its tree (PYTHONPATH, cwd) on this checkout's interpreter. The table
gives per row the median of each tree's figures and new/old of the medians (rates: above 1
is faster), with each tree's same-run ratio to the bare commit where the row has one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import ROOT

ROWS = ("purchase-sqlite", "purchase-pg", "purchase-pg-8", "telegram-me", "verify", "release")


def tree_of(rev: str) -> Path:
    """A detached worktree of `rev` under /tmp (made once)."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"storefront-ab-{sha}"
    if not (path / "benchmarks").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), sha],
                       check=True, capture_output=True)
    return path


def run_row(tree: Path, row: str, full: bool, scratch: Path) -> dict[str, Any]:
    """One run of `row` with `tree`'s code: its JSON object from `var/bench.json`."""
    out = scratch / f"{tree.name}-{row}.json"
    args = [sys.executable, "-m", "benchmarks", "--only", row, "--out", str(out),
            "--work", str(scratch / "work")] + ([] if full else ["--quick"])
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True,
                          timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{row} on {tree} failed: {done.stdout[-800:]}{done.stderr[-800:]}")
    found: dict[str, Any] = json.loads(out.read_text())[0]
    return found


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="the old tree's git revision")
    p.add_argument("--new", default="HEAD", help="the new tree's git revision")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--only", default=",".join(ROWS), help="rows, comma-separated")
    p.add_argument("--full", action="store_true", help="full-size rows (default: --quick)")
    p.add_argument("--out", type=Path, default=Path("var/bench-ab.json"))
    args = p.parse_args(argv)
    trees = {"old": tree_of(args.old), "new": tree_of(args.new)}
    rows = [r.strip() for r in args.only.split(",") if r.strip()]
    figures: dict[str, dict[str, dict[str, list[float]]]] = {
        r: {side: {"measured": [], "ratio": []} for side in trees} for r in rows}
    units: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        for i in range(args.rounds):
            for row in rows:
                for side in (("old", "new") if i % 2 == 0 else ("new", "old")):
                    got = run_row(trees[side], row, args.full, Path(tmp))
                    units[row] = got["unit"]
                    figures[row][side]["measured"].append(got["measured"]["median"])
                    if got.get("ratio") is not None:
                        figures[row][side]["ratio"].append(got["ratio"])
                    print(f"round {i + 1} {row} {side}: {got['measured']['median']:,.1f} "
                          f"{got['unit']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"old": args.old, "new": args.new, "rounds": args.rounds,
                                    "mode": "full" if args.full else "quick",
                                    "rows": figures}, indent=1))
    print(f"\n| row | old (median of {args.rounds}) | new (median of {args.rounds}) | new/old "
          "| vs bare commit, old → new |\n|---|---|---|---|---|")
    for row in rows:
        old, new = (median(figures[row][s]["measured"]) for s in ("old", "new"))
        bare = "—"
        if figures[row]["old"]["ratio"]:
            bare = (f"{median(figures[row]['old']['ratio']):.2f} → "
                    f"{median(figures[row]['new']['ratio']):.2f}")
        print(f"| {row} | {old:,.0f} {units[row]} | {new:,.0f} | {new / old:.2f} | {bare} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
