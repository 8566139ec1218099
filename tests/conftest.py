"""Shared fixtures: fresh databases and the real Redis. In CI (`CI=true`) a missing service
fails the run instead of skipping its tests.

Databases come from one factory, `make_db(where)`: a migrated `Database` at a URL, or a fresh
one of a kind ("sqlite": a real file, "memory", "postgresql": a schema of its own in database
`test`), disposed (and its schema dropped) after the test. `sqlite_db`, `pg_db`, `memdb` and
the parametrised `db` (the same test on SQLite and on PostgreSQL) are its databases at
`sqlite_url`, `pg_url`, in memory and at `db_url`. Where a function-scoped fixture cannot
serve (hypothesis examples, module-scoped fixtures, helpers given a URL), `migrated(url)` and
`pg_schema(admin_url)` do the same as context managers.

A shop in a known state: `tests.helpers.seed_shop` builds one through the engine's service
API (config, products, users, a queue seed) and `tests.release_helpers.make_shop` adds
matured orders on top of it; `Chat.setup_shop` (tests/handlers_kit.py) and
tests/test_telegram_e2e.py's `setup_shop` build one through the operator's chat commands,
where those commands are part of what is tested; the WeChat modules' `shop` fixture
(tests/wechat_harness.py, `open_shop`) is the running server with `stock`'s catalogue."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from storage.db import Database
from storage.migrate import migrate

PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"

MakeDb = Callable[..., Database]  # the `make_db` fixture: make_db(where, **options)

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


@contextmanager
def pg_schema(admin_url: str) -> Iterator[str]:
    """A fresh schema for the time of the block: yields a URL whose search_path is it."""
    schema, url = new_pg_schema(admin_url)
    try:
        yield url
    finally:
        drop_pg_schema(admin_url, schema)


@pytest.fixture
def pg_url(pg_admin: str) -> Iterator[str]:
    with pg_schema(pg_admin) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return f"sqlite:///{tmp_path}/store.db"


URL_FIXTURES = {"sqlite": "sqlite_url", "postgresql": "pg_url"}


@pytest.fixture(params=list(URL_FIXTURES))
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on a SQLite file and on PostgreSQL."""
    return request.getfixturevalue(URL_FIXTURES[request.param])


@contextmanager
def migrated(url: str, **options: Any) -> Iterator[Database]:
    """A `Database` at `url` (`options` as `Database` takes them) with the schema at head;
    disposed on leaving."""
    database = Database(url, **options)
    try:
        migrate(database)
        yield database
    finally:
        database.dispose()


@pytest.fixture
def make_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeDb]:
    """The one database factory. `make_db(where, **options)` is a migrated `Database`
    (`options` as `Database` takes them); `where` is a URL, or a kind for a fresh one:
    "sqlite" (a file of its own under the test's tmp_path), "memory" (SQLite in memory) or
    "postgresql" (a schema of its own in database `test`). After the test every database it
    made is disposed and every schema it made dropped. `sqlite_db`, `pg_db`, `memdb` and
    the parametrised `db` are its databases at `sqlite_url`, `pg_url`, in memory and at
    `db_url`."""
    files = itertools.count(1)
    with ExitStack() as made:

        def make(where: str = "sqlite", **options: Any) -> Database:
            if "://" in where:
                url = where
            elif where == "sqlite":
                url = f"sqlite:///{tmp_path}/db{next(files)}.db"
            elif where == "memory":
                url = "sqlite://"
            elif where == "postgresql":
                url = made.enter_context(pg_schema(request.getfixturevalue("pg_admin")))
            else:
                raise ValueError(f"make_db: {where!r} is neither a URL nor a kind")
            return made.enter_context(migrated(url, **options))

        yield make


# Each URL fixture comes first among the arguments: set up before `make_db`, it is torn down
# after it, so the database is disposed before its schema is dropped.
@pytest.fixture
def sqlite_db(sqlite_url: str, make_db: MakeDb) -> Database:
    """A fresh SQLite file database at `sqlite_url`."""
    return make_db(sqlite_url)


@pytest.fixture
def pg_db(pg_url: str, make_db: MakeDb) -> Database:
    """A fresh PostgreSQL database at `pg_url` (a schema of its own)."""
    return make_db(pg_url)


@pytest.fixture
def db(db_url: str, make_db: MakeDb) -> Database:
    """The same test on a SQLite file and on PostgreSQL (at `db_url`)."""
    return make_db(db_url)


@pytest.fixture
def memdb(make_db: MakeDb) -> Database:
    """A fresh in-memory SQLite database (fast unit tests on the engine)."""
    return make_db("memory")


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        _unavailable("Redis", exc)
    return REDIS_URL


# The WeChat API stand-in (tests/standins/wechat.py) as a fixture, for this app id and secret.
WECHAT_APPID, WECHAT_SECRET = "wx1234567890abcdef", "s3cr3t"


@pytest.fixture
def wechat_api() -> Iterator[Any]:
    from tests.standins import wechat as sw

    with sw.FakeWeChatAPI(appid=WECHAT_APPID, secret=WECHAT_SECRET) as api:
        yield api
