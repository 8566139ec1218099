"""The shared replay vectors (SPEC §7), copied here as data, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from engine.replay import Replayer
from storage.db import Database
from tests.storefront_zygote import storefront

VECTORS = Path(__file__).parent / "vectors"
NAMES = sorted(p.stem for p in VECTORS.glob("*.jsonl"))


def normalised(state: dict) -> dict:
    for entry in state.get("entries", []):
        entry["matures_at"] = datetime.fromisoformat(entry["matures_at"]).timestamp()
    return state


def expected(name: str) -> dict:
    return normalised(json.loads((VECTORS / f"{name}.expected.json").read_text()))


@pytest.mark.parametrize("folder", ["vectors", "vectors-next"])
def test_every_shared_vector_is_copied_here(folder: str):
    """`vectors` and, until they join it, SPEC §9's `vectors-next` (issue 16)."""
    shared = Path(__file__).resolve().parents[2] / "shared" / folder
    if not shared.is_dir():
        pytest.skip(f"no ../shared/{folder} beside this checkout")
    for source in shared.iterdir():
        assert (VECTORS / source.name).read_bytes() == source.read_bytes(), source.name


@pytest.mark.parametrize("name", NAMES)
def test_vector_matches_in_memory(memdb: Database, name: str):
    with open(VECTORS / f"{name}.jsonl", encoding="utf-8") as fh:
        assert normalised(Replayer(memdb).run(fh)) == expected(name)


@pytest.mark.parametrize("name", NAMES)
def test_vector_matches_on_file_and_postgres(name: str, db: Database):
    with open(VECTORS / f"{name}.jsonl", encoding="utf-8") as fh:
        assert normalised(Replayer(db).run(fh)) == expected(name)


def test_cli_replay_prints_the_expected_json_and_exits_zero():
    name = "bad-input"
    out = storefront("replay", str(VECTORS / f"{name}.jsonl"), check=True)
    assert normalised(json.loads(out.stdout)) == expected(name)


def test_cli_state_prints_an_existing_database(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    storefront("replay", str(VECTORS / "forced-exit.jsonl"), "--db", url, check=True)
    out = storefront("state", "--db", url, check=True)
    assert normalised(json.loads(out.stdout)) == expected("forced-exit")
