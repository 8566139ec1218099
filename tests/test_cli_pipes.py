"""Every command that prints can be piped into `head`: when the reader stops reading, the
command ends quietly with SIGPIPE's status (141), never with a BrokenPipeError traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import migrated
from tests.release_helpers import ROOT, make_shop

VECTOR = ROOT / "tests" / "vectors" / "seed-points-mint.jsonl"


@pytest.fixture(scope="module")
def shop_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('pipes') / 'shop.db'}"
    with migrated(url) as db:
        make_shop(db, entries=3)
    return url


def into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """`storefront ARGS | head -0`, made certain: the reading end is closed before the
    command starts, so its very first write finds nobody reading."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in os.environ.items()
           if k not in ("STOREFRONT_FAULT", "REDIS_URL", "DATABASE_URL")}
    try:
        return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=ROOT, env=env,
                              stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", [
    ["replay", str(VECTOR)],
    ["state"],
    ["verify"],
    ["export", "--what", "journal", "--format", "jsonl"],
    ["export", "--what", "entries", "--format", "csv"],
    ["report", "--json"],
    ["outbox"],
], ids=lambda c: " ".join(c[:3]).replace(str(VECTOR), "VECTOR"))
def test_a_reader_that_stops_ends_the_command_quietly(command: list[str], shop_url: str,
                                                      tmp_path: Path) -> None:
    if command[0] != "replay":
        command = [*command, "--db", shop_url]
    done = into_closed_pipe(*command)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 141, done.stderr
