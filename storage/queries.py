"""The engine's reads and bulk writes, by name: every SQL string the engine needs lives here.

Each function speaks to the driver (storage/driver.py) or to the unit of work's plain rows
(storage/unit.py) inside the caller's transaction; the engine calls them by what they
return (`orders_due`, `waiting_entries`, …) and never writes SQL itself. Why plain SQL and
not the ORM: docs/engine.md ("The fast row path").
"""

from __future__ import annotations

from .driver import Driver


def settings(db: Driver) -> dict[str, str]:
    """The stored settings, `section.key` → the operator's exact text."""
    return dict(db.rows('SELECT "key", value FROM settings'))
