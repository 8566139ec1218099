"""Issue 19: the inbox claims that let several `storefront run` share one database
(bot/telegram/claims.py): one process at a time holds a user's rows, a claim given back or
expired goes to the next, and only its holder can renew or give it back."""

from __future__ import annotations

import time
import uuid

from bot.telegram.claims import UserClaims


def test_one_holder_per_user_until_given_back_or_expired(redis_url: str) -> None:
    prefix = f"test:inbox:{uuid.uuid4().hex[:8]}:"
    a = UserClaims(redis_url, prefix=prefix, lease_ms=300)
    b = UserClaims(redis_url, prefix=prefix, lease_ms=300)
    try:
        assert a.take([("u", 1), ("u", 2)]) == {("u", 1), ("u", 2)}
        assert b.take([("u", 1), ("u", 3)]) == {("u", 3)}  # user 1 is a's
        assert a.take([("u", 1)]) == {("u", 1)}  # still a's own: taken again
        assert b.renew([("u", 1)]) == {("u", 1)}  # b cannot extend a's lease
        b.give_back([("u", 1)])  # nor give it back
        assert b.take([("u", 1)]) == set()
        a.give_back([("u", 1)])
        assert b.take([("u", 1)]) == {("u", 1)}
        assert a.renew([("u", 2)]) == set()  # kept while renewed…
        time.sleep(0.45)
        assert b.take([("u", 2)]) == {("u", 2)}  # …and b's once a's lease ran out
    finally:
        a.close()
        b.close()
