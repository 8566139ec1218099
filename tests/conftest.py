"""Shared fixtures: a fresh database on SQLite (a real file) and on PostgreSQL (a schema of
its own in database `test`), and the real Redis. In CI (`CI=true`) a missing service fails
the run instead of skipping its tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from storage.db import Database
from storage.migrate import migrate

PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"

# The WeChat modules' shared `keys` and `shop` fixtures (a module's own fixture of the same
# name takes precedence).
pytest_plugins = ["tests.wechat_harness"]


def _unavailable(what: str, exc: Exception) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required in CI but unavailable: {exc}")
    pytest.skip(f"{what} unavailable: {exc}")


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[str]:
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=5) as conn:
            conn.execute("select 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL"
        _unavailable("PostgreSQL", exc)
    yield PG_ADMIN_URL


def new_pg_schema(admin_url: str) -> tuple[str, str]:
    """A fresh schema; returns (schema, SQLAlchemy URL whose search_path is that schema)."""
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in admin_url else "?"
    return schema, f"{admin_url}{sep}options=-csearch_path%3D{schema}"


def drop_pg_schema(admin_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_url(pg_admin: str) -> Iterator[str]:
    schema, url = new_pg_schema(pg_admin)
    try:
        yield url
    finally:
        drop_pg_schema(pg_admin, schema)


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The same test on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
    else:
        admin = request.getfixturevalue("pg_admin")
        schema, url = new_pg_schema(admin)
        try:
            yield url
        finally:
            drop_pg_schema(admin, schema)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    migrate(database)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def memdb() -> Iterator[Database]:
    """A fresh in-memory SQLite database (fast unit tests on the engine)."""
    database = Database("sqlite://")
    migrate(database)
    yield database
    database.dispose()


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        _unavailable("Redis", exc)
    return REDIS_URL
