"""Per-user rate limits for the conversations: the rules, and the limiter that keeps them
(token buckets in Redis when `REDIS_URL` is set, in-process otherwise: storage/ratelimit.py).

Handlers take a limiter from the `App` the bot builds (`handlers.base.RateLimiter` is what they
ask of it); this is where they get the rules and the in-process default.
"""

from storage.ratelimit import COMMANDS, PURCHASES, SUPPORT, RateLimiter, Rule

__all__ = ["COMMANDS", "PURCHASES", "SUPPORT", "RateLimiter", "Rule"]
