"""The database as the layers above the engine see it: a handle to pass to the engine's
service functions, and the one error that means "the database cannot answer right now".

Handlers and adapters never import `storage` (the import-linter contracts in pyproject.toml);
what they need of it comes through here.
"""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.db import Database, DatabaseUnavailable
from storage.migrate import migrate
from storage.models import Head, Product


def ping(db: Database) -> None:
    """One trivial read: returns when the database answers, raises what it raised if not."""
    db.read(lambda s: s.execute(select(1)).scalar())


def is_fresh(db: Database) -> bool:
    """No products and an empty journal: a shop nobody has used yet."""
    def work(s: Session) -> bool:
        head = s.get(Head, 1)
        return (s.execute(select(func.count()).select_from(Product)).scalar_one() == 0
                and (head is None or head.last_txn == 0))

    return db.read(work)


__all__ = ["Database", "DatabaseUnavailable", "is_fresh", "migrate", "ping"]
