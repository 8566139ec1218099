"""The `verify` row's same-run baseline (benchmarks/baselines.py): hashlib alone over the stored
bytes of the journal and its postings, page by page, summing the amounts, no checks.

`python -m benchmarks.verify_floor PATH` is that fresh process. It imports only the standard
library (sqlite3, hashlib, json), so its time is Python's start, the reads and the hashing —
not the engine's or the other benchmarks' imports, which `storefront verify` does not make
either.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from typing import Any


def verify_child(path: str, page: int = 10_000) -> dict[str, Any]:
    """hashlib alone over the stored bytes of the journal and postings, page by page."""
    conn = sqlite3.connect(path)
    txns = total = 0
    digest = ""
    after = 0
    try:
        while True:
            rows = conn.execute("SELECT id, key, kind, at, actor, body, result, prev_hash, hash "
                                "FROM journal WHERE id > ? ORDER BY id LIMIT ?",
                                (after, page)).fetchall()
            if not rows:
                break
            lo, hi = rows[0][0], rows[-1][0]
            posts = conn.execute("SELECT txn_id, account, unit, amount, ref FROM postings "
                                 "WHERE txn_id >= ? AND txn_id <= ? ORDER BY txn_id, id",
                                 (lo, hi)).fetchall()
            k, n = 0, len(posts)
            for row in rows:
                h = hashlib.sha256(repr(row).encode())
                while k < n and posts[k][0] == row[0]:
                    h.update(repr(posts[k]).encode())
                    total += posts[k][3]
                    k += 1
                digest = h.hexdigest()
                txns += 1
            after = hi
    finally:
        conn.close()
    return {"txns": txns, "sum": total, "last": digest}


if __name__ == "__main__":
    print(json.dumps(verify_child(sys.argv[1])))
    sys.exit(0)
