"""`Book`: what one engine action holds while it runs inside its database transaction.

It takes the journal head lock first (every writer does, so writers are serialised in
commit order, as a hash chain requires), then locks the pool and user rows it changes
(`SELECT … FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already holds the file).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Head, Outbox, Pool, Setting, User

from . import journal
from .config import Config
from .errors import Refusal


@lru_cache(maxsize=8)
def _config(stored: tuple[tuple[str, str], ...]) -> Config:
    """Parsing rates and the timezone is the same work for the same settings: do it once."""
    return Config.from_values(dict(stored))


class Book:
    def __init__(self, session: Session) -> None:
        self.s = session
        self.head: Head = session.execute(
            select(Head).where(Head.id == 1).with_for_update()
        ).scalar_one()
        stored = session.execute(select(Setting.key, Setting.value)).all()
        self.cfg = _config(tuple(sorted((k, v) for k, v in stored)))
        self._pools: dict[str, Pool] = {}
        self._users: dict[int, User] = {}

    # -- rows -------------------------------------------------------------------------------
    def pool(self, name: str) -> Pool:
        if not self._pools:  # both pools in one statement: most purchases touch both
            self._pools = {p.name: p for p in self.s.execute(
                select(Pool).order_by(Pool.name).with_for_update()).scalars()}
        return self._pools[name]

    def user(self, handle: str) -> User:
        """The user with this handle, locked, or `unknown_user`."""
        if not isinstance(handle, str) or not handle:
            raise Refusal("unknown_user")
        row = self.s.execute(
            select(User).where(User.handle == handle).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            raise Refusal("unknown_user", handle)
        self._users[row.id] = row
        return row

    def user_by_id(self, user_id: int) -> User:
        if user_id not in self._users:
            self._users[user_id] = self.s.execute(
                select(User).where(User.id == user_id).with_for_update()
            ).scalar_one()
        return self._users[user_id]

    # -- journal ----------------------------------------------------------------------------
    def already(self, key: str | None) -> dict[str, Any] | None:
        """The stored result of an earlier call with this idempotency key, if any."""
        if key is None:
            return None
        txn = journal.find(self.s, key)
        if txn is None:
            return None
        result: dict[str, Any] = json.loads(txn.result) if txn.result else {}
        result["replayed"] = True
        return result

    def record(self, *, key: str, kind: str, at: datetime,
               postings: journal.Postings | None = None, body: dict[str, Any] | None = None,
               result: dict[str, Any] | None = None, actor: str | None = None) -> int:
        return journal.record(self.s, self.head, key=key, kind=kind, at=at, postings=postings,
                              body=body, result=result, actor=actor)

    # -- notifications ----------------------------------------------------------------------
    def notify(self, user: User, kind: str, key: str, at: datetime, **params: Any) -> None:
        """Owe `user` a message about a movement, in the same transaction as the movement."""
        self.s.add(Outbox(key=key, user_id=user.id, kind=kind, params=journal.canonical(params),
                          lang=user.lang or "zh", status="pending", attempts=0, next_at=at,
                          created_at=at))
