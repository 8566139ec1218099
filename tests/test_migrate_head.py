"""`migrate` skips Alembic for a database already at the newest revision; `HEAD` must name it."""

from __future__ import annotations

from sqlalchemy import text

from storage import migrate as m
from storage.db import Database


def test_head_names_the_newest_migration() -> None:
    assert m.HEAD == m.head_revision(), "a new migration: set storage/migrate.py HEAD to its id"


def test_a_new_database_is_migrated_and_then_left_alone(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert not m.at_head(db)
        m.migrate(db)
        assert m.at_head(db) and m.current_revision(db) == m.HEAD
        m.migrate(db)  # the fast path: nothing to do, nothing broken
        assert m.current_revision(db) == m.HEAD
    finally:
        db.dispose()


def test_a_database_behind_head_is_still_upgraded(db_url: str) -> None:
    from alembic import command

    db = Database(db_url)
    try:
        m.migrate(db)
        cfg = m.alembic_config(db.url)
        with db.engine.begin() as conn:  # back to before the newest migration
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "-1")
        assert not m.at_head(db)
        m.migrate(db)
        assert m.current_revision(db) == m.HEAD
        with db.engine.connect() as conn:  # the newest migration's table is back
            assert conn.execute(text("SELECT count(*) FROM order_lines")).scalar_one() == 0
    finally:
        db.dispose()
