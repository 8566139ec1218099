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

import atexit
import itertools
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

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
    if _PG_SCHEMAS is not None and admin_url == PG_ADMIN_URL and _PG_SCHEMAS.failed is None:
        _PG_SCHEMAS.drop_later(schema)  # on the schemas' thread, while tests go on
    else:
        _drop_pg_schema_now(admin_url, schema)


def _drop_pg_schema_now(admin_url: str, schema: str, lock_timeout: str = "0") -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"SET lock_timeout = '{lock_timeout}'")
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
    disposed on leaving. A database that does not exist yet (a new SQLite file, an empty
    PostgreSQL schema) is made as `migrate_fresh` makes it."""
    database = Database(url, **options)
    try:
        migrate_fresh(database)
        yield database
    finally:
        database.dispose()


# Fresh databases at head without running Alembic each time (it was ~50 ms a SQLite file and
# ~250 ms a PostgreSQL schema, for every one of the suite's ~1,000 databases): Alembic
# migrates one template per kind per session, and every fresh database is that template's
# copy. SQLite: the migrated file's bytes. PostgreSQL: the very statements Alembic sent to
# the template's empty schema, recorded as they went and replayed, in one transaction, in
# the new empty schema (the statements name no schema: each lands in its connection's
# search_path). tests/test_template_schema.py proves the copies equal a migrated database;
# tests marked `real_migrations` (tests/test_migrations.py) always run Alembic itself.
_SQLITE_TEMPLATE: Path | None = None
_PG_SCRIPT: list[tuple[str, Any, bool]] | None = None
_REAL_MIGRATIONS = False  # set while a `real_migrations` test runs


def migrate_fresh(db: Database) -> None:
    """`migrate(db)`, or the template's copy when `db` is a fresh SQLite file or an empty
    PostgreSQL schema: the same tables, indexes, rows and revision either way."""
    if not _REAL_MIGRATIONS:
        if db.dialect == "sqlite" and not db.memory:
            path = Path(make_url(db.url).database or "")
            if not path.exists():
                shutil.copyfile(_sqlite_template(), path)
                return
        elif db.dialect == "postgresql" and _pg_schema_is_empty(db):
            _pg_schemas().fill(db)
            return
    migrate(db)


def _sqlite_template() -> Path:
    global _SQLITE_TEMPLATE
    if _SQLITE_TEMPLATE is None:
        where = Path(tempfile.mkdtemp(prefix="template-db-"))
        atexit.register(shutil.rmtree, where, True)
        template = Database(f"sqlite:///{where}/template.db")
        migrate(template)
        template.dispose()  # the last connection closed: everything is in the file, no -wal
        assert not (where / "template.db-wal").exists()
        _SQLITE_TEMPLATE = where / "template.db"
    return _SQLITE_TEMPLATE


def _pg_schema_is_empty(db: Database) -> bool:
    """No table, sequence, view, type or function in the URL's schema (search_path)."""
    with db.engine.connect() as conn:
        return not conn.exec_driver_sql(
            "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = current_schema()"
            "::regnamespace) OR EXISTS (SELECT 1 FROM pg_type WHERE typnamespace = "
            "current_schema()::regnamespace) OR EXISTS (SELECT 1 FROM pg_proc WHERE "
            "pronamespace = current_schema()::regnamespace)").scalar_one()


def _pg_script() -> list[tuple[str, Any, bool]]:
    """What Alembic sends to an empty schema to bring it to head, recorded once (on a
    template schema in the test database)."""
    global _PG_SCRIPT
    if _PG_SCRIPT is None:
        schema, template_url = new_pg_schema(PG_ADMIN_URL)
        try:
            template = Database(template_url)
            sent: list[tuple[str, Any, bool]] = []

            # (after: only what succeeded; a probe that fails on an empty schema, such as
            # a read of a version table not there yet, changed nothing and is not replayed)
            @event.listens_for(template.engine, "after_cursor_execute")
            def record(_conn: Any, _cursor: Any, statement: str, parameters: Any,
                       _context: Any, many: bool) -> None:
                sent.append((statement, parameters, many))

            migrate(template)
            template.dispose()
        finally:
            _drop_pg_schema_now(PG_ADMIN_URL, schema)
        assert schema not in repr(sent), "a migration named its schema: cannot replay it"
        _PG_SCRIPT = sent
    return _PG_SCRIPT


def _replay(db: Database, script: list[tuple[str, Any, bool]]) -> None:
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters, many in script:
            if many:
                cursor.executemany(statement, [dict(p) for p in parameters])
            else:
                cursor.execute(statement, None if parameters is None else dict(parameters))
        cursor.close()
        raw.commit()
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()


class _PgSchemas:
    """PostgreSQL's side of the copies, on a thread of its own so that the server's DDL work
    (most of a schema's cost) runs on the other core while tests run: it keeps `AHEAD`
    schemas replayed ahead, and drops the schemas tests are done with. `fill(db)` gives the
    empty schema `db` stands on one of them: the empty one is dropped and the ready one
    renamed to its name (everything in a schema moves with it; defaults and constraints
    refer to their sequences and tables by oid)."""

    AHEAD = 2

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ready: list[str] = []
        self.to_drop: list[str] = []
        self.stuck: list[str] = []  # drops that timed out waiting for a lock
        self.failed: BaseException | None = None
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="pg-schemas", daemon=True)
        self.thread.start()

    def fill(self, db: Database) -> None:
        with self.cond:
            while not self.ready and self.failed is None:
                self.cond.wait()
            if self.failed is not None:
                raise RuntimeError("making a template schema failed") from self.failed
            ready = self.ready.pop(0)
            self.cond.notify_all()
        with db.engine.begin() as conn:
            target = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
            conn.exec_driver_sql(f'DROP SCHEMA "{target}"')  # empty: no CASCADE needed
            conn.exec_driver_sql(f'ALTER SCHEMA "{ready}" RENAME TO "{target}"')

    def drop_later(self, schema: str) -> None:
        with self.cond:
            self.to_drop.append(schema)
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.to_drop.extend(self.stuck + self.ready)
            self.ready.clear()
            self.cond.notify_all()
        self.thread.join(120)

    def _run(self) -> None:
        try:
            script = _pg_script()
            while True:
                with self.cond:
                    while not (self.to_drop or self.stopping
                               or len(self.ready) < self.AHEAD):
                        self.cond.wait()
                    make = not self.stopping and len(self.ready) < self.AHEAD
                    drop = None if make or not self.to_drop else self.to_drop.pop()
                    if not make and drop is None:
                        return  # stopping, and nothing left to drop
                if drop is not None:
                    try:  # a connection left open in a transaction must not stall the rest
                        _drop_pg_schema_now(PG_ADMIN_URL, drop, lock_timeout="5s")
                    except Exception:  # noqa: BLE001 - one more try at the end
                        if not self.stopping:
                            with self.cond:
                                self.stuck.append(drop)
                    continue
                schema, url = new_pg_schema(PG_ADMIN_URL)
                made = Database(url)
                try:
                    _replay(made, script)
                finally:
                    made.dispose()
                with self.cond:
                    self.ready.append(schema)
                    self.cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the test waiting for it
            with self.cond:
                self.failed = exc
                self.cond.notify_all()


_PG_SCHEMAS: _PgSchemas | None = None


def _pg_schemas() -> _PgSchemas:
    global _PG_SCHEMAS
    if _PG_SCHEMAS is None:
        _pg_script()  # recorded here, before the thread starts
        _PG_SCHEMAS = _PgSchemas()
        atexit.register(_PG_SCHEMAS.close)
    return _PG_SCHEMAS


@pytest.fixture(autouse=True)
def _real_migrations(request: pytest.FixtureRequest) -> Iterator[None]:
    global _REAL_MIGRATIONS
    _REAL_MIGRATIONS = request.node.get_closest_marker("real_migrations") is not None
    try:
        yield
    finally:
        _REAL_MIGRATIONS = False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_migrations: every database the test's fixtures "
                            "make is migrated by Alembic itself, not copied from a template")


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


@pytest.fixture(scope="session")
def storefront_zygote() -> Any:
    """The fork server `storefront` processes are started from (tests/storefront_zygote.py):
    its imports paid once a session, by the first test that needs it."""
    from tests.storefront_zygote import shared

    return shared()
