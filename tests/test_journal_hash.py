"""The journal's hash format is part of the product: every stored chain was hashed with it,
so a change to how `engine.journal.txn_hash` spells its input would make `verify` reject
every existing shop. One transaction, hashed by hand as SPEC §6's chain describes it
(previous hash + canonical JSON of the transaction), and pinned."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

from engine import journal

CST = timezone(timedelta(hours=8))
LINES = [("pool:queue", "fen", -5, "entry:1"), ("user:1:wallet", "fen", 5, None)]
PINNED = "8007efeebb6c213d8508f9038d40d1379b1b7b384069c76a4dc7a474f5341f3d"


def test_txn_hash_is_the_pinned_digest_of_the_canonical_text():
    at = datetime(2026, 1, 1, 9, tzinfo=CST)
    by_hand = json.dumps([7, "release:entry:1", "release", "2026-01-01T01:00:00.000000", None,
                          '{"entry":1}', '{"paid":5}', [list(line) for line in LINES]],
                         sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(("0" * 64 + by_hand).encode()).hexdigest()
    got = journal.txn_hash("0" * 64, 7, "release:entry:1", "release", at, None, '{"entry":1}',
                           '{"paid":5}', LINES)
    assert got == expected == PINNED
    # the same instant in another zone is the same time, hence the same hash
    assert journal.txn_hash("0" * 64, 7, "release:entry:1", "release", at.astimezone(UTC),
                            None, '{"entry":1}', '{"paid":5}', LINES) == PINNED
