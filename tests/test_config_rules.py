"""The rules operators change (SPEC §7 `config`) and products taken off sale, at the engine:
one check for replay, chat and CLI, a refusal that names the rule, a journal entry with the
actor, and nothing changed by a refusal."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from engine import service
from engine.config import InvalidSetting
from engine.errors import Refusal
from engine.replay import Replayer
from storage.db import Database
from storage.models import JournalTxn, Setting
from tests.helpers import at, seed_shop, state


def _settings(db: Database) -> dict[str, str]:
    return dict(db.read(lambda s: s.execute(select(Setting.key, Setting.value)).all()))


def _journal(db: Database, kind: str) -> list[tuple[str | None, dict]]:
    rows = db.read(lambda s: s.execute(select(JournalTxn.actor, JournalTxn.body).where(
        JournalTxn.kind == kind).order_by(JournalTxn.id)).all())
    return [(actor, json.loads(body)) for actor, body in rows]


@pytest.mark.parametrize("sections,key", [
    ({"queue": {"accel_rate": "5"}}, "queue.accel_rate"),
    ({"queue": {"min_order": "50.00"}, "points": {"withdraw_fee": "-1"}}, "points.withdraw_fee"),
    ({"points": {"pool_rate": "0.50", "bonus": "1"}}, "points.bonus"),
    ({"lottery": {"odds": "0.5"}}, "lottery"),
    ({"store": {"settle_days": "366"}}, "store.settle_days"),
    ({"store": {"timezone": "Mars/Olympus_Mons"}}, "store.timezone"),
])
def test_a_refused_change_names_the_rule_and_changes_nothing(memdb: Database, sections, key):
    before = (_settings(memdb), _journal(memdb, "config"))
    with pytest.raises(InvalidSetting) as refused:
        service.change_settings(memdb, sections, actor="tg:1")
    assert refused.value.code == "invalid_config"
    assert refused.value.key == key
    assert (_settings(memdb), _journal(memdb, "config")) == before


@pytest.mark.parametrize("zone", ["Asia", "America", "Etc", "Asia/", "__pycache__"])
def test_a_timezone_naming_a_folder_of_the_tz_database_is_invalid_config(
        memdb: Database, zone: str):
    # ZoneInfo("Asia") raises IsADirectoryError, which used to escape the check and end the
    # whole replay ("cannot read FILE: Is a directory")
    replay = Replayer(memdb)
    final = replay.run([json.dumps({"op": "config", "store": {"timezone": zone}}),
                        json.dumps({"op": "join", "user": "A"})])
    assert final["errors"] == [{"line": 1, "code": "invalid_config"}]
    assert list(final["users"]) == ["A"]


def test_change_settings_is_the_config_event_journaled_with_the_actor(memdb: Database):
    changed = service.change_settings(
        memdb, {"store": {"settle_days": "7"}, "queue": {"min_order": "50"}}, actor="tg:1")
    assert changed == {"store.settle_days": ("0", "7"), "queue.min_order": ("100.00", "50")}
    again = service.change_settings(memdb, {"store": {"settle_days": "3"}}, actor="cli:ops")
    assert again == {"store.settle_days": ("7", "3")}
    assert _journal(memdb, "config") == [
        ("tg:1", {"store.settle_days": "7", "queue.min_order": "50"}),
        ("cli:ops", {"store.settle_days": "3"}),
    ]


def test_a_product_off_sale_cannot_be_bought_and_comes_back(memdb: Database):
    seed_shop(memdb)
    off = service.set_on_sale(memdb, sku="tea", active=False, at=at(1, 9), actor="tg:1")
    assert off == {"sku": "tea", "name": "tea", "active": False, "changed": True}
    with pytest.raises(Refusal) as refused:
        service.buy(memdb, user="A", sku="tea", at=at(1, 10))
    assert refused.value.code == "product_inactive"
    assert state(memdb)["entries"] == []
    on = service.set_on_sale(memdb, sku="tea", active=True, at=at(1, 11), actor="tg:2")
    assert on["changed"] is True
    assert service.buy(memdb, user="A", sku="tea", at=at(1, 12))["total"] == 10000
    assert _journal(memdb, "product_sale") == [("tg:1", {"sku": "tea", "active": False}),
                                                ("tg:2", {"sku": "tea", "active": True})]


def test_switching_to_the_state_a_product_is_in_records_nothing(memdb: Database):
    seed_shop(memdb)
    assert service.set_on_sale(memdb, sku="tea", active=True, actor="tg:1")["changed"] is False
    assert _journal(memdb, "product_sale") == []
    with pytest.raises(Refusal) as refused:
        service.set_on_sale(memdb, sku="nope", active=False, actor="tg:1")
    assert refused.value.code == "unknown_product"


def test_changing_a_product_keeps_it_off_sale(memdb: Database):
    # before: every product event put the product back on sale, so a price change by an
    # operator (or a replayed `product` line) silently relisted what was taken off sale
    seed_shop(memdb)
    service.set_on_sale(memdb, sku="tea", active=False, actor="tg:1")
    service.upsert_product(memdb, sku="tea", price="120.00", margin="0.50", lock_days=15,
                           scheme="both", at=at(2), actor="tg:1")
    with pytest.raises(Refusal) as refused:
        service.buy(memdb, user="A", sku="tea", at=at(2, 11))
    assert refused.value.code == "product_inactive"
    assert _journal(memdb, "product")[-1][1]["active"] is False
