"""Issue 19: the shop on two processes. Two `storefront run` on one PostgreSQL and Redis, in
webhook mode, behind a loopback round-robin proxy (benchmarks/two_process.py), take 252 mixed
updates from 25 users (per round: /me, /buy, the pre-checkout query, the payment, /transfer;
the operator's /deposit and /release halfway) — each user's in order, as Telegram sends them,
half of them landing on each process. Every effect must happen exactly once: each update
stored once and done, each reply sent once, each checkout, payment, transfer and release
recorded once, and `verify` clean. (`make bench`'s `two-process` row runs 5,000 and compares
with one process; docs/scaling.md.)"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.two_process import Plan, run_on

pytestmark = pytest.mark.slow  # two service processes started: ~50 s on a loaded 2-core box


def test_two_processes_behind_a_proxy_do_every_effect_exactly_once(
        pg_url: str, redis_url: str, tmp_path: Path, storefront_zygote: Any) -> None:
    # 25 users (it was 50): each check below is per update and per effect, not a total that
    # needs many; each user's updates still land on both processes (the proxy hands every
    # update to the next one), 25 users at once, two rounds each: the same ways to double or
    # lose an effect, in half the updates.
    plan = Plan(users=25, rounds=2)
    started = time.monotonic()
    # (each `storefront run` forked from the session's fork server: the imports done once)
    got = run_on(pg_url, redis_url, 2, plan, tmp_path, storefront_zygote)
    print(f"\ntwo processes: {got['updates']} updates in {got['seconds']:.1f} s "
          f"({got['updates_per_s']:.0f}/s), per process {got['per_process']}, "
          f"started in {got['start_seconds']} s, all in {time.monotonic() - started:.0f} s")
    assert got["problems"] == [], got
    assert got["updates"] == plan.updates == 252
    # both processes took updates, and each handled what it was given
    assert sorted(got["per_process"].values()) == [126, 126]
    assert got["inbox"] == {"done": 252}
    assert got["charges"] == got["distinct_charges"] == 50
    assert got["checkouts"] == {"paid": 50}
    assert got["journal_kinds"]["transfer"] == 50
    # one release by the operator, paying matured entries (a start-up catch-up release may
    # have paid the first few from what the purchases put in the pool)
    assert got["operator_releases"] == 1
    assert json.loads(got["release_run"][0])["paid"] > 0
    assert got["entries"] == {"released": 25}
    assert got["verify_ok"] is True
    assert got["exit_status"] == [0, 0]  # both stopped cleanly (SIGTERM)
