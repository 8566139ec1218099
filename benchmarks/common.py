"""What every benchmark row shares: timing, median and spread, the bare-database baselines,
peak memory of a child process, the machine's facts, the table and `var/bench.json`.

A figure on a shared two-core machine moves with whatever else runs, so every row that has a
baseline measures it in the same run, interleaved with its own runs (baseline first on even
runs, second on odd ones), and reports the median of the per-run ratios.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("BENCH_PG_URL") or os.environ.get(
    "TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


# -- figures --------------------------------------------------------------------------------

@dataclass
class Stats:
    """Several runs of one figure: the median is the figure, min–max its spread."""

    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def spread_pct(self) -> float:
        m = self.median
        return 100.0 * (max(self.runs) - min(self.runs)) / m if m else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"median": _round(self.median), "min": _round(min(self.runs)),
                "max": _round(max(self.runs)), "spread_pct": round(self.spread_pct, 1),
                "runs": [_round(r) for r in self.runs]}


def _round(x: float) -> float:
    return round(x, 4) if abs(x) < 100 else round(x, 1)


@dataclass
class Row:
    """One line of the table and one object of `var/bench.json`.

    `target` is `(kind, value)`: `ratio>=`, `ratio<=` (against the baseline) or `>=`, `<=`
    (the measured figure itself). `extra_checks` are further (name, value, op, limit) that
    must also hold (the release row's peak memory)."""

    id: str
    title: str
    unit: str
    target: tuple[str, float]
    measured: Stats | None = None
    baseline: Stats | None = None
    baseline_what: str | None = None
    ratios: Stats | None = None
    extra_checks: list[tuple[str, float, str, float]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | skipped | error
    seconds: float = 0.0

    @property
    def ratio(self) -> float | None:
        return self.ratios.median if self.ratios else None

    def _holds(self, value: float, op: str, limit: float) -> bool:
        return value >= limit if op == ">=" else value <= limit

    @property
    def target_ratio(self) -> float | None:
        """How far the row is from its target, oriented so that ≥ 1 means met."""
        kind, limit = self.target
        value = self.ratio if kind.startswith("ratio") else (
            self.measured.median if self.measured else None)
        if value is None or limit == 0:
            return None
        if kind.endswith(">="):
            return value / limit
        return limit / value if value else float("inf")

    @property
    def met(self) -> bool | None:
        if self.status != "ok" or self.measured is None:
            return None
        tr = self.target_ratio
        if tr is None:
            return None
        return tr >= 1 and all(self._holds(v, op, lim) for _n, v, op, lim in self.extra_checks)

    def target_text(self) -> str:
        kind, value = self.target
        text = f"{kind.replace('ratio', 'ratio ')} {value:g}" if kind.startswith("ratio") \
            else f"{kind} {value:,.0f} {self.unit}"
        for name, _v, op, limit in self.extra_checks:
            text += f"; {name} {op} {limit:g}"
        return text

    def as_dict(self, machine: dict[str, Any]) -> dict[str, Any]:
        return {
            "row": self.id, "title": self.title, "unit": self.unit, "status": self.status,
            "measured": self.measured.as_dict() if self.measured else None,
            "baseline": self.baseline.as_dict() if self.baseline else None,
            "baseline_what": self.baseline_what,
            "ratio": _round(self.ratio) if self.ratio is not None else None,
            "ratio_runs": self.ratios.as_dict() if self.ratios else None,
            "target": self.target_text(),
            "target_ratio": _round(self.target_ratio) if self.target_ratio is not None else None,
            "checks": [{"what": n, "value": _round(v), "must_be": f"{op} {lim:g}",
                        "met": self._holds(v, op, lim)} for n, v, op, lim in self.extra_checks],
            "met": self.met, "facts": self.facts, "notes": self.notes,
            "seconds": round(self.seconds, 1), "machine": machine,
        }


def paired(runs: int, measure: Callable[[], float], baseline: Callable[[], float],
           *, ratio: Callable[[float, float], float] = lambda m, b: m / b,
           ) -> tuple[Stats, Stats, Stats]:
    """`runs` interleaved pairs; returns (measured, baseline, per-pair ratios)."""
    ms: list[float] = []
    bs: list[float] = []
    for i in range(runs):
        if i % 2 == 0:
            b = baseline()
            m = measure()
        else:
            m = measure()
            b = baseline()
        ms.append(m)
        bs.append(b)
    return Stats(ms), Stats(bs), Stats([ratio(m, b) for m, b in zip(ms, bs, strict=True)])


def rate(step: Callable[[], object], *, seconds: float, at_least: int = 20) -> float:
    """Calls per second of `step`, called until both `seconds` and `at_least` calls passed."""
    n, elapsed = count(step, seconds=seconds, at_least=at_least)
    return n / elapsed


def count(step: Callable[[], object], *, seconds: float, at_least: int = 1) -> tuple[int, float]:
    """(calls, seconds) of `step`, called until both `seconds` and `at_least` calls passed."""
    n = 0
    start = time.perf_counter()
    while True:
        step()
        n += 1
        elapsed = time.perf_counter() - start
        if n >= at_least and elapsed >= seconds:
            return n, elapsed


Slice = Callable[[float], tuple[int, float]]


def interleaved(runs: int, slices: int, seconds: float, measure: Slice,
                baseline: Slice) -> tuple[Stats, Stats, Stats]:
    """`runs` runs, each made of `slices` alternating short slices of the measured work and
    of the baseline, so that both meet the same moments of a shared machine (a disk's fsync
    time wanders by a factor of several within seconds here). A run's figure is its calls
    over its time, for each side; the ratio is taken run by run."""
    ms: list[float] = []
    bs: list[float] = []
    share = seconds / slices
    for i in range(runs):
        mn = bn = 0
        mt = bt = 0.0
        for j in range(slices):
            for side in ((0, 1) if (i + j) % 2 == 0 else (1, 0)):
                if side == 0:
                    n, t = baseline(share)
                    bn, bt = bn + n, bt + t
                else:
                    n, t = measure(share)
                    mn, mt = mn + n, mt + t
        ms.append(mn / mt)
        bs.append(bn / bt)
    return Stats(ms), Stats(bs), Stats([m / b for m, b in zip(ms, bs, strict=True)])


# -- the bare database ----------------------------------------------------------------------

class BareSQLite:
    """Durable one-row commits on a file with the settings storage/db.py gives the shop's
    file: WAL, synchronous=FULL, BEGIN IMMEDIATE. Through the same driver (sqlite3)."""

    def __init__(self, path: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE bare (id INTEGER PRIMARY KEY, at TEXT, payload TEXT)")
        self.payload = "x" * 120

    def commit_one(self) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO bare (at, payload) VALUES (?, ?)", (time.time(), self.payload))
        c.execute("COMMIT")

    def commits(self, seconds: float) -> tuple[int, float]:
        return count(self.commit_one, seconds=seconds, at_least=5)

    def close(self) -> None:
        self.conn.close()


class BarePG:
    """Durable one-row commits on PostgreSQL with its defaults (synchronous_commit on)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        self.settings = {k: self.conn.execute(f"SHOW {k}").fetchone()[0]  # type: ignore[index]
                         for k in ("synchronous_commit", "fsync", "wal_sync_method",
                                   "commit_delay", "server_version")}
        self.conn.execute("CREATE TABLE bare (id bigserial PRIMARY KEY, at double precision, "
                          "payload text)")
        self.conn.commit()
        self.payload = "x" * 120

    def commit_one(self) -> None:
        self.conn.execute("INSERT INTO bare (at, payload) VALUES (%s, %s)",
                          (time.time(), self.payload))
        self.conn.commit()

    def commits(self, seconds: float) -> tuple[int, float]:
        return count(self.commit_one, seconds=seconds, at_least=5)

    def close(self) -> None:
        self.conn.close()


# -- PostgreSQL schemas ---------------------------------------------------------------------

def pg_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL"
        return f"{type(exc).__name__}: {exc}".strip()[:200]
    return None


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh schema in the bench database; yields a URL whose search_path is that schema."""
    import psycopg

    schema = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- child processes ------------------------------------------------------------------------

def run_child(module: str, *args: str, timeout: float) -> dict[str, Any]:
    """Run `python -m <module> args…`; the child prints one JSON object last, including its
    own peak resident memory (`peak_rss_mb`, from getrusage in the child)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({done.returncode}): "
                           f"{done.stderr.strip()[-1500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program.

    `VmHWM` from /proc: getrusage's `ru_maxrss` would also count the parent's memory at the
    fork, which Linux carries across exec."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


# -- the machine ----------------------------------------------------------------------------

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


# -- output ---------------------------------------------------------------------------------

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
    """A Markdown table: pasteable into docs/perf.md as it is."""
    head = ["row", "measured", "baseline (same run)", "ratio", "target", "met"]
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
        lines.append("| " + " | ".join([
            r.title, measured, figure(r.baseline, r.unit) if r.baseline else "—", ratio,
            r.target_text(), met]) + " |")
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], machine_facts: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([r.as_dict(machine_facts) for r in rows], indent=1,
                              ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# -- a run ----------------------------------------------------------------------------------

@dataclass
class Context:
    """One `python -m benchmarks` run: its mode, scratch directory and shared fixtures."""

    quick: bool
    work: Path
    pg_problem: str | None  # why PostgreSQL rows cannot run, or None
    cache: dict[str, Any] = field(default_factory=dict)

    def runs(self, full: int = 5) -> int:
        return 2 if self.quick else full

    def seconds(self, full: float = 2.0) -> float:
        return 0.3 if self.quick else full

    def scratch(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path
