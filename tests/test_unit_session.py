"""A unit of work's Session is kept per thread between units (`Database._keep_idle`, to save
the CPU of building one) and must behave as a new one each time, on SQLite and PostgreSQL:

- each unit starts with nothing in the identity map, nothing in `info`, no pending objects;
- the ORM objects of a committed unit are detached afterwards, as `Session.close` left them;
- a unit that fails leaves nothing written, and the next unit starts clean;
- a unit opened inside another unit, and units on other threads, get sessions of their own.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import inspect, select

from storage.db import Database
from storage.models import Setting
from storage.unit import Rows


class Boom(Exception):
    pass


def test_each_unit_starts_clean_and_leaves_its_objects_detached(db: Database) -> None:
    with db.transaction() as s:
        s.add(Setting(key="a.b", value="1"))
        s.info["left_over"] = True
    with db.transaction() as s:
        assert len(s.identity_map) == 0 and not s.new and not s.dirty and not s.deleted
        assert "left_over" not in s.info and "rows" not in s.info
        loaded = s.get(Setting, "a.b")
        assert loaded is not None and loaded.value == "1"
        Rows(s)
        assert s.info.get("rows") is not None
    assert inspect(loaded).detached
    with db.transaction() as s:
        assert len(s.identity_map) == 0 and dict(s.info) == {}
        again = s.get(Setting, "a.b")
        assert again is not None and again is not loaded
        again.value = "2"
    with db.transaction() as s:
        assert s.execute(select(Setting.value).where(Setting.key == "a.b")).scalar_one() == "2"


def test_a_failed_unit_writes_nothing_and_the_next_starts_clean(db: Database) -> None:
    with pytest.raises(Boom), db.transaction() as s:
        s.add(Setting(key="x.y", value="1"))
        s.flush()  # in the database, inside the transaction
        s.info["left_over"] = True
        raise Boom
    with pytest.raises(Boom):
        db.run(lambda s: (s.add(Setting(key="x.z", value="1")), s.flush(), _raise()))
    with db.transaction() as s:
        assert len(s.identity_map) == 0 and not s.new and dict(s.info) == {}
        assert s.get(Setting, "x.y") is None and s.get(Setting, "x.z") is None
        s.add(Setting(key="x.y", value="3"))
    assert db.read(lambda s: s.get(Setting, "x.y").value) == "3"  # type: ignore[union-attr]


def _raise() -> None:
    raise Boom


def test_a_unit_inside_a_unit_has_its_own_session(pg_db: Database) -> None:
    db = pg_db  # SQLite's BEGIN IMMEDIATE would wait for the outer unit's lock
    with db.transaction() as outer:
        outer.add(Setting(key="o.k", value="1"))
        with db.transaction() as inner:
            assert inner is not outer and len(inner.identity_map) == 0
            inner.add(Setting(key="i.k", value="2"))
        assert outer.in_transaction() and "o.k" in {o.key for o in outer.new}
    assert db.read(lambda s: sorted(s.scalars(select(Setting.key)
                                              .where(Setting.key.in_(["o.k", "i.k"]))))) \
        == ["i.k", "o.k"]
    with db.transaction() as s:  # both kept sessions were given back clean
        assert len(s.identity_map) == 0 and dict(s.info) == {}


def test_threads_never_share_a_session(db: Database) -> None:
    seen: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                def unit(s: object, i: int = i) -> None:
                    seen.setdefault(n, []).append(id(s))
                    s.add(Setting(key=f"t{n}.{i}", value=str(i)))  # type: ignore[attr-defined]
                db.run(unit)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for n in seen:  # each thread reused its own session, and no other thread's
        assert len(set(seen[n])) == 1
    assert len({ids[0] for ids in seen.values()}) == 3
    count = db.read(lambda s: len(s.scalars(select(Setting.key)
                                            .where(Setting.key.like("t%"))).all()))
    assert count == 60


def test_each_read_starts_clean_and_leaves_its_objects_detached(db: Database) -> None:
    with db.transaction() as s:
        s.add(Setting(key="r.a", value="1"))

    def first(s: object) -> Setting:
        assert len(s.identity_map) == 0  # type: ignore[attr-defined]
        s.info["left_over"] = True  # type: ignore[attr-defined]
        return s.get(Setting, "r.a")  # type: ignore[attr-defined, no-any-return]

    loaded = db.read(first)
    assert loaded.value == "1" and inspect(loaded).detached
    with pytest.raises(Boom), db.reading() as s:
        assert len(s.identity_map) == 0 and dict(s.info) == {}
        s.get(Setting, "r.a")
        raise Boom
    with db.transaction() as w:
        w.get(Setting, "r.a").value = "2"  # type: ignore[union-attr]
    with db.reading() as s:  # a new snapshot: the change is seen, nothing of before is held
        assert len(s.identity_map) == 0 and dict(s.info) == {}
        again = s.get(Setting, "r.a")
        assert again is not None and again is not loaded and again.value == "2"
