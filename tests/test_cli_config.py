"""`storefront config [--db URL] [KEY=VALUE …]`: every rule printed, or changed as one
`config` event journaled with the CLI's actor; a refusal exits non-zero and changes nothing."""

from __future__ import annotations

import getpass
import json

import pytest
from sqlalchemy import select

from bot.cli import main
from engine.config import DEFAULTS
from storage.db import Database
from storage.models import JournalTxn, Setting


def _db(url: str) -> Database:
    return Database(url)


def _config_txns(url: str) -> list[tuple[str | None, dict]]:
    db = _db(url)
    try:
        rows = db.read(lambda s: s.execute(select(JournalTxn.actor, JournalTxn.body).where(
            JournalTxn.kind == "config").order_by(JournalTxn.id)).all())
    finally:
        db.dispose()
    return [(actor, json.loads(body)) for actor, body in rows]


def _settings(url: str) -> dict[str, str]:
    db = _db(url)
    try:
        return dict(db.read(lambda s: s.execute(select(Setting.key, Setting.value)).all()))
    finally:
        db.dispose()


def test_without_arguments_every_rule_is_printed_ready_to_paste_back(
        sqlite_url: str, capsys: pytest.CaptureFixture[str]):
    assert main(["config", "--db", sqlite_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == list(DEFAULTS)
    assert lines[2].split("#")[0].strip() == "store.settle_days=0"
    assert lines[2].split("#")[1].strip().startswith("0 days: return window:")
    at = {line.split("=", 1)[0]: n for n, line in enumerate(lines)}
    assert lines[at["queue.pool_share"]].split("#")[1].strip() == (
        "20%: share of a product's profit paid into the queue pool")
    assert lines[at["queue.min_order"]].split("#")[1].strip().startswith("100.00 CNY: ")


def test_pairs_are_applied_as_one_config_event_with_the_cli_actor(
        sqlite_url: str, capsys: pytest.CaptureFixture[str]):
    assert main(["config", "--db", sqlite_url, "store.settle_days=7",
                 "queue.min_order=50.00"]) == 0
    out = capsys.readouterr().out
    actor = f"cli:{getpass.getuser()}"
    assert out.splitlines() == ["store.settle_days: 0 -> 7", "queue.min_order: 100.00 -> 50.00",
                                f"(journaled as {actor})"]
    assert _config_txns(sqlite_url) == [
        (actor, {"store.settle_days": "7", "queue.min_order": "50.00"})]
    assert main(["config", "--db", sqlite_url]) == 0
    assert "store.settle_days=7 " in capsys.readouterr().out


@pytest.mark.parametrize("pairs,named", [
    (["store.settle_days=7", "queue.accel_rate=2"], "queue.accel_rate: above 1"),
    (["store.timezone=Asia"], "store.timezone: "),
    (["points.bonus=1"], "points.bonus: unknown key"),
    (["lottery.odds=0.5"], "lottery: unknown section"),
    (["store.currency="], "store.currency: "),
])
def test_a_refused_change_exits_non_zero_naming_code_and_rule(
        sqlite_url: str, capsys: pytest.CaptureFixture[str], pairs: list[str], named: str):
    main(["config", "--db", sqlite_url])  # a migrated database to compare against
    capsys.readouterr()
    before = (_settings(sqlite_url), _config_txns(sqlite_url))
    assert main(["config", "--db", sqlite_url, *pairs]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"storefront config: refused invalid_config: {named}"), err
    assert err.rstrip().endswith("nothing was changed")
    assert (_settings(sqlite_url), _config_txns(sqlite_url)) == before


@pytest.mark.parametrize("pair", ["settle_days=7", "store.settle_days", "=7", "store.=7"])
def test_a_pair_that_is_not_section_key_value_is_a_usage_error(
        sqlite_url: str, capsys: pytest.CaptureFixture[str], pair: str):
    assert main(["config", "--db", sqlite_url, pair]) == 2
    assert "expected SECTION.KEY=VALUE" in capsys.readouterr().err
