"""Per-user rate limits: token buckets in Redis when `REDIS_URL` is set, in-process otherwise.

A bucket holds up to `capacity` tokens and refills `capacity` tokens every `per_seconds`; each
request takes one. Redis keeps the buckets shared by every process of the shop (one Lua script,
so a check is atomic and uses Redis's clock). When Redis cannot be reached the limiter logs
once and falls back to in-process buckets, trying Redis again after a pause: a Redis outage
never stops the shop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    name: str
    capacity: int
    per_seconds: float

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self.capacity / self.per_seconds


COMMANDS = Rule("cmd", 20, 10.0)
PURCHASES = Rule("buy", 5, 60.0)
SUPPORT = Rule("support", 5, 60.0)  # /support messages: each one notifies every operator

_LUA = """
local capacity = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local got = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(got[1])
local ts = tonumber(got[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * per_ms)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / per_ms) + 1000)
return allowed
"""

RETRY_REDIS_AFTER = 30.0


class RateLimiter:
    """`allow(rule, key)` takes a token from `key`'s bucket for `rule`; False when empty."""

    def __init__(self, redis_url: str | None = None, *, prefix: str = "storefront:rl:",
                 clock: Callable[[], float] = time.monotonic, enabled: bool = True) -> None:
        self.prefix = prefix
        self.enabled = enabled
        self._clock = clock
        self._lock = threading.Lock()
        self._local: dict[tuple[str, str], tuple[float, float]] = {}
        self._redis: Any = None
        self._script: Any = None
        self._redis_down_until = 0.0
        self._warned = False
        if redis_url and enabled:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5,
                                               socket_timeout=0.5)
            self._script = self._redis.register_script(_LUA)

    @classmethod
    def disabled(cls) -> RateLimiter:
        return cls(enabled=False)

    @property
    def uses_redis(self) -> bool:
        return self._redis is not None and self._clock() >= self._redis_down_until

    def allow(self, rule: Rule, key: str) -> bool:
        if not self.enabled:
            return True
        if self.uses_redis:
            try:
                return bool(self._script(keys=[f"{self.prefix}{rule.name}:{key}"],
                                         args=[rule.capacity, rule.rate / 1000.0]))
            except Exception as exc:  # noqa: BLE001 - any Redis failure means "use memory"
                self._redis_down_until = self._clock() + RETRY_REDIS_AFTER
                if not self._warned:
                    log.warning("rate limiter: Redis unavailable (%s); limiting in-process",
                                type(exc).__name__)
                    self._warned = True
        return self._allow_local(rule, key)

    def _allow_local(self, rule: Rule, key: str) -> bool:
        now = self._clock()
        with self._lock:
            tokens, ts = self._local.get((rule.name, key), (float(rule.capacity), now))
            tokens = min(rule.capacity, tokens + max(0.0, now - ts) * rule.rate)
            allowed = tokens >= 1
            if allowed:
                tokens -= 1
            self._local[(rule.name, key)] = (tokens, now)
            if len(self._local) > 100_000:  # forget idle buckets; a full bucket is the default
                self._local = {k: v for k, v in self._local.items()
                               if now - v[1] < 600}
            return allowed
