"""Delivering the outbox through the real python-telegram-bot `Bot` to the loopback Bot API
stand-in (and wechatpy to the WeChat stand-in): Telegram's rate limits, a blocked user,
flood control, restarts and crashes mid-delivery. Nothing is lost; nothing arrives twice."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from telegram import Bot

from bot.cli import main
from bot.senders import RateLimiter, TelegramSender
from bot.wechat import WeChatSender
from engine import outbox, users
from scheduler import Deliverer
from storage.db import Database
from storage.models import Identity, Outbox
from tests.outbox_kit import (
    TOKEN,
    drain,
    now,
    sqlite_only_db,  # noqa: F401 - the `db` fixture
    stand_in_api,  # noqa: F401 - the `api` fixture
)
from tests.release_helpers import cli
from tests.standins.telegram_api import FakeBotAPI
from tests.standins.wechat import FakeWeChatAPI, make_wechat_client


def user(db: Database, identity: str) -> int:
    return int(users.resolve(db, identity, lang="en", at=now() - timedelta(days=1))["user_id"])


def owe(db: Database, user_id: int | None, text: str) -> None:
    """One notification whose text is `text` (a broadcast renders as its own words)."""
    db.run(lambda s: s.execute(insert(Outbox).values(
        key=f"t:{text}", user_id=user_id, kind="broadcast", params=json.dumps({"text": text}),
        lang="en", status="pending", attempts=0, next_at=now(), created_at=now())))


def statuses(db: Database) -> dict[str, str]:
    return dict(db.read(lambda s: s.execute(select(Outbox.key, Outbox.status)).all()))


def delivered(api: FakeBotAPI) -> Counter[str]:
    return Counter(c.params["text"] for c in api.calls_of("sendMessage") if c.ok)


async def test_delivery_keeps_telegrams_rate_limits(db: Database, api: FakeBotAPI) -> None:
    chats = range(1001, 1036)  # 35 chats × 2 messages: more than 30 are ready at once
    for chat in chats:
        uid = user(db, f"tg:{chat}")
        owe(db, uid, f"first for {chat}")
        owe(db, uid, f"second for {chat}")

    stats = await drain(db, api)

    assert stats["sent"] == 70 and set(statuses(db).values()) == {"sent"}
    assert delivered(api) == Counter({f"{n} for {c}": 1 for c in chats
                                      for n in ("first", "second")})
    for chat in chats:  # one message a second per chat
        times = api.request_times[("sendMessage", chat)]
        assert len(times) == 2 and times[1] - times[0] >= 1.0
    every = sorted(t for (method, _chat), ts in api.request_times.items()
                   if method == "sendMessage" for t in ts)
    assert all(b - a >= 1.0 for a, b in zip(every, every[30:], strict=False))  # ≤ 30 a second
    assert [c.text for c in api.calls_of("sendMessage") if c.chat_id == 1001] == \
        ["first for 1001", "second for 1001"]  # a user's messages keep their order


async def test_a_user_who_blocked_the_bot_is_marked_unreachable_not_retried(
        db: Database, api: FakeBotAPI) -> None:
    owe(db, user(db, "tg:7"), "to the blocker")
    owe(db, user(db, "tg:8"), "to a friend")
    api.block_chat(7)

    stats = await drain(db, api)

    assert (stats["unreachable"], stats["sent"]) == (1, 1)
    assert statuses(db) == {"t:to the blocker": "unreachable", "t:to a friend": "sent"}
    assert "blocked" in outbox.summary(db, now=now())["problems"][0]["error"]
    assert len(api.request_times[("sendMessage", 7)]) == 1
    await drain(db, api)
    assert len(api.request_times[("sendMessage", 7)]) == 1  # not retried forever


async def test_flood_control_retry_after_is_honoured(db: Database, api: FakeBotAPI) -> None:
    owe(db, user(db, "tg:5"), "patience")
    api.fail_next("sendMessage", 429, retry_after=1)
    t0 = now()  # the deliverer's clock, stopped: "not due yet" cannot depend on load

    first = await drain(db, api, clock=lambda: t0)
    assert first["retry"] == 1 and statuses(db) == {"t:patience": "pending"}
    row = db.read(lambda s: s.execute(select(Outbox)).scalar_one())
    assert "flood control" in (row.last_error or "").lower()
    assert await drain(db, api, clock=lambda: t0 + timedelta(seconds=0.99)) == Counter()

    second = await drain(db, api, clock=lambda: t0 + timedelta(seconds=1))
    assert second["sent"] == 1 and delivered(api) == Counter({"patience": 1})
    assert len(api.request_times[("sendMessage", 5)]) == 2


async def test_a_restart_mid_delivery_loses_nothing(db: Database, api: FakeBotAPI) -> None:
    texts = [f"note {n} for {chat}" for chat in range(1, 11) for n in range(3)]
    for chat in range(1, 11):
        uid = user(db, f"tg:{chat}")
        for n in range(3):
            owe(db, uid, f"note {n} for {chat}")

    async with Bot(TOKEN, base_url=api.base_url) as bot:
        first = Deliverer(db, {"tg": TelegramSender(bot)})
        first.kick()
        while sum(delivered(api).values()) < 8:
            await asyncio.sleep(0.01)
        await first.stop()  # the process is told to stop, mid-delivery
    part = sum(delivered(api).values())
    assert 8 <= part < 30 and list(statuses(db).values()).count("sent") == part

    stats = await drain(db, api)  # a new process, a new Bot, the same database

    assert stats["sent"] == 30 - part
    assert delivered(api) == Counter(dict.fromkeys(texts, 1))
    assert set(statuses(db).values()) == {"sent"}


def test_a_crash_between_send_and_record_never_sends_twice(db: Database, sqlite_url: str) -> None:
    """SIGKILL right after a message went out: that row stays `sending`, then becomes
    `interrupted` and is never sent again (at most once); everything else, including rows
    the dead process had claimed but not started, goes out exactly once."""
    for chat in range(1, 13):
        owe(db, user(db, f"tg:{chat}"), f"hello {chat}")
    env = {"TELEGRAM_BOT_TOKEN": TOKEN}
    with FakeBotAPI() as api:
        env["TELEGRAM_API_BASE_URL"] = api.base_url
        killed = cli("outbox", "--db", sqlite_url, "--deliver",
                     env={**env, "STOREFRONT_FAULT": "outbox.after_send:4"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        stuck = [k for k, st in statuses(db).items() if st == "sending"]
        assert stuck  # at least the 4th: sent, but never recorded
        assert sum(delivered(api).values()) >= 4

        rerun = cli("outbox", "--db", sqlite_url, "--deliver", env=env)
        assert rerun.returncode == 0, rerun.stderr
        assert "sending" in rerun.stdout
        assert outbox.recover_stale(db, now=now() + outbox.SENDING_TIMEOUT) == len(stuck)
        again = cli("outbox", "--db", sqlite_url, "--deliver", env=env)
        assert again.returncode == 0, again.stderr
        got = delivered(api)

    final = statuses(db)
    # nothing arrived twice; a row left `sending` (its call may or may not have gone out) is
    # never resent; rows the dead process had only claimed went back to pending and out
    assert all(n == 1 for n in got.values())
    assert {k for k, st in final.items() if st == "interrupted"} == set(stuck)
    assert {st for k, st in final.items() if k not in stuck} == {"sent"}
    missing = {f"hello {chat}" for chat in range(1, 13)} - set(got)
    assert {f"t:{text}" for text in missing} <= set(stuck)
    assert all(got[k[2:]] == 1 for k, st in final.items() if st == "sent")
    assert set(final.values()) == {"sent", "interrupted"}  # nothing lost without a trace


async def test_the_most_recently_seen_channel_is_used_and_the_next_one_if_it_fails(
        db: Database, api: FakeBotAPI) -> None:
    uid = user(db, "tg:21")
    db.run(lambda s: s.add(Identity(identity="wx:open21", user_id=uid, created_at=now(),
                                    last_seen_at=now() + timedelta(minutes=1))))
    owe(db, uid, "via wechat")
    with FakeWeChatAPI() as wx:
        client = make_wechat_client("wxapp", "secret", wx.base_url)
        async with Bot(TOKEN, base_url=api.base_url) as bot:
            senders = {"tg": TelegramSender(bot), "wx": WeChatSender(client)}
            deliverer = Deliverer(db, senders)
            assert (await deliverer.drain())["sent"] == 1
            assert [m["text"]["content"] for m in wx.sent_messages] == ["via wechat"]
            assert delivered(api) == Counter()
            # The WeChat follower left: the next notification goes to Telegram instead.
            wx.unsubscribed.add("open21")
            owe(db, uid, "after unfollowing")
            assert (await deliverer.drain())["sent"] == 1
        assert len(wx.sent_messages) == 1
    assert delivered(api) == Counter({"after unfollowing": 1})


async def test_wechat_outside_the_window_uses_the_template_message(db: Database) -> None:
    uid = user(db, "wx:openA")
    other = user(db, "wx:openB")
    owe(db, uid, "template please")
    owe(db, other, "nobody home")
    with FakeWeChatAPI() as wx:
        wx.outside_window.add("openA")
        wx.unsubscribed.add("openB")
        client = make_wechat_client("wxapp", "secret", wx.base_url)
        stats = await Deliverer(db, {"wx": WeChatSender(client, template_id="TPL1")}).drain()
        assert [(m["touser"], m["template_id"], m["data"]["content"]["value"])
                for m in wx.template_messages] == [("openA", "TPL1", "template please")]
        wx.inject_error("message/custom/send", 45009, "reach max api daily quota limit")
        owe(db, uid, "quota")
        wx.outside_window.clear()
        assert (await Deliverer(db, {"wx": WeChatSender(client)}).drain())["retry"] == 1
    assert (stats["sent"], stats["unreachable"]) == (1, 1)
    row = db.read(lambda s: s.execute(select(Outbox).where(Outbox.key == "t:quota"))
                  .scalar_one())
    assert row.status == "pending" and row.next_at > now() + timedelta(minutes=59)


async def test_rows_nobody_here_can_deliver(db: Database, api: FakeBotAPI) -> None:
    owe(db, user(db, "wx:only"), "wechat user, telegram-only process")
    owe(db, None, "no recipient")
    stats = await drain(db, api)
    assert (stats["retry"], stats["unreachable"]) == (1, 1)
    rows = dict(db.read(lambda s: s.execute(select(Outbox.key, Outbox.last_error)).all()))
    assert rows["t:wechat user, telegram-only process"] == "no sender here for wx"
    assert rows["t:no recipient"] == "the user has no chat identity"
    assert statuses(db)["t:wechat user, telegram-only process"] == "pending"


async def test_a_message_that_cannot_be_rendered_fails_alone(db: Database,
                                                             api: FakeBotAPI) -> None:
    owe(db, user(db, "tg:1"), "fine")
    db.run(lambda s: s.execute(insert(Outbox).values(
        key="odd", user_id=None, kind="mystery", params="{}", lang="en", status="pending",
        attempts=0, next_at=now(), created_at=now())))

    def renderer(kind: str, params: Any, lang: str) -> str:
        if kind == "mystery":
            raise KeyError("no template")
        return str(params["text"])

    stats = await drain(db, api, renderer=renderer)
    assert (stats["sent"], stats["failed"]) == (1, 1)
    assert statuses(db) == {"t:fine": "sent", "odd": "failed"}


async def test_rate_limiter_counts_a_send_until_its_answer_is_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a clock that moves only when the limiter (or the test) sleeps, so each wait is
    exactly what the limits demand, however loaded the machine is."""
    real_sleep = asyncio.sleep
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        clock[0] += max(seconds, 0.0)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    limiter = RateLimiter(overall=2, period=0.2, per_chat=0.3, margin=0.0,
                          clock=lambda: clock[0])
    async with limiter.slot(1):
        async with limiter.slot(2):
            await asyncio.sleep(0.1)  # two answers outstanding: a third must wait for them
    async with limiter.slot(3):
        pass
    assert clock[0] == pytest.approx(0.3)  # 0.1 for the answers + a full period after them
    async with limiter.slot(1):  # chat 1's last answer came 0.2 s ago: 0.1 s more
        pass
    assert clock[0] == pytest.approx(0.4)
    limiter.pause(0.2)
    async with limiter.slot(4):
        pass
    assert clock[0] == pytest.approx(0.6)


def test_outbox_command_shows_pending_sent_and_failed(
        db: Database, sqlite_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TELEGRAM_BOT_TOKEN", "WECHAT_APP_ID", "WECHAT_APP_SECRET"):
        monkeypatch.delenv(name, raising=False)
    owe(db, user(db, "tg:1"), "a")
    owe(db, user(db, "tg:2"), "b")
    c = outbox.claim(db, now=now(), limit=1).claims[0]
    outbox.mark_unreachable(db, c, now=now(), error="Telegram: Forbidden: bot was blocked")

    assert main(["outbox", "--db", sqlite_url]) == 0
    shown = capsys.readouterr().out
    assert shown.splitlines()[0] == ("outbox: 1 pending (1 due now), 0 sending, 0 sent, "
                                     "0 failed, 1 unreachable, 0 interrupted")
    assert "bot was blocked" in shown

    assert main(["outbox", "--db", sqlite_url, "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["counts"]["unreachable"] == 1 and as_json["due_now"] == 1

    assert main(["outbox", "--db", sqlite_url, "--requeue", "unreachable", "--json"]) == 0
    requeued = capsys.readouterr()
    assert "requeued 1 notifications" in requeued.err
    assert json.loads(requeued.out)["counts"]["pending"] == 2

    assert main(["outbox", "--db", sqlite_url, "--deliver"]) == 2
    assert "no channel configured" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        main(["outbox", "--db", sqlite_url, "--requeue", "sent"])
    assert bad.value.code == 2 and "invalid choice" in capsys.readouterr().err
