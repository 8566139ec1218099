"""Kill at every step: each money action and notification delivery is SIGKILLed at every
fault point it reaches (each commit's `commit.before:<label>` / `commit.after:<label>`, and
the release's and outbox's own points), restarted, and the same request retried with its
key. Afterwards the shop must be exactly where one clean application of the request leaves
it (state, journal hash chain, orders, withdrawals, outbox), `verify` must pass, and nothing
may have been paid or sent twice (SPEC §6).

The requests run in forked children of tests/fault_driver.py, so each kill ends a real
process in the middle of its transaction."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from engine import outbox
from engine.verify import verify
from storage.db import Database
from storage.models import Outbox
from tests.fault_driver import ACTIONS, ATOMIC, DELIVER_AT, Driver, fingerprint

pytestmark = pytest.mark.slow  # a process killed at every point: minutes, not seconds
KILLED = -signal.SIGKILL
# Nightly (docs/reliability.md) the release is also killed at its own `release.*` points;
# in `make test` tests/test_release_kill.py covers those, and this file its commits.
NIGHTLY = int(os.environ.get("STOREFRONT_FUZZ_EXAMPLES", "150")) > 500
MONEY = [a for a in ACTIONS if a != "deliver"]
# The commit label each action's own transaction carries (docs/reliability.md).
LABELS = {"buy": "buy", "buy_referred": "buy", "confirm_payment": "record_payment",
          "telegram_paid": "record_payment", "release": "release",
          "withdraw_points": "withdraw_points", "transfer_points": "transfer_points",
          "request_withdrawal": "request_withdrawal",
          "approve_withdrawal": "decide_withdrawal", "deliver": "claim.work"}


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """Where the many small databases live: in memory (tmpfs) when the machine has one.
    A SIGKILL is a process dying, not the power failing, so fsync's cost buys nothing."""
    shm = Path("/dev/shm")
    where = Path(tempfile.mkdtemp(prefix="faults-", dir=shm if shm.is_dir() else None))
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def tmp_path(scratch: Path, request: pytest.FixtureRequest) -> Path:  # noqa: F811
    path = scratch / request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def driver() -> Iterator[Driver]:
    d = Driver(subprocess.Popen)
    yield d
    d.close()


@pytest.fixture(scope="module")
def template(driver: Driver, scratch: Path) -> Path:
    path = scratch / "template.db"
    done = driver(op="setup", url=f"sqlite:///{path}")
    assert done["exit"] == 0, done
    return path


def copy(src: Path, dst: Path) -> str:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return f"sqlite:///{dst}"


def look(url: str) -> dict[str, Any]:
    db = Database(url)
    try:
        return fingerprint(db)
    finally:
        db.dispose()


def verified(url: str) -> list[str]:
    db = Database(url)
    try:
        report = verify(db)
        return [] if report.ok else list(report.lines())
    finally:
        db.dispose()


def without_replayed(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "replayed"}


class Reference:
    """One clean application of an action to the template: its result, the state it
    leaves, and every fault point it passes, in order."""

    def __init__(self, driver: Driver, template: Path, where: Path, action: str) -> None:
        url = copy(template, where / f"clean-{action}.db")
        run = driver(op="run", url=url, action=action, log=str(where / f"clean-{action}.log"))
        assert run["exit"] == 0 and "ok" in run["out"], run
        self.result: dict[str, Any] = run["out"]["ok"]
        self.state = look(url)
        assert verified(url) == []
        traced = driver(op="trace", url=copy(template, where / f"trace-{action}.db"),
                        action=action, log=str(where / f"trace-{action}.log"))
        assert traced["exit"] == 0, traced
        self.points: list[str] = traced["out"]["points"]


@pytest.fixture(scope="module")
def references(driver: Driver, template: Path, scratch: Path) -> dict[str, Reference]:
    where = scratch / "refs"
    where.mkdir()
    return {a: Reference(driver, template, where, a) for a in ACTIONS}


@pytest.fixture(scope="module")
def before(template: Path) -> dict[str, Any]:
    return look(f"sqlite:///{template}")


def test_every_action_changes_the_shop_and_names_its_commit_points(
        references: dict[str, Reference], before: dict[str, Any]) -> None:
    for action, ref in references.items():
        assert ref.state != before, f"{action} changed nothing: the test would prove nothing"
        label = LABELS[action]
        assert f"commit.before:{label}:1" in ref.points, (action, ref.points)
        assert f"commit.after:{label}:1" in ref.points, (action, ref.points)
    assert {p.rsplit(":", 1)[0] for p in references["release"].points} >= {
        "release.locked", "release.after_settle", "release.entry_paid", "release.after_page",
        "release.before_record", "commit.before:settle", "commit.after:release"}
    assert {p.rsplit(":", 1)[0] for p in references["deliver"].points} >= {
        "outbox.claimed", "outbox.marked_sending", "outbox.after_send",
        "commit.after:_changed.<lambda>"}


@pytest.mark.parametrize("action", MONEY)
def test_killed_at_every_point_then_retried_with_its_key_applies_once(
        action: str, driver: Driver, template: Path, references: dict[str, Reference],
        before: dict[str, Any], tmp_path: Path) -> None:
    ref = references[action]
    points = [p for p in ref.points if NIGHTLY or not p.startswith("release.")]
    for n, point in enumerate(points):
        url = copy(template, tmp_path / f"{n}.db")
        killed = driver(op="run", url=url, action=action, fault=point)
        assert killed["exit"] == KILLED, (point, killed)
        half = look(url)
        if action in ATOMIC:  # one transaction: all of it or nothing, never half
            assert half in (before, ref.state), f"{action} killed at {point} left half a change"
        assert verified(url) == [], point  # a crash leaves consistent books at every step

        retry = driver(op="run", url=url, action=action)
        assert retry["exit"] == 0, (point, retry)
        out = retry["out"]
        if "refused" in out:
            # A decision already committed is not made twice; the operator is told so.
            assert (action, out["refused"]) == ("approve_withdrawal", "already_decided"), out
            assert half == ref.state, point
        elif action != "release":  # a resumed release reports only what it paid itself
            assert without_replayed(out["ok"]) == without_replayed(ref.result), point
        assert look(url) == ref.state, f"{action} killed at {point}, retried: not one application"
        assert verified(url) == [], point

        if n == len(points) - 1:  # and once more: nothing moves
            again = driver(op="run", url=url, action=action)
            assert again["exit"] == 0 and look(url) == ref.state, (point, again)


def _log(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]  # type: ignore[misc]


def _rows(url: str) -> dict[str, str]:
    """The notifications the setup left to deliver: recipient identity → status."""
    db = Database(url)
    try:
        rows = db.read(lambda s: s.execute(select(Outbox.user_id, Outbox.status).where(
            Outbox.key.like("transfer:%"))).all())
    finally:
        db.dispose()
    ident = {1: "tg:101", 3: "tg:103", 4: "tg:104"}
    return {ident[u]: status for u, status in rows}


def test_delivery_killed_at_every_point_never_sends_twice_and_loses_nothing_silently(
        driver: Driver, template: Path, references: dict[str, Reference],
        before: dict[str, Any], tmp_path: Path) -> None:
    ref = references["deliver"]
    assert ref.result.get("sent") == 3 and not ref.result.get("interrupted"), ref.result
    assert set(_rows(copy(template, tmp_path / "t.db")).values()) == {"pending"}
    unsent_by_point: dict[str, int] = {}
    for n, point in enumerate(ref.points):
        url = copy(template, tmp_path / f"{n}.db")
        log = tmp_path / f"{n}.log"
        killed = driver(op="run", url=url, action="deliver", fault=point, log=str(log))
        assert killed["exit"] == KILLED, (point, killed)
        # Restarted after a claim's timeout: a row the dead process left `sending` may have
        # reached the user, so it becomes `interrupted` and is not sent again.
        late = int(outbox.SENDING_TIMEOUT.total_seconds() // 60) + 1
        rerun = driver(op="run", url=url, action="deliver", log=str(log), late=late)
        assert rerun["exit"] == 0, (point, rerun)
        sent = _log(log)
        assert all(k == 1 for k in Counter(sent).values()), f"sent twice after {point}: {sent}"
        rows = _rows(url)
        delivered = {identity for identity, _text in sent}
        assert set(rows.values()) <= {"sent", "interrupted"}, (point, rows)
        assert {i for i, s in rows.items() if s == "sent"} <= delivered, point
        assert delivered <= set(rows), point
        # A row is `interrupted` only if the dead process had marked it `sending` (its HTTP
        # call may have happened); rows it had merely claimed went back to pending and out.
        unsent = {i for i, s in rows.items() if s == "interrupted"} - delivered
        assert len(unsent) <= 2, (point, unsent)  # at most the rows in flight at the crash
        if point.startswith("outbox.claimed"):
            assert unsent == set() and delivered == set(rows), (point, unsent)
        unsent_by_point[point] = len(unsent)
        # Delivering changes no money and no journal.
        now = look(url)
        assert now["state"] == before["state"] and now["journal"] == before["journal"], point
        assert verified(url) == [], point
        if unsent:  # not lost silently: `storefront outbox --requeue interrupted` sends them
            db = Database(url)
            try:
                outbox.requeue(db, now=DELIVER_AT)
            finally:
                db.dispose()
            done = driver(op="run", url=url, action="deliver", log=str(log), late=late + 1)
            assert done["exit"] == 0 and set(_rows(url).values()) == {"sent"}, point
            assert {i for i, _t in _log(log)} == set(rows), point
    # Killed before the first claim or after the last mark, nothing is left unsent.
    assert unsent_by_point[ref.points[0]] == 0 and unsent_by_point[ref.points[-1]] == 0


PG_ACTIONS = ["buy_referred", "confirm_payment", "telegram_paid", "withdraw_points",
              "approve_withdrawal"]


@pytest.mark.pg
@pytest.mark.parametrize("action", PG_ACTIONS)
def test_killed_on_postgres_before_and_after_commit_then_retried_gives_the_same_bytes(
        action: str, driver: Driver, pg_url: str, references: dict[str, Reference]) -> None:
    """On PostgreSQL the killed backend's transaction is rolled back by the server; the
    retry ends in the very state (journal hash included) SQLite's clean run gives."""
    assert driver(op="setup", url=pg_url)["exit"] == 0
    label = LABELS[action]
    for point in (f"commit.before:{label}:1", f"commit.after:{label}:1"):
        killed = driver(op="run", url=pg_url, action=action, fault=point)
        assert killed["exit"] == KILLED, (point, killed)
    retry = driver(op="run", url=pg_url, action=action)
    assert retry["exit"] == 0, retry
    assert look(pg_url) == references[action].state
    assert verified(pg_url) == []
