"""A release page writes its journal and outbox rows as text it spells itself
(`journal.chain_releases`, `outbox.release_paid`): they must be, byte for byte, what the one
general path (`journal.chain` over `Txn`s, `outbox.message`) would store and hash for the same
payments, or `verify` would reject every release."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from engine import journal, outbox

CST = timezone(timedelta(hours=8))
AT = datetime(2026, 8, 16, 0, 5, 0, 123456, tzinfo=CST)
STAMP = object()  # what the journal stores for `at`: passed through untouched
HANDLES = ["alice", "tg:42", 'q"uote', "back\\slash", "新用户", "emoji 🎉", "tab\there",
           "nl\nx", "\x00\x1f\x7f", "\u2028\u2029", "é" * 40, ""]


@dataclass
class Tip:
    last_txn: int
    last_hash: str


def general(tip: Tip, paid: list[tuple[int, int, int, str]]) -> tuple[list, list]:
    txns = []
    for seq, user_id, owed, handle in paid:
        p = journal.Postings()
        p.fen(journal.QUEUE_POOL, journal.wallet(user_id), owed, f"entry:{seq}")
        txns.append(journal.Txn(key=f"release:entry:{seq}", kind="release", at=AT, postings=p,
                                body={"entry": seq, "user": handle},
                                result={"entry": seq, "paid": owed}))
    rows, postings = journal.chain(tip, txns)
    return [(*r[:3], STAMP, *r[4:]) for r in rows], postings


def test_a_release_pages_journal_rows_are_the_general_chains_byte_for_byte() -> None:
    rng = random.Random(19)
    paid = [(seq, rng.randrange(1, 10**6), rng.choice([0, 1, 99, 12_345, 10**15]), handle)
            for seq, handle in enumerate(HANDLES * 3, start=rng.randrange(1, 10**9))]
    start = Tip(41, "ab" * 32)
    expected_tip, fast_tip = Tip(start.last_txn, start.last_hash), Tip(start.last_txn,
                                                                       start.last_hash)
    expected = general(expected_tip, paid)
    got = journal.chain_releases(fast_tip, AT, STAMP, paid)
    assert got == expected
    assert (fast_tip.last_txn, fast_tip.last_hash) == (expected_tip.last_txn,
                                                       expected_tip.last_hash)
    assert fast_tip.last_txn == 41 + len(paid)
    # and each of those transactions balances, with no posting for a payment of 0
    for (txn_id, *_rest) in got[0]:
        lines = [p for p in got[1] if p[0] == txn_id]
        assert sum(p[3] for p in lines) == 0 and all(p[3] != 0 for p in lines)


def test_an_empty_page_leaves_the_chain_where_it_was() -> None:
    tip = Tip(7, "cd" * 32)
    assert journal.chain_releases(tip, AT, STAMP, []) == ([], [])
    assert (tip.last_txn, tip.last_hash) == (7, "cd" * 32)


def test_a_release_pages_messages_are_the_general_outbox_rows() -> None:
    for seq, user_id, owed, total, lang in [(1, 2, 3, 4, None), (10**12, 5, 0, 7, "en"),
                                            (99, 1, 12_345, 12_345, "zh")]:
        general_row = outbox.message(f"release:entry:{seq}", user_id, "release_paid",
                                     {"entry": seq, "amount": owed, "total": total}, lang, AT)
        assert outbox.release_paid(seq, user_id, owed, total, lang, AT) == general_row
