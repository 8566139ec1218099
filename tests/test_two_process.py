"""Issue 19: the shop on two processes. Two `storefront run` on one PostgreSQL and Redis, in
webhook mode, behind a loopback round-robin proxy (benchmarks/two_process.py), take 500 mixed
updates from 50 users (per round: /me, /buy, the pre-checkout query, the payment, /transfer;
the operator's /deposit and /release halfway) — each user's in order, as Telegram sends them,
half of them landing on each process. Every effect must happen exactly once: each update
stored once and done, each reply sent once, each checkout, payment, transfer and release
recorded once, and `verify` clean. (`make bench`'s `two-process` row runs 5,000 and compares
with one process; docs/scaling.md.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarks.two_process import Plan, run_on

pytestmark = pytest.mark.slow  # two service processes started: ~50 s on a loaded 2-core box


def test_two_processes_behind_a_proxy_do_every_effect_exactly_once(
        pg_url: str, redis_url: str, tmp_path: Path) -> None:
    plan = Plan(users=50, rounds=2)
    started = time.monotonic()
    got = run_on(pg_url, redis_url, 2, plan, tmp_path)
    print(f"\ntwo processes: {got['updates']} updates in {got['seconds']:.1f} s "
          f"({got['updates_per_s']:.0f}/s), per process {got['per_process']}, "
          f"started in {got['start_seconds']} s, all in {time.monotonic() - started:.0f} s")
    assert got["problems"] == [], got
    assert got["updates"] == plan.updates == 502
    # both processes took updates, and each handled what it was given
    assert sorted(got["per_process"].values()) == [251, 251]
    assert got["inbox"] == {"done": 502}
    assert got["charges"] == got["distinct_charges"] == 100
    assert got["checkouts"] == {"paid": 100}
    assert got["journal_kinds"]["transfer"] == 100
    # one release by the operator, paying matured entries (a start-up catch-up release may
    # have paid the first few from what the purchases put in the pool)
    assert got["operator_releases"] == 1
    assert json.loads(got["release_run"][0])["paid"] > 0
    assert got["entries"] == {"released": 50}
    assert got["verify_ok"] is True
    assert got["exit_status"] == [0, 0]  # both stopped cleanly (SIGTERM)
