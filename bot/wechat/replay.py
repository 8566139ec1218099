"""A signed `/wechat` query is good once, and only for five minutes.

WeChat's query `signature` is `sha1(sort(token, timestamp, nonce))`: it proves the query came
from WeChat but covers neither the body nor the time of use. So a query, once seen (a proxy
log, the server-check URL, an old request), would be a key anyone could reuse for any body.
Three rules close that (docs/wechat.md, "Replays"):

- **Fresh.** The query's `timestamp` must be within `WINDOW` seconds of our clock, either way.
- **Once.** A `(timestamp, nonce)` pair is remembered for as long as its timestamp can be
  fresh, together with a digest of the body it came with. The same pair again with another
  body is refused; with the byte-identical body it is WeChat's own retry and goes on to the
  message dedupe (`Seen`), which answers it without acting again.
- **Never twice.** A message's dedupe record (`Seen`, kept `KEEP`) outlives every moment at
  which its signed query could still be fresh; `check_no_gap` states the arithmetic.

Nonces live in Redis when `REDIS_URL` is set (shared by every process, expiring by
themselves) and in the database (`SeenMessage`, key `wxn:…`, pruned hourly) otherwise or
while Redis does not answer, so any number of processes on one database agree.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from datetime import datetime, timedelta
from typing import Any

from wechatpy.exceptions import InvalidSignatureException
from wechatpy.utils import check_signature

from handlers.base import Database
from handlers.stores import seen

from .seen import KEEP

log = logging.getLogger(__name__)

WINDOW = 300  # seconds a signed query's timestamp may be off our clock, either way
# A timestamp T is fresh while our clock is within [T - WINDOW, T + WINDOW]: a nonce must be
# remembered that long after its first use (plus a minute for clocks of other processes).
NONCE_KEEP = timedelta(seconds=2 * WINDOW + 60)
TIMESTAMP = re.compile(r"[0-9]{1,12}")
NONCE = re.compile(r"[A-Za-z0-9]{1,64}")
PREFIX = "wxn:"


def fresh(timestamp: str, now: float) -> bool:
    """The query's timestamp is ASCII digits and within `WINDOW` seconds of `now`."""
    return bool(TIMESTAMP.fullmatch(timestamp)) and abs(now - int(timestamp)) <= WINDOW


def query_refusal(token: str, query: dict[str, str], now: float) -> str | None:
    """Why this query is not WeChat's, now (None: it is): no token configured, a wrong
    signature, a stale timestamp, a malformed nonce. Whether the nonce was used before is
    asked later, with the body (`Nonces.claim`)."""
    if not token:
        return "no WECHAT_TOKEN"
    try:
        check_signature(token, query.get("signature", ""), query.get("timestamp", ""),
                        query.get("nonce", ""))
    except InvalidSignatureException:
        return "wrong signature"
    if not fresh(query.get("timestamp", ""), now):
        return "timestamp more than five minutes from our clock"
    if not NONCE.fullmatch(query.get("nonce", "")):
        return "malformed nonce"
    return None


def log_refusal(reason: str, query: dict[str, str]) -> None:
    """One line per refused callback, at WARNING: the reason, the timestamp and nonce (both
    public, and what an operator needs to match a proxy log); never the signature, the
    token, a key or the body."""
    timestamp, nonce = query.get("timestamp", ""), query.get("nonce", "")
    log.warning("wechat: refused a callback: %s (timestamp %s, nonce %s)", reason,
                timestamp if TIMESTAMP.fullmatch(timestamp) else "?",
                nonce if NONCE.fullmatch(nonce) else "?")


def check_no_gap(keep: timedelta = KEEP) -> None:
    """A message first acted on at our time t0 came with a query timestamp T, |t0 - T| ≤
    WINDOW. A replay of it (same signed query: `msg_signature` binds the ciphertext to T) is
    accepted only while |now - T| ≤ WINDOW, i.e. until t0 + 2·WINDOW at the latest. Its dedupe
    record is pruned only after t0 + keep. So keep > 2·WINDOW (with room for other processes'
    clocks) leaves no moment at which a replay is both fresh and forgotten."""
    if keep <= NONCE_KEEP:
        raise RuntimeError(f"dedupe records ({keep}) must outlive the freshness window "
                           f"({NONCE_KEEP})")


check_no_gap()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class Nonces:
    """Which signed queries have been used, and for which body."""

    RETRY_REDIS_AFTER = 30.0  # seconds between attempts while Redis is down

    def __init__(self, db: Database, redis_url: str | None = None, *,
                 namespace: str = "") -> None:
        self.db = db
        self.redis: Any = None
        if redis_url:
            import redis

            self.redis = redis.Redis.from_url(redis_url, socket_connect_timeout=1,
                                              socket_timeout=1)
        self.namespace = f"storefront:wechat:nonce:{namespace}:"
        self._redis_down_until = 0.0

    def claim(self, timestamp: str, nonce: str, body: bytes, now: datetime) -> bool:
        """True when `(timestamp, nonce)` is new (now claimed for `body`) or was claimed
        for exactly this body before (WeChat's retry); False when it was used for another.
        Raises `DatabaseUnavailable` when neither Redis nor the database can say."""
        key, digest = f"{timestamp}:{nonce}", body_digest(body)
        if self.redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                answer = self._claim_redis(key, digest)
                if self._redis_down_until:
                    log.warning("wechat: Redis answers again; nonces are kept there again")
                self._redis_down_until = 0.0
                return answer
            except Exception as exc:  # noqa: BLE001 - any Redis failure: use the database
                if not self._redis_down_until:
                    log.warning("wechat: Redis unavailable (%s); keeping nonces in the "
                                "database", type(exc).__name__)
                self._redis_down_until = time.monotonic() + self.RETRY_REDIS_AFTER
        return self._claim_db(PREFIX + key, digest, now)

    def _claim_redis(self, key: str, digest: str) -> bool:
        name = self.namespace + key
        ttl = int(NONCE_KEEP.total_seconds())
        if self.redis.set(name, digest, nx=True, ex=ttl):
            return True
        stored = self.redis.get(name)
        return stored is not None and stored.decode() == digest

    def _claim_db(self, key: str, digest: str, now: datetime) -> bool:
        return seen.claim_for(self.db, key, digest, now)

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()

    def prune(self, now: datetime) -> int:
        """Forget database nonces whose timestamps can no longer be fresh."""
        return seen.prune(self.db, PREFIX, now - NONCE_KEEP)
