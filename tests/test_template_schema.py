"""The suite's fresh databases are copies of one migrated template (tests/conftest.py,
`migrate_fresh`): a SQLite file's bytes, or the statements Alembic sent to an empty
PostgreSQL schema, replayed. Here each copy is compared with a database Alembic migrates
itself: the same tables, columns, defaults, constraints, indexes, sequences, rows and
revision."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from engine import service
from engine.verify import verify
from storage.db import Database
from storage.migrate import current_revision, head_revision, migrate
from tests import conftest
from tests.conftest import migrated, pg_schema


def _sqlite_shape(db: Database) -> dict[str, Any]:
    with db.engine.connect() as conn:
        objects = conn.exec_driver_sql(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").all()
        rows = {name: conn.exec_driver_sql(f'SELECT * FROM "{name}" ORDER BY 1').all()
                for kind, name, _, _ in objects if kind == "table"}
        pragmas = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                   for p in ("journal_mode", "user_version", "page_size", "encoding",
                             "auto_vacuum")}
    return {"objects": objects, "rows": rows, "pragmas": pragmas}


_PG_QUERIES = {
    "columns": "SELECT table_name, column_name, ordinal_position, data_type, "
               "character_maximum_length, numeric_precision, is_nullable, column_default "
               "FROM information_schema.columns WHERE table_schema = current_schema() "
               "ORDER BY 1, 3",
    "constraints": "SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid) "
                   "FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
                   "WHERE k.connamespace = current_schema()::regnamespace ORDER BY 1, 2",
    "indexes": "SELECT tablename, indexname, replace(indexdef, current_schema() || '.', '') "
               "FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1, 2",
    "relations": "SELECT relname, relkind, relpersistence FROM pg_class "
                 "WHERE relnamespace = current_schema()::regnamespace ORDER BY 1",
    "sequences": "SELECT sequencename, data_type, start_value, increment_by, last_value "
                 "FROM pg_sequences WHERE schemaname = current_schema() ORDER BY 1",
    "owned": "SELECT s.relname, t.relname, a.attname FROM pg_depend d "
             "JOIN pg_class s ON s.oid = d.objid JOIN pg_class t ON t.oid = d.refobjid "
             "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid "
             "WHERE s.relkind = 'S' AND s.relnamespace = current_schema()::regnamespace "
             "ORDER BY 1",
    "types": "SELECT typname FROM pg_type WHERE typnamespace = current_schema()::regnamespace "
             "AND typtype <> 'c' ORDER BY 1",
    "functions": "SELECT proname FROM pg_proc "
                 "WHERE pronamespace = current_schema()::regnamespace ORDER BY 1",
    "triggers": "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c "
                "ON c.oid = t.tgrelid WHERE NOT t.tgisinternal AND "
                "c.relnamespace = current_schema()::regnamespace "
                "ORDER BY 1, 2",
}


def _pg_shape(db: Database) -> dict[str, Any]:
    with db.engine.connect() as conn:
        shape: dict[str, Any] = {k: conn.exec_driver_sql(q).all()
                                 for k, q in _PG_QUERIES.items()}
        shape["rows"] = {table: conn.exec_driver_sql(f'SELECT * FROM "{table}" ORDER BY 1')
                         .all() for table, kind, _ in shape["relations"] if kind == "r"}
    return shape


def _used(db: Database) -> None:
    """The copy works as a database: a shop on it, the journal verified."""
    service.upsert_product(db, sku="TEA", price="20.00", margin="0.30", lock_days=15,
                           scheme="both", name="Tea", actor="test")
    service.join(db, user="ANN")
    service.buy(db, user="ANN", sku="TEA", order="t1")
    assert verify(db).ok


def _is_the_migrated_one(copy: Database, real_url: str,
                         shape: Callable[[Database], dict[str, Any]]) -> None:
    """`copy` has the `shape` of a database Alembic migrates itself at `real_url`, is at the
    head revision, and works as a database (`_used`)."""
    real = Database(real_url)
    try:
        migrate(real)
        assert shape(copy) == shape(real)
    finally:
        real.dispose()
    assert current_revision(copy) == head_revision()
    _used(copy)


def test_a_sqlite_file_copied_from_the_template_is_the_migrated_one(tmp_path: Path) -> None:
    with migrated(f"sqlite:///{tmp_path}/copy.db") as copy:
        assert conftest._SQLITE_TEMPLATE is not None  # it was a copy
        _is_the_migrated_one(copy, f"sqlite:///{tmp_path}/real.db", _sqlite_shape)


@pytest.mark.pg
def test_a_postgresql_schema_replayed_from_the_template_is_the_migrated_one(
        pg_admin: str) -> None:
    with pg_schema(pg_admin) as copy_url, pg_schema(pg_admin) as real_url, \
            migrated(copy_url) as copy:
        assert conftest._PG_SCRIPT is not None  # it was a replay
        _is_the_migrated_one(copy, real_url, _pg_shape)


def test_a_database_that_exists_is_migrated_by_alembic(tmp_path: Path) -> None:
    """Only a database that does not exist yet is copied: one that does goes through
    `migrate` (here, from an empty file Alembic brings to head)."""
    (tmp_path / "empty.db").touch()
    with migrated(f"sqlite:///{tmp_path}/empty.db") as db:
        assert current_revision(db) == head_revision()
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM pools")).scalar_one() == 2
