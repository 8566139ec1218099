"""Group commit (engine/batch.py) on PostgreSQL: the round trips of one batch, and a batch
whose final write or COMMIT fails.

- a batch of purchases costs a fixed number of round trips to the server, whatever its size:
  counted from the wire (libpq's trace of the recording thread's connection: the server
  answers each round trip with one ReadyForQuery), not from the code's own bookkeeping;
- its rows are written and its COMMIT sent in one pipeline (storage/batch_rows.py
  `WideCommit`): when a write of that pipeline fails, or the COMMIT itself, nothing of the
  batch is stored and every caller gets the error — none is answered with success.
"""

from __future__ import annotations

import tempfile
import threading
from datetime import timedelta
from typing import Any

import pytest
from psycopg.pq import Trace
from sqlalchemy import event, text

from engine.batch import GroupCommit
from storage.db import Database
from tests.test_group_commit import T, hold_first_commit, orders, shop, together, wait_until

# BEGIN (psycopg syncs it alone), the head read, the read-ahead, then the rows and the
# COMMIT in one pipeline. It was 5: the COMMIT went alone after the rows.
TRIPS_PER_BATCH = 3


class WireTrips:
    """Round trips of the group-commit thread's connection, one count per transaction
    (checkout to checkin), read from libpq's trace."""

    def __init__(self, db: Database) -> None:
        self.counts: list[int] = []
        self._file: Any = None
        event.listen(db.engine, "checkout", self._checkout)
        event.listen(db.engine, "checkin", self._checkin)

    def _checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if threading.current_thread().name == "group-commit":
            self._file = tempfile.TemporaryFile()
            dbapi_connection.pgconn.trace(self._file.fileno())
            dbapi_connection.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)

    def _checkin(self, dbapi_connection: Any, _record: Any) -> None:
        if self._file is None or threading.current_thread().name != "group-commit":
            return
        dbapi_connection.pgconn.untrace()
        self._file.seek(0)
        wire = self._file.read().decode(errors="replace")
        self._file.close()
        self._file = None
        self.counts.append(sum(1 for line in wire.splitlines()
                               if line.split("\t")[:1] == ["B"] and "\tReadyForQuery" in line))


def _batch_of_four(db: Database, group: GroupCommit, handles: list[str],
                   results: dict[int, Any]) -> None:
    """A warm-up purchase by handles[0], its commit held until four more are queued, then
    those four (handles[1..4]) in one batch; each caller's answer or error in `results`."""

    def call(i: int) -> None:
        try:
            results[i] = group.buy(user=handles[i], sku="rice", at=T + timedelta(minutes=i),
                                   key=f"k{i}")
        except Exception as exc:  # noqa: BLE001 - compared by the test
            results[i] = exc

    warm = threading.Thread(target=group.buy, kwargs={"user": handles[0], "sku": "rice",
                                                      "at": T, "key": "warm"})
    holding = hold_first_commit(db, group, queued=4)
    warm.start()
    wait_until(holding.is_set, "the warm-up's commit held")
    together([threading.Thread(target=call, args=(i,)) for i in range(1, 5)])
    warm.join()


def test_a_batch_costs_a_fixed_number_of_round_trips(pg_db: Database) -> None:
    handles = shop(pg_db, users=6)
    group = GroupCommit(pg_db)
    trips = WireTrips(pg_db)
    results: dict[int, Any] = {}
    try:
        _batch_of_four(pg_db, group, handles, results)
    finally:
        group.close()
    assert [r for r in results.values() if isinstance(r, Exception)] == []
    assert group.batches == 2 and group.purchases == 5  # the warm-up, then the four at once
    # The warm-up also reads its product (settings and products are then held by revision).
    assert trips.counts == [TRIPS_PER_BATCH + 1, TRIPS_PER_BATCH]
    assert orders(pg_db) == 5


FAIL = """
CREATE FUNCTION refuse_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'forced' USING ERRCODE = 'unique_violation';
END $$;
"""
@pytest.mark.parametrize("where", ["write", "commit"])
def test_a_failed_final_write_stores_nothing_and_answers_nobody_with_success(
        pg_db: Database, where: str, caplog: pytest.LogCaptureFixture) -> None:
    handles = shop(pg_db, users=6)
    with pg_db.transaction() as s:
        u0 = s.execute(text("SELECT id FROM users WHERE handle = 'u0'")).scalar_one()
        s.execute(text(FAIL))
        when = f"WHEN (NEW.user_id <> {int(u0)})"  # every order but the warm-up's fails
        if where == "write":
            s.execute(text(f"CREATE TRIGGER refuse BEFORE INSERT ON orders FOR EACH ROW "
                           f"{when} EXECUTE FUNCTION refuse_order()"))
        else:
            s.execute(text(f"CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON orders "
                           f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW {when} "
                           f"EXECUTE FUNCTION refuse_order()"))
    group = GroupCommit(pg_db)
    results: dict[int, Any] = {}
    try:
        _batch_of_four(pg_db, group, handles, results)
    finally:
        group.close()
    assert sorted(results) == [1, 2, 3, 4]
    # The four failed together first (their rows and COMMIT in one pipeline), then alone.
    assert "a batch of 4 purchases failed (IntegrityError)" in caplog.text
    for i, outcome in results.items():  # the batch, then each purchase alone, failed
        assert isinstance(outcome, Exception), (i, outcome)
        assert "forced" in str(outcome)
    assert group.batches == 1  # the warm-up's only
    assert orders(pg_db) == 1
    with pg_db.reading() as s:
        keys = s.execute(text('SELECT "key" FROM journal WHERE "key" IN '
                              "('warm', 'k1', 'k2', 'k3', 'k4')")).scalars().all()
    assert keys == ["warm"]
