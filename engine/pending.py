"""Pending inputs: what a person's next plain message is for (`/support` then the text, an
operator's Reply button then the answer, `/codes SKU` then the codes).

Kept in the database (`pending_inputs`, one row per identity), so a restart remembers it and
every `storefront run` process behind one webhook sees the same. A wait lasts `TTL` and is
taken once: by the next plain message (which it then answers), or forgotten by any other
request (a command, a button). Taking is a conditional delete, so of two processes reading
the same wait only one gets it. No money moves here: no journal.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from storage import queries
from storage.db import Database
from storage.driver import Driver
from storage.models import PendingInput

from .times import now

TTL = timedelta(seconds=600)

Waiting = tuple[str, tuple[str, ...]]  # (button kind, its fields)
Seen = tuple[str, str, datetime]  # a wait as stored: kind, fields (JSON), until
_TABLE = cast(Table, PendingInput.__table__)  # how `until` is read back


def expect(db: Database, identity: str, kind: str, fields: tuple[str, ...] = (),
           at: datetime | None = None) -> None:
    """The next plain message of `identity` goes to `kind` with `fields`, until `at` + TTL
    (a wait already there is replaced). Waits that ran out are cleared on the way."""
    when = at or now()
    row = {"identity": identity, "kind": kind, "fields": json.dumps(list(fields)),
           "until": when + TTL}

    def work(session: Session) -> None:
        session.execute(delete(PendingInput).where(PendingInput.until < when))
        insert = pg_insert if db.is_postgres else sqlite_insert
        stmt = insert(PendingInput).values(**row)
        session.execute(stmt.on_conflict_do_update(
            index_elements=["identity"],
            set_={"kind": stmt.excluded.kind, "fields": stmt.excluded.fields,
                  "until": stmt.excluded.until}))

    db.run(work, label="pending.expect")


def look(session: Session, identity: str) -> Seen | None:
    """The wait of `identity` as stored (kind, fields, until), read in the caller's session:
    one read by primary key, asked by every request (`users.admit` reads it with the
    member)."""
    # the driver's statement, not the ORM's: every request asks (storage/driver.py)
    driver = Driver(session)
    found = queries.waiting_input(driver, identity)
    if found is None:
        return None
    kind, fields, stored = found
    until = driver.read(_TABLE, ("until",), [(stored,)])[0][0]
    return kind, fields, until


def take(db: Database, identity: str, *, plain: bool, at: datetime | None = None
         ) -> Waiting | None:
    """The wait of `identity`, removed: returned when this request is plain text and the
    wait has not run out, else None (a command or a button forgets it)."""
    return taken(db, identity, db.read(lambda session: look(session, identity)), plain=plain,
                 at=at)


def taken(db: Database, identity: str, seen: Seen | None, *, plain: bool,
          at: datetime | None = None) -> Waiting | None:
    """`take` of the wait `look` read: nothing more to do when nobody waits."""
    if seen is None:
        return None
    when = at or now()
    kind, fields, until = seen

    def remove(session: Session) -> bool:
        # only the wait read above: another process may have taken or replaced it since
        gone = session.execute(delete(PendingInput).where(
            PendingInput.identity == identity, PendingInput.kind == kind,
            PendingInput.fields == fields, PendingInput.until == until))
        return bool(getattr(gone, "rowcount", 0))

    if not db.run(remove, label="pending.take") or not plain or until <= when:
        return None
    return kind, tuple(json.loads(fields))
