"""What every benchmark row shares: the figures (median and spread of several runs), the
timing helpers, a child process's peak memory, and the run's context.

A figure on a shared two-core machine moves with whatever else runs, so every row that has a
baseline measures it in the same run, interleaved with its own runs (baseline first on even
runs, second on odd ones), and reports the median of the per-run ratios.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


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
    # The highest ratio the row's work allows: the same writes with no engine (floor.py).
    ceiling: Stats | None = None
    ceiling_what: str | None = None
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
            "ceiling_ratio": self.ceiling.as_dict() if self.ceiling else None,
            "ceiling_what": self.ceiling_what,
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
