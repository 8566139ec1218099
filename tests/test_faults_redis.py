"""Redis down (REDIS_URL pointing at a closed loopback port): the bot keeps working on its
in-process fallbacks and says so in its logs.

- the per-user rate limiter limits in-process (storage/ratelimit.py);
- the release lock is the database's alone (storage/locks.py): still one run at a time;
- the chat answers, flood limits included;
- WeChat's access token, kept in Redis to share it between processes, is kept in memory;
- `/healthz` names the outage."""

from __future__ import annotations

import logging
import socket

import pytest

from engine.jobs import run_release
from handlers import dispatch, i18n
from handlers.base import App, Request, Text
from storage.db import Database
from storage.ratelimit import COMMANDS, RateLimiter
from tests.release_helpers import MATURED, make_shop, paid_entries


@pytest.fixture
def redis_down() -> str:
    """A Redis URL nobody answers: a loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def warnings_about_redis(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "Redis" in r.getMessage()]


def test_rate_limiter_limits_in_process_and_logs_the_outage_once(
        redis_down: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    limiter = RateLimiter(redis_down)
    allowed = [limiter.allow(COMMANDS, "tg:1") for _ in range(COMMANDS.capacity + 5)]
    assert allowed == [True] * COMMANDS.capacity + [False] * 5  # still limits, in memory
    assert limiter.allow(COMMANDS, "tg:2")  # per user
    assert not limiter.uses_redis
    logged = warnings_about_redis(caplog)
    assert len(logged) == 1 and "in-process" in logged[0], logged


def test_release_lock_falls_back_to_the_database_and_says_so(
        db: Database, redis_down: str, caplog: pytest.LogCaptureFixture) -> None:
    make_shop(db, entries=3, users=2)
    caplog.set_level(logging.INFO)
    result = run_release(db, at=MATURED, redis_url=redis_down)
    assert not result["skipped"] and result["paid"] == 3
    assert result["locks"] == (["postgresql"] if db.is_postgres else ["lease"])
    assert any("using the database lock alone" in m for m in warnings_about_redis(caplog))
    assert [status for _seq, _r, status in paid_entries(db)] == ["released"] * 3


def test_release_lock_without_redis_still_admits_one_run_at_a_time(
        sqlite_db: Database, redis_down: str) -> None:
    from storage.locks import job_lock

    first = job_lock(sqlite_db, "release", redis_url=redis_down)
    second = job_lock(sqlite_db, "release", redis_url=redis_down)
    assert first.acquire("here:1:aa")
    assert not second.acquire("there:2:bb") and second.blocked_by == "here:1:aa"
    first.release()


async def test_chat_answers_and_limits_floods_with_redis_down(
        memdb: Database, redis_down: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    app = App(db=memdb, operators=frozenset(), limiter=RateLimiter(redis_down))

    def ask(n: int) -> Request:
        return Request(channel="telegram", identity="tg:42", request_id=f"tg:msg:42:{n}",
                       command="me", text="/me", lang="en")

    texts = []
    for n in range(COMMANDS.capacity + 3):
        reply = await dispatch(app, ask(n))
        texts.append("\n".join(i.text for i in reply.items if isinstance(i, Text)))
    slow = i18n.t("en", "slow_down")
    assert all(slow not in t and t for t in texts[:COMMANDS.capacity])
    assert all(t == slow for t in texts[COMMANDS.capacity:])
    assert warnings_about_redis(caplog)


async def test_wechat_access_token_is_kept_in_memory_while_redis_is_down(
        redis_down: str, caplog: pytest.LogCaptureFixture) -> None:
    """With REDIS_URL set the token is shared through Redis; when Redis is down the client
    must still fetch a token and send (notifications and follow-ups keep flowing)."""
    import asyncio

    from bot.settings import Settings
    from bot.wechat.sender import client_from_settings
    from tests.standins import wechat as sw

    caplog.set_level(logging.INFO)
    with sw.FakeWeChatAPI(appid="wx0123456789abcdef", secret="s3cr3t") as api:
        settings = Settings(_env_file=None, WECHAT_TOKEN="t", WECHAT_APP_ID="wx0123456789abcdef",
                            WECHAT_APP_SECRET="s3cr3t", WECHAT_API_BASE_URL=api.base_url,
                            REDIS_URL=redis_down)  # type: ignore[call-arg]
        client = client_from_settings(settings)
        for n in range(2):
            await asyncio.to_thread(client.message.send_text, "oRedisDown_0001", f"hello {n}")
        assert [m["text"]["content"] for m in api.sent_messages] == ["hello 0", "hello 1"]
        assert len(api.calls_of("token")) == 1  # the token was kept, in memory
    assert warnings_about_redis(caplog)


async def test_healthz_names_the_redis_outage(sqlite_db: Database, redis_down: str) -> None:
    import httpx

    from bot.http import build_app

    asgi = build_app(db=sqlite_db, redis_url=redis_down)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi),
                                 base_url="http://shop") as http:
        health = (await http.get("/healthz")).json()
    assert health["database"] == "ok"
    assert health["redis"].startswith("unavailable"), health
