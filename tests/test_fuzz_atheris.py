"""Coverage-guided fuzzing (atheris, libFuzzer) of replay lines and the amount and time
parsers, beside hypothesis's random search (tests/test_fuzz_engine.py): libFuzzer keeps the
inputs that reach new branches of the engine and mutates them, which finds the deep paths
(a valid event with one odd field) that random JSON rarely reaches.

Run as a program — `python -m tests.test_fuzz_atheris -runs=N` — in a process of its own
(libFuzzer ends the process when it is done); pytest runs it with a small N, nightly with a
large one (docs/reliability.md). A failing input is printed and saved as `crash-*`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("STOREFRONT_FUZZ_EXAMPLES", "150")) * 10


def test_atheris_finds_no_input_that_crashes_the_replay_or_the_parsers(tmp_path: Path) -> None:
    import pytest

    pytest.importorskip("atheris")  # a dev dependency (pyproject); its wheel needs CPython
    corpus = seed_corpus(tmp_path / "corpus")
    run = subprocess.run([sys.executable, "-m", "tests.test_fuzz_atheris", f"-runs={RUNS}",
                          "-seed=1", "-max_len=512", f"-artifact_prefix={tmp_path}/",
                          str(corpus)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Done {RUNS} runs" in run.stderr, run.stderr[-2000:]


def seed_corpus(where: Path) -> Path:
    """Every line of the shared vectors, one file each: valid events of every kind (and the
    bad ones) for libFuzzer to start mutating from."""
    where.mkdir(parents=True, exist_ok=True)
    n = 0
    for vector in sorted((ROOT / "tests" / "vectors").glob("*.jsonl")):
        for line in vector.read_text(encoding="utf-8").splitlines():
            if line.strip():
                (where / f"seed-{n:04d}").write_text(line, encoding="utf-8")
                n += 1
    return where


def _harness() -> Any:
    import atheris

    with atheris.instrument_imports(include=["engine"]):
        from engine.errors import Refusal
        from engine.money import AmountError, parse_fen, parse_micro, parse_rate
        from engine.replay import Replayer
        from engine.state import snapshot
        from engine.times import parse_at
    from storage.db import Database
    from storage.migrate import migrate
    from tests.test_fuzz_engine import BASE

    db = Database("sqlite://")
    migrate(db)
    replayer = Replayer(db)
    for n, ev in enumerate(BASE, start=1):
        replayer.line(n, json.dumps(ev))

    def look() -> Any:
        return db.read(snapshot)

    def one_input(data: bytes) -> None:
        text = data.decode("utf-8", "replace")  # so the seed lines are read as written
        errors = len(replayer.errors)
        before = look()
        replayer.line(1, text)  # never raises
        if len(replayer.errors) > errors:
            assert look() == before, text
        for parse in (parse_fen, parse_micro, parse_rate):
            try:
                parse(text)
            except AmountError:
                pass
        try:
            parse_at(text)
        except Refusal:
            pass

    return atheris, one_input


if __name__ == "__main__":
    fuzzer, target = _harness()
    fuzzer.Setup(sys.argv, target)
    fuzzer.Fuzz()
