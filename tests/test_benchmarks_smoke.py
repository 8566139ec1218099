"""Issue 7: `python -m benchmarks --quick` runs end to end and writes its rows — each with the
figure, the baseline measured in the same run and their ratio — to `var/bench.json`."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHEAP_ROWS = ["purchase-sqlite", "latency-holders"]


def test_quick_run_writes_each_row_with_its_baseline_and_ratio(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", ",".join(CHEAP_ROWS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    rows = json.loads((tmp_path / "var" / "bench.json").read_text(encoding="utf-8"))
    assert [r["row"] for r in rows] == CHEAP_ROWS
    for row in rows:
        assert row["status"] == "ok", row
        assert row["measured"]["median"] > 0 and row["baseline"]["median"] > 0
        assert len(row["measured"]["runs"]) == len(row["baseline"]["runs"]) == 2
        # the ratio is the median of the per-run ratios, measured against the same-run baseline
        pairs = zip(row["measured"]["runs"], row["baseline"]["runs"], strict=True)
        expected = statistics.median(m / b for m, b in pairs)
        assert abs(row["ratio"] - expected) <= 0.01 * expected + 1e-3, row
        assert any("ratio" in key for key in row)
        assert row["met"] in (True, False) and row["target"].startswith("ratio")
        assert row["machine"]["nproc"] >= 1 and row["machine"]["sqlite"]
    purchases = rows[0]
    assert purchases["facts"]["bought"] > 0 and purchases["facts"]["refused"] == 0
    # the ceiling: the same purchases' writes replayed with no engine, over the same baseline
    assert purchases["ceiling_ratio"]["median"] > 0 and len(purchases["ceiling_ratio"]["runs"]) == 2
    assert purchases["facts"]["ceiling_keys_only"]["median"] > 0
    assert purchases["facts"]["commits_replayed"] == purchases["facts"]["bought"]
    assert rows[1]["ceiling_ratio"] is None  # only the purchase rows have one
    assert "| purchases/s, one connection, SQLite file |" in done.stdout
    assert not (tmp_path / "var" / "bench-work").exists()  # scratch databases are removed


def test_unknown_row_is_refused_with_the_list_of_rows(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "unknown row 'nope'" in done.stderr and "purchase-sqlite" in done.stderr
    assert not (tmp_path / "var" / "bench.json").exists()
