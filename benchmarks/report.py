"""What a run reports: the machine's facts, the Markdown table, `var/bench.json`."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from .common import Row, Stats


def machine(work_dir: Path, pg_version: str | None) -> dict[str, Any]:
    import sqlalchemy
    import telegram

    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), "")
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "nproc": os.cpu_count(), "cpu": cpu or platform.processor(),
        "memory_gb": round(mem_gb, 1), "disk": _disk(work_dir),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "postgresql": pg_version, "sqlalchemy": sqlalchemy.__version__,
        "python_telegram_bot": telegram.__version__, "kernel": platform.release(),
    }


def _disk(path: Path) -> str:
    """Filesystem type and block device of the directory the benchmark files live in."""
    try:
        best = ("", "", "")
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                dev, mount, fstype = line.split()[:3]
                if str(path.resolve()).startswith(mount) and len(mount) >= len(best[1]):
                    best = (dev, mount, fstype)
        dev, mount, fstype = best
        name = Path(dev).name
        rotational = Path(f"/sys/block/{name}/queue/rotational")
        kind = ""
        if rotational.exists():
            kind = "rotational" if rotational.read_text().strip() == "1" else "non-rotational"
        free = shutil.disk_usage(path).free / 2**30
        return f"{dev} ({fstype} on {mount}, {kind or 'unknown kind'}, {free:.0f} GiB free)"
    except OSError:
        return "unknown"


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "ratio":
        return f"{value:.2f}"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:,.0f}"


def figure(stats: Stats | None, unit: str) -> str:
    if stats is None:
        return "—"
    short = "ms" if unit == "ms" else ""
    return f"{fmt(stats.median, short)} (±{stats.spread_pct / 2:.0f}%)"


def table(rows: list[Row]) -> str:
    """A Markdown table: pasteable into docs/perf.md as it is. `ceiling` is the ratio the
    row's own writes reach with no engine (benchmarks/floor.py), where measured."""
    head = ["row", "measured", "baseline (same run)", "ratio", "ceiling", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        measured = figure(r.measured, r.unit)
        if r.unit not in ("ms",) and r.measured is not None:
            measured += f" {r.unit}"
        for name, value, _op, _limit in r.extra_checks:
            measured += f"; {name} {value:.0f}"
        met = {True: "met", False: "**missed**", None: r.status}[r.met]
        ratio = fmt(r.ratio, "ratio")
        if r.ratios is not None:
            ratio += f" (±{r.ratios.spread_pct / 2:.0f}%)"
        ceiling = "—" if r.ceiling is None else (
            f"{fmt(r.ceiling.median, 'ratio')} (±{r.ceiling.spread_pct / 2:.0f}%)")
        lines.append("| " + " | ".join([
            r.title, measured, figure(r.baseline, r.unit) if r.baseline else "—", ratio,
            ceiling, r.target_text(), met]) + " |")
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], machine_facts: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([r.as_dict(machine_facts) for r in rows], indent=1,
                              ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


