"""Per-user token buckets: Redis when configured, in-process otherwise or when Redis is down."""

from __future__ import annotations

import logging
import uuid

from storage.ratelimit import COMMANDS, PURCHASES, RateLimiter, Rule


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_in_process_bucket_allows_its_capacity_then_refills_at_its_rate():
    clock = Clock()
    rl = RateLimiter(clock=clock)
    assert [rl.allow(COMMANDS, "tg:1") for _ in range(21)] == [True] * 20 + [False]
    assert rl.allow(COMMANDS, "tg:2")  # buckets are per user
    clock.now += 0.5  # 20 per 10 s: one token per half second
    assert rl.allow(COMMANDS, "tg:1") and not rl.allow(COMMANDS, "tg:1")
    clock.now += 60
    assert [rl.allow(PURCHASES, "tg:1") for _ in range(6)] == [True] * 5 + [False]


def test_a_disabled_limiter_allows_everything():
    rl = RateLimiter.disabled()
    assert all(rl.allow(Rule("x", 1, 60.0), "k") for _ in range(100))


def test_redis_buckets_are_shared_by_every_process(redis_url):
    prefix = f"test:{uuid.uuid4().hex}:"
    first, second = RateLimiter(redis_url, prefix=prefix), RateLimiter(redis_url, prefix=prefix)
    assert first.uses_redis
    rule = Rule("t", 4, 60.0)
    got = [first.allow(rule, "tg:1"), second.allow(rule, "tg:1"), first.allow(rule, "tg:1"),
           second.allow(rule, "tg:1"), first.allow(rule, "tg:1"), second.allow(rule, "tg:1")]
    assert got == [True, True, True, True, False, False]
    assert second.allow(rule, "tg:2")


def test_redis_down_falls_back_to_in_process_and_logs_once(caplog):
    rl = RateLimiter("redis://127.0.0.1:1/0", prefix="x:")  # nothing listens on port 1
    with caplog.at_level(logging.WARNING, logger="storage.ratelimit"):
        results = [rl.allow(Rule("t", 3, 60.0), "tg:1") for _ in range(5)]
    assert results == [True, True, True, False, False]
    warnings = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert not rl.uses_redis  # it waits before trying Redis again
