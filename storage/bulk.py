"""Multi-row writes straight to the driver's `executemany`, for the static release.

A release writes five rows per entry paid; SQLAlchemy's per-row parameter processing costs
more than the writes themselves. Here each column's bind processor (the same one the ORM and
Core use, so stored values are byte-identical) runs once per distinct value, and the rows go
to the DBAPI cursor as plain tuples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session


def _placeholder(paramstyle: str) -> str:
    return "?" if paramstyle == "qmark" else "%s"


def executemany(session: Session, sql: str, table: Table, columns: Sequence[str],
                rows: Sequence[Sequence[Any]]) -> None:
    """Run `sql` (with `{}` where the placeholders go, one per column in `columns`, in order)
    for every row; values are bound exactly as SQLAlchemy would bind them for `table`."""
    if not rows:
        return
    conn = session.connection()
    dialect = conn.dialect
    processors = [table.c[name].type.bind_processor(dialect) for name in columns]
    caches: list[dict[Any, Any]] = [{} for _ in columns]
    bound = []
    for row in rows:
        values = []
        for i, value in enumerate(row):
            proc = processors[i]
            if proc is None or value is None:
                values.append(value)
                continue
            cache = caches[i]
            try:
                values.append(cache[value])
            except KeyError:
                cache[value] = out = proc(value)
                values.append(out)
            except TypeError:  # unhashable: process each time
                values.append(proc(value))
        bound.append(tuple(values))
    mark = _placeholder(dialect.paramstyle)
    statement = sql.format(*([mark] * len(columns)))
    conn.exec_driver_sql(statement, bound)
