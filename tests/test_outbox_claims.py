"""engine/outbox.py on SQLite and PostgreSQL: claims, outcomes under an attempt token,
backoff, stale claims, requeue and the summary (the delivery rules of docs/scheduler.md)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select

from engine import outbox, users
from storage.db import Database
from storage.models import Identity, Outbox

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)


def add_user(db: Database, identity: str, lang: str = "en") -> int:
    return int(users.resolve(db, identity, lang=lang, at=NOW - timedelta(days=1))["user_id"])


def enqueue(db: Database, user_id: int | None, key: str, *, kind: str = "release_paid",
            at: datetime = NOW, params: str = '{"amount":10000}') -> None:
    db.run(lambda s: s.execute(insert(Outbox).values(
        key=key, user_id=user_id, kind=kind, params=params, lang="en", status="pending",
        attempts=0, next_at=at, created_at=at)))


def row(db: Database, key: str) -> Outbox:
    return db.read(lambda s: s.execute(select(Outbox).where(Outbox.key == key)).scalar_one())


def test_claim_takes_one_row_per_user_in_order_and_marks_it_claimed(db: Database) -> None:
    a, b = add_user(db, "tg:1"), add_user(db, "tg:2")
    for key, uid in [("a1", a), ("a2", a), ("b1", b), ("b2", b)]:
        enqueue(db, uid, key)
    enqueue(db, a, "later", at=NOW + timedelta(minutes=5))

    batch = outbox.claim(db, now=NOW, limit=10)

    assert [c.params for c in batch.claims] == [{"amount": 10000}] * 2
    assert sorted(row(db, k).status for k in ("a1", "b1")) == ["claimed", "claimed"]
    assert {row(db, k).status for k in ("a2", "b2", "later")} == {"pending"}
    assert batch.deferred == 2  # a2, b2 wait: their users already have a message going
    assert [c.identities for c in batch.claims] == [("tg:1",), ("tg:2",)]
    assert all(c.token == 1 for c in batch.claims)


def test_claim_skips_busy_users_and_respects_the_limit(db: Database) -> None:
    ids = [add_user(db, f"tg:{n}") for n in range(1, 6)]
    for n, uid in enumerate(ids):
        enqueue(db, uid, f"k{n}")

    batch = outbox.claim(db, now=NOW, limit=2, busy={ids[0]})

    assert [c.user_id for c in batch.claims] == ids[1:3]
    assert batch.deferred == 1


def test_identities_come_most_recently_seen_first(db: Database) -> None:
    uid = add_user(db, "tg:7")
    db.run(lambda s: s.add(Identity(identity="wx:open7", user_id=uid, created_at=NOW,
                                    last_seen_at=NOW + timedelta(hours=1))))
    enqueue(db, uid, "k")
    assert outbox.claim(db, now=NOW, limit=5).claims[0].identities == ("wx:open7", "tg:7")


def test_an_outcome_is_recorded_only_under_the_claims_token(db: Database) -> None:
    uid = add_user(db, "tg:1")
    enqueue(db, uid, "k")
    first = outbox.claim(db, now=NOW, limit=1).claims[0]
    assert outbox.mark_sending(db, first) is True
    assert outbox.recover_stale(db, now=NOW + outbox.SENDING_TIMEOUT) == 1
    assert row(db, "k").status == "interrupted"

    assert outbox.mark_sent(db, first, now=NOW) is False  # too late: the row is not ours
    assert row(db, "k").status == "interrupted"
    assert outbox.claim(db, now=NOW + timedelta(hours=1), limit=1).claims == []


def test_sent_is_final_and_never_claimed_again(db: Database) -> None:
    uid = add_user(db, "tg:1")
    enqueue(db, uid, "k")
    c = outbox.claim(db, now=NOW, limit=1).claims[0]
    assert outbox.mark_sent(db, c, now=NOW) is True
    assert outbox.mark_sent(db, c, now=NOW) is False
    r = row(db, "k")
    assert (r.status, r.sent_at, r.attempts) == ("sent", NOW, 1)
    assert outbox.claim(db, now=NOW + timedelta(days=1), limit=1).claims == []


def test_transient_failures_back_off_then_give_up(db: Database) -> None:
    uid = add_user(db, "tg:1")
    enqueue(db, uid, "k")
    now = NOW
    for attempt in range(1, outbox.MAX_ATTEMPTS):
        c = outbox.claim(db, now=now, limit=1).claims[0]
        assert c.token == attempt
        assert outbox.mark_retry(db, c, now=now, error="boom") == "pending"
        assert row(db, "k").next_at == now + outbox.backoff(attempt)
        assert outbox.claim(db, now=now + outbox.backoff(attempt) - timedelta(seconds=1),
                            limit=1).claims == []
        now += outbox.backoff(attempt)
    last = outbox.claim(db, now=now, limit=1).claims[0]
    assert outbox.mark_retry(db, last, now=now, error="boom") == "failed"
    r = row(db, "k")
    assert r.status == "failed" and r.attempts == outbox.MAX_ATTEMPTS
    assert "gave up after 10 attempts: boom" in (r.last_error or "")


def test_retry_after_uses_the_channels_wait(db: Database) -> None:
    uid = add_user(db, "tg:1")
    enqueue(db, uid, "k")
    c = outbox.claim(db, now=NOW, limit=1).claims[0]
    outbox.mark_retry(db, c, now=NOW, error="429", after=timedelta(seconds=3))
    assert row(db, "k").next_at == NOW + timedelta(seconds=3)


def test_requeue_is_an_operators_explicit_choice(db: Database) -> None:
    uid = add_user(db, "tg:1")
    enqueue(db, uid, "k")
    c = outbox.claim(db, now=NOW, limit=1).claims[0]
    outbox.mark_unreachable(db, c, now=NOW, error="blocked")
    with pytest.raises(ValueError):
        outbox.requeue(db, now=NOW, statuses=("sent",))
    assert outbox.requeue(db, now=NOW, statuses=("interrupted",)) == 0
    assert outbox.requeue(db, now=NOW, statuses=("unreachable",)) == 1
    r = row(db, "k")
    assert (r.status, r.attempts, r.last_error) == ("pending", 0, None)


def test_summary_counts_every_state(db: Database) -> None:
    uid = add_user(db, "tg:1")
    other = add_user(db, "tg:2")
    for key in ("a", "b", "c"):
        enqueue(db, uid, key)
    enqueue(db, other, "d", at=NOW + timedelta(hours=1))
    c = outbox.claim(db, now=NOW, limit=5).claims[0]
    outbox.mark_failed(db, c, now=NOW, error="400 Bad Request")

    s = outbox.summary(db, now=NOW)

    assert s["counts"] == {"pending": 3, "claimed": 0, "sending": 0, "sent": 0, "failed": 1,
                           "unreachable": 0, "interrupted": 0}
    assert s["due_now"] == 2
    assert s["problems"] == [{"id": c.id, "kind": "release_paid", "user_id": uid,
                              "status": "failed", "attempts": 1, "error": "400 Bad Request"}]


def test_a_claimed_row_never_sent_goes_back_to_pending_on_recovery(db: Database) -> None:
    uid = add_user(db, "tg:1")
    enqueue(db, uid, "k")
    abandoned = outbox.claim(db, now=NOW, limit=1).claims[0]
    assert outbox.recover_stale(db, now=NOW + outbox.SENDING_TIMEOUT) == 0
    assert row(db, "k").status == "pending"
    assert outbox.mark_sending(db, abandoned) is False  # the dead claim cannot come back
    again = outbox.claim(db, now=NOW + outbox.SENDING_TIMEOUT, limit=1).claims
    assert [c.id for c in again] == [abandoned.id] and again[0].token == 2


def test_concurrent_claims_never_take_the_same_row(db: Database) -> None:
    """Eight deliverers claiming at once (SKIP LOCKED on PostgreSQL, BEGIN IMMEDIATE on
    SQLite) own disjoint rows, and together own all of them."""
    ids = [add_user(db, f"tg:{n}") for n in range(1, 41)]
    for uid in ids:
        enqueue(db, uid, f"k{uid}")
    got: list[int] = []
    lock = threading.Lock()

    def deliverer() -> None:
        while True:
            claims = outbox.claim(db, now=NOW, limit=3).claims
            if not claims:
                return
            with lock:
                got.extend(c.id for c in claims)

    threads = [threading.Thread(target=deliverer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 40 and len(set(got)) == 40
