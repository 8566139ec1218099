"""Schema migrations (Alembic) — the only way the schema is made, in the app and in tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .db import Database

_HERE = Path(__file__).resolve().parent
_template: sqlite3.Connection | None = None


def alembic_config(url: str | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(db: Database) -> None:
    """Bring the schema to the newest revision (the app calls this on every start)."""
    if db.memory and _template_copy(db):
        return
    cfg = alembic_config(db.url)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _template_copy(db: Database) -> bool:
    """Fresh in-memory databases (replay, property tests) copy one migrated template.

    The template itself is made by Alembic, so the schema has one source; copying it with
    SQLite's backup API costs a millisecond instead of a full migration run."""
    global _template
    if _template is None:
        tmpl = Database("sqlite://")
        cfg = alembic_config(tmpl.url)
        with tmpl.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        raw = tmpl.engine.raw_connection()
        _template = sqlite3.connect(":memory:", check_same_thread=False)
        raw.driver_connection.backup(_template)  # type: ignore[union-attr]
        raw.close()
        tmpl.dispose()
    raw = db.engine.raw_connection()
    try:
        _template.backup(raw.driver_connection)  # type: ignore[arg-type]
    finally:
        raw.close()
    return True
