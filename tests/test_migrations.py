"""The schema comes from Alembic alone, and the migrations match the models exactly."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from engine import service
from storage.db import Database
from storage.migrate import alembic_config, current_revision, head_revision, migrate
from storage.models import Base, OrderLine
from tests.test_report import local

# Every database here is made by Alembic itself (tests/conftest.py copies a template for the
# rest of the suite; tests/test_template_schema.py proves the copy equal).
pytestmark = pytest.mark.real_migrations


def test_migrations_produce_exactly_the_models(db: Database):
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert current_revision(db) == head_revision()


def test_migrating_twice_is_harmless(db: Database):
    migrate(db)
    assert current_revision(db) == head_revision()


def test_0012_copies_each_existing_order_into_one_line(db: Database):
    """Down to 0011 (the last release) and up again: every order becomes its line 1, with
    what its settlement granted, and the downgrade leaves 0011's tables only."""
    t = local(0)
    service.upsert_product(db, sku="RICE", price="100.00", margin="0.5", lock_days=0,
                           scheme="points", at=t)
    service.join(db, user="ANN", at=t)
    service.buy(db, user="ANN", sku="RICE", at=local(1), order="a1")
    service.buy(db, user="ANN", sku="RICE", at=local(2), order="a2")
    cols = (OrderLine.order_no, OrderLine.line_no, OrderLine.sku, OrderLine.qty,
            OrderLine.total, OrderLine.cash, OrderLine.minted)
    lines = db.read(lambda s: s.execute(select(*cols).order_by(OrderLine.order_no)).all())
    assert len(lines) == 2 and {r.line_no for r in lines} == {1}
    cfg = alembic_config(db.url)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0011")
        assert "order_lines" not in inspect(conn).get_table_names()
        command.upgrade(cfg, "head")
    again = db.read(lambda s: s.execute(select(*cols).order_by(OrderLine.order_no)).all())
    assert [tuple(r) for r in again] == [tuple(r) for r in lines]
