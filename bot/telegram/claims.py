"""Which process handles a user's inbox rows when several `storefront run` share one database
(docs/scaling.md).

Every process's `InboxProcessor` reads the same pending rows, so without this each row sent
behind a load balancer was handled by every process that looked: money moved once (every
movement has its idempotency key) but every reply went out twice. Now a process hands a
user's rows to a worker only while it holds that user's claim in Redis — a lease (`SET NX PX`)
renewed while its worker runs and given back when the worker is done — and reads the rows
again after taking a claim, so a row another process finished meanwhile is not run again.
One user's rows are so handled once and in order, whichever process stored them. A process
that dies leaves its claims to expire (`LEASE_MS`); its users' rows then go to another.

Without Redis (one process) there is nothing to claim. If Redis cannot be reached, a process
handles what it reads, as a lone process would (replies might then go out twice; money
still moves once).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable
from typing import Any

LEASE_MS = 30_000
Key = tuple[str, int]
_GIVE_BACK = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
              "return redis.call('DEL', KEYS[1]) end return 0")
_RENEW = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
          "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0")


class UserClaims:
    """Leases on users' (or chats') inbox rows, shared by every process of one bot."""

    def __init__(self, redis_url: str, *, prefix: str = "storefront:inbox:",
                 lease_ms: int = LEASE_MS, client: Any = None) -> None:
        if client is None:
            import redis

            client = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5,
                                          socket_timeout=1.0)
        self.redis = client
        self.prefix = prefix
        self.lease_ms = lease_ms
        self.me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._give_back = self.redis.register_script(_GIVE_BACK)
        self._renew = self.redis.register_script(_RENEW)

    def _name(self, key: Key) -> str:
        return f"{self.prefix}{key[0]}:{key[1]}"

    def take(self, keys: Iterable[Key]) -> set[Key]:
        """The keys whose claim this process holds now (taken now, or already its own)."""
        wanted = list(keys)
        if not wanted:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for key in wanted:
            pipe.set(self._name(key), self.me, nx=True, px=self.lease_ms)
        for key in wanted:
            pipe.get(self._name(key))
        answers = pipe.execute()
        holders = answers[len(wanted):]
        mine = self.me.encode()
        return {key for key, holder in zip(wanted, holders, strict=True) if holder == mine}

    def renew(self, keys: Iterable[Key]) -> set[Key]:
        """Extend the leases still ours; returns the keys that were no longer ours."""
        wanted = list(keys)
        pipe = self.redis.pipeline(transaction=False)
        for key in wanted:
            self._renew(keys=[self._name(key)], args=[self.me, self.lease_ms], client=pipe)
        kept = pipe.execute() if wanted else []
        return {key for key, ok in zip(wanted, kept, strict=True) if not ok}

    def give_back(self, keys: Iterable[Key]) -> None:
        wanted = list(keys)
        if not wanted:
            return
        pipe = self.redis.pipeline(transaction=False)
        for key in wanted:
            self._give_back(keys=[self._name(key)], args=[self.me], client=pipe)
        pipe.execute()

    def close(self) -> None:
        self.redis.close()
