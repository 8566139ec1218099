"""The schema comes from Alembic alone, and the migrations match the models exactly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from storage.db import Database
from storage.migrate import current_revision, head_revision, migrate
from storage.models import Base


def test_migrations_produce_exactly_the_models(db: Database):
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert current_revision(db) == head_revision()


def test_migrating_twice_is_harmless(db: Database):
    migrate(db)
    assert current_revision(db) == head_revision()
