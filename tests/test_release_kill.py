"""A release killed (SIGKILL) at any moment and run again pays every entry exactly once and
ends in the very state one uninterrupted run gives: same balances, same entries, same
journal hash chain, same notifications (SPEC §3, §6).

Each case runs `python -m bot.cli release` in a fresh process with `STOREFRONT_FAULT` naming
where it dies (storage/faults.py), then runs it again as an operator would."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.verify import verify
from storage import faults
from storage.db import Database
from storage.models import Lease
from tests.conftest import migrated
from tests.release_helpers import MATURED, cli, fingerprint, make_shop, paid_entries

pytestmark = pytest.mark.slow  # a fresh process per kill, and its rerun
ENTRIES, LATE, BATCH = 45, 3, 10  # five pages, the last one short; 3 entries not yet matured
AT = MATURED.isoformat()


def build(url: str) -> None:
    with migrated(url) as db:
        # settle_days=1: the release settles all 48 orders first (SPEC §8), then pays.
        make_shop(db, entries=ENTRIES, late=LATE, users=4, settle_days=1)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("kill") / "template.db"
    build(f"sqlite:///{path}")
    yield path


@pytest.fixture(scope="module")
def reference(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The state after one uninterrupted release."""
    path = copy(template, tmp_path_factory.mktemp("ref") / "ref.db")
    done = cli("release", "--db", f"sqlite:///{path}", "--at", AT, "--batch", str(BATCH))
    assert done.returncode == 0, done.stderr
    db = Database(f"sqlite:///{path}")
    try:
        state = fingerprint(db)
    finally:
        db.dispose()
    assert state["release_txns"] == ENTRIES
    return state


def copy(src: Path, dst: Path) -> Path:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def kill_then_rerun(url: str, points: list[str]) -> tuple[Database, list[str]]:
    """Run the release once per fault (each must die by SIGKILL there), then cleanly."""
    stderr = []
    for point in points:
        run = cli("release", "--db", url, "--at", AT, "--batch", str(BATCH),
                  env={"STOREFRONT_FAULT": point})
        assert run.returncode == -signal.SIGKILL, (point, run.returncode, run.stderr)
        stderr.append(run.stderr)
    rerun = cli("release", "--db", url, "--at", AT, "--batch", str(BATCH))
    assert rerun.returncode == 0, rerun.stderr
    return Database(url), stderr


@pytest.mark.parametrize("points, paid_before_rerun", [
    (["release.locked:1"], 0),  # lock taken, nothing done yet
    (["release.after_settle:1"], 0),  # orders settled and committed, nothing paid
    (["release.entry_paid:1"], 0),  # mid-page: the first page's transaction is lost
    (["release.entry_paid:17"], 10),  # mid-page two: page one stands, page two is lost
    (["release.after_page:1"], 10),  # right after a page committed
    (["release.after_page:3"], 30),
    (["release.after_page:5"], 45),  # everything paid, the run not yet recorded
    (["release.before_record:1"], 45),
    (["release.after_page:2", "release.entry_paid:5", "release.after_page:1"], 30),
])
def test_killed_release_rerun_pays_each_entry_exactly_once(
        template: Path, reference: dict[str, Any], tmp_path: Path, points: list[str],
        paid_before_rerun: int) -> None:
    path = copy(template, tmp_path / "store.db")
    url = f"sqlite:///{path}"
    probe = Database(url)
    paid_seen: list[int] = []
    try:
        for n, point in enumerate(points):
            run = cli("release", "--db", url, "--at", AT, "--batch", str(BATCH),
                      env={"STOREFRONT_FAULT": point})
            assert run.returncode == -signal.SIGKILL, (point, run.returncode, run.stderr)
            # The killed process left its lease behind; the next run must take it over.
            assert probe.read(lambda s: s.get(Lease, "release")) is not None
            paid_seen.append(sum(1 for _s, _r, status in paid_entries(probe)
                                 if status == "released"))
            if n == len(points) - 1:
                assert paid_seen[-1] == paid_before_rerun
        rerun = cli("release", "--db", url, "--at", AT, "--batch", str(BATCH))
        assert rerun.returncode == 0, rerun.stderr
        assert fingerprint(probe) == reference
        report = verify(probe)
        assert report.ok, list(report.lines())
        assert probe.read(lambda s: s.get(Lease, "release")) is None
    finally:
        probe.dispose()


def test_a_second_rerun_changes_nothing(template: Path, reference: dict[str, Any],
                                        tmp_path: Path) -> None:
    url = f"sqlite:///{copy(template, tmp_path / 'store.db')}"
    for _ in range(2):
        assert cli("release", "--db", url, "--at", AT, "--batch", str(BATCH)).returncode == 0
    db = Database(url)
    try:
        assert fingerprint(db) == reference
    finally:
        db.dispose()


@pytest.mark.parametrize("point", ["release.entry_paid:23", "release.after_page:2"])
def test_killed_release_on_postgres_reruns_to_the_same_state(
        pg_url: str, reference: dict[str, Any], point: str) -> None:
    build(pg_url)
    db, _ = kill_then_rerun(pg_url, [point])
    try:
        assert fingerprint(db) == reference  # the same bytes as SQLite's uninterrupted run
        assert verify(db).ok
    finally:
        db.dispose()


def test_fault_specs_are_parsed_strictly() -> None:
    assert set(faults.parse("a.b:3, c:*:sleep0.1,d:1:raise")) == {"a.b", "c", "d"}
    for bad in ("a", "a:0", "a:x", "a:1:explode", "a:1:sleepy"):
        with pytest.raises(ValueError):
            faults.parse(bad)


def test_an_armed_raise_fires_on_the_named_hit_only() -> None:
    faults.arm("here:2:raise")
    try:
        faults.point("here")
        faults.point("elsewhere")
        with pytest.raises(faults.FaultInjected):
            faults.point("here")
        faults.point("here")
    finally:
        faults.disarm()

