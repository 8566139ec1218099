"""Schema migrations (Alembic) — the only way the schema is made, in the app and in tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError

from .db import Database

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

_HERE = Path(__file__).resolve().parent
_template: sqlite3.Connection | None = None

# The newest migration's revision. A database already there is left alone without Alembic,
# whose import and script scan are most of a short command's start-up (`storefront verify`,
# `state`, `run`). tests/test_migrate_head.py fails when a new migration is not named here.
HEAD = "0012"


def alembic_config(url: str | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(db: Database) -> None:
    """Bring the schema to the newest revision (the app calls this on every start)."""
    if db.memory and _template_copy(db):
        return
    if at_head(db):
        return
    from alembic import command

    cfg = alembic_config(db.url)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def at_head(db: Database) -> bool:
    """Whether the schema is already at `HEAD` (one row in Alembic's version table)."""
    try:
        with db.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    except DBAPIError:  # no version table yet: a new database
        return False
    return [row[0] for row in rows] == [HEAD]


def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _template_copy(db: Database) -> bool:
    """Fresh in-memory databases (replay, property tests) copy one migrated template.

    The template itself is made by Alembic, so the schema has one source; copying it with
    SQLite's backup API costs a millisecond instead of a full migration run."""
    global _template
    if _template is None:
        from alembic import command

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
