"""`storefront chat` end to end: the console chat as a subprocess, driven through its stdin.

Each line sent is followed by `:help`, whose answer marks the end of the reply, so every
reply can be checked on its own, and the database (a SQLite file) inspected
between lines with `engine.state.snapshot`."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from engine.state import snapshot
from storage.db import Database
from storage.models import JournalTxn, Outbox

ROOT = Path(__file__).resolve().parent.parent
NOT_OPERATOR = "Sorry, only the shop's operators can do that."


class ConsoleChat:
    def __init__(self, db_url: str, cwd: Path, identity: str = "console:admin", *,
                 command: tuple[str, ...] = ("chat",), **extra_env: str) -> None:
        # lines go through a pipe: an oversized line is cut by nothing but the console
        env = {**os.environ, "STOREFRONT_DEMO_CATALOGUE": "false", "STOREFRONT_OPERATORS": "",
               "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra_env}
        env.pop("TELEGRAM_BOT_TOKEN", None)
        who = ("--as", identity) if command == ("chat",) else ()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", *command, "--db", db_url, *who],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            encoding="utf-8", cwd=cwd, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._until(lambda line: "`:quit` to leave." in line)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _until(self, done: Any) -> list[str]:
        got = []
        while True:
            line = self.lines.get(timeout=120)  # a loaded machine is slow
            if line is None:
                raise AssertionError("console ended early:\n" + "\n".join(got) +
                                     (self.proc.stderr.read() if self.proc.stderr else ""))
            if done(line):
                return got
            got.append(line)

    def send(self, line: str) -> str:
        """The console's whole answer to `line` (ended by the answer to `:help`, which
        changes nothing)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n:help\n")
        self.proc.stdin.flush()
        got = self._until(lambda x: "leave (end of input works too)" in x)
        assert got[0].endswith(f"> {line}"), got
        end = max(i for i, x in enumerate(got) if x.endswith("> :help"))
        return "\n".join(got[1:end])

    def close(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(":quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)
        assert self.proc.returncode == 0
        return self.proc.stderr.read() if self.proc.stderr else ""


@pytest.fixture
def console(tmp_path):
    url = f"sqlite:///{tmp_path}/shop.db"
    chat = ConsoleChat(url, tmp_path)
    db = Database(url)
    yield chat, db
    stderr = chat.close()
    db.dispose()
    assert "Traceback" not in stderr, stderr


def world(db: Database) -> tuple[Any, ...]:
    def read(s: Any) -> tuple[Any, ...]:
        return (snapshot(s), s.execute(select(func.count()).select_from(JournalTxn)).scalar_one(),
                s.execute(select(func.count()).select_from(Outbox)).scalar_one())

    return db.read(read)


def test_console_shop_invite_purchase_payment_acceleration_and_reports(console):
    chat, db = console
    assert chat.send("/product TEA 100.00 0.30 15 queue Green tea") == (
        "Product TEA saved: Green tea, 100.00 CNY, margin 30%, lock 15 days, scheme queue.")
    assert chat.send("/deposit queue 1000.00") == (
        "Deposited 1000.00 CNY into the queue pool; balance now 1000.00 CNY.")
    chat.send(":as console:alice")
    invite = chat.send("/invite")
    code = invite.split("Your invite code: ")[1].split()[0]
    assert "Your invite QR code" in invite
    bought = chat.send("/buy TEA")
    assert "[console simulation] type `pay` to pay 100.00 CNY" in bought
    paid = chat.send("pay")
    assert "[console simulation] paying 100.00 CNY for order N1" in paid
    assert "Queue entry #1 for 100.00 CNY: released in queue order from" in paid

    chat.send(":as console:bob")
    assert "You joined through a friend's invitation." in chat.send(f"/start {code}")
    chat.send("/buy TEA")
    assert "Queue entry #2 for 100.00 CNY" in chat.send("pay")

    chat.send(":as console:alice")
    me = chat.send("/me")
    assert "Wallet: 20.00 CNY (held for withdrawals: 0.00 CNY)" in me  # floor(100 × 0.20)
    assert "Cashback queue: 1 waiting, 80.00 CNY still to come." in me
    assert "they earned you 20.00 CNY" in chat.send("/invite")
    assert "Acceleration from an invitee · wallet +20.00 CNY" in chat.send("/history")

    chat.send(":as console:admin")
    pool = chat.send("/pool")
    # 1000.00 + 6.00 + 6.00 in, 20.00 accelerated out; owed 80.00 + 100.00
    assert "Queue pool 992.00 CNY · liability 180.00 CNY · coverage 551.1%" in pool
    assert "Pool vs liability" in pool
    state = db.read(snapshot)
    assert state["pools"]["queue"] == "992.00"
    assert state["users"]["console:alice"]["wallet"] == "20.00"
    assert state["users"]["console:bob"]["referrer"] == "console:alice"
    assert [(e["user"], e["released"]) for e in state["entries"]] == [
        ("console:alice", "20.00"), ("console:bob", "0.00")]
    release = chat.send("/release")
    assert release.startswith("Release started…")
    assert "Release done: orders settled 0, entries paid 0 (0.00 CNY)." in release


OPERATOR_COMMANDS = [
    "/admin", "/product TEA 1.00 0.10 1 queue", "/deposit queue 1.00", "/deposit points 1.00",
    "/pool", "/release", "/withdrawals", "/approve 1", "/reject 1", "/offline console:eve TEA",
    "/refund N1", "/user console:eve", "/broadcast hello", "/pause", "/resume", "/verify",
    "/export", "/export users csv", "管理", "群发 大家好",
]


def a_shopper_of_tea(chat: ConsoleChat, identity: str) -> None:
    """The operator puts TEA on sale; `identity` speaks from now on, having started."""
    chat.send("/product TEA 100.00 0.30 15 queue Green tea")
    chat.send(f":as {identity}")
    chat.send("/start")


def test_console_non_operator_is_refused_every_operator_command_and_nothing_changes(console):
    chat, db = console
    a_shopper_of_tea(chat, "console:eve")
    for line in OPERATOR_COMMANDS:
        before = world(db)
        assert chat.send(line) == NOT_OPERATOR, line
        assert world(db) == before, line


MALFORMED = [
    "/buy", "/buy TEA 0", "/buy TEA -1", "/buy NOPE", "/buy TEA 1 points x", "/withdraw -1",
    "/withdraw 1.001", "/withdraw 1e5", "/sellpoints x", "/sellpoints 1", "/transfer",
    "/transfer nobody 1", "/history x", "/lang xx", "/nosuch", "{}{0}%s", "购买 茶",
    "提现 abc", "\x07bell", "x" * 5000, "pay", ":press 9", ":as not an identity",
]


def test_console_malformed_inputs_get_polite_replies_and_change_nothing(console):
    chat, db = console
    a_shopper_of_tea(chat, "console:mallory")
    for line in MALFORMED:
        before = world(db)
        reply = chat.send(line)
        assert reply.strip() and "Traceback" not in reply and len(reply) < 900, (line, reply)
        assert world(db) == before, line


# -- `storefront run` -----------------------------------------------------------------------

def _run_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TELEGRAM_", "WECHAT_", "STOREFRONT_")) and k != "REDIS_URL"}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": f"sqlite:///{tmp_path}/run.db", **extra}


def test_run_without_a_channel_is_the_console_chat_with_a_demo_catalogue(tmp_path):
    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot.cli", "run"], cwd=tmp_path,
                              input="/shop\n:quit\n", capture_output=True, text=True,
                              timeout=60, env=_run_env(tmp_path, **extra))

    done = run()
    assert done.returncode == 0, done.stderr
    assert "Green tea 绿茶 (TEA) — 100.00 CNY" in done.stdout
    assert done.stdout.count("• ") == 4  # tea/queue, rice/points, sofa/both, pen/none
    again = run()  # seeded once: the journal is no longer empty
    assert again.stdout.count("• ") == 4 and "Traceback" not in again.stderr


def test_run_without_a_channel_prints_every_users_notifications_and_no_log_lines(tmp_path):
    """`make run` with no tokens: the console chat with the scheduler. A broadcast reaches
    `tg:2` (a user made with `:as`) in the chat, marked with whom it is for; the scheduler's
    log lines (DEBUG here, so there are plenty) go to var/storefront.log, never into the chat."""
    env = {k: v for k, v in _run_env(tmp_path).items() if k != "DATABASE_URL"}
    chat = ConsoleChat(f"sqlite:///{tmp_path}/run.db", tmp_path, command=("run",),
                       **{**env, "STOREFRONT_LOG_LEVEL": "DEBUG"})
    chat.send(":as tg:2")
    chat.send("/me")  # tg:2 is a user now
    chat.send(":as console:admin")
    assert "[1]" in chat.send("/broadcast the shop opens at nine")
    shown = "🔔 [to tg:2] the shop opens at nine"
    if shown not in chat.send(":press 1").splitlines():  # else it comes at the next tick
        chat._until(lambda line: line == shown)
    stderr = chat.close()
    log = (tmp_path / "var" / "storefront.log").read_text(encoding="utf-8")
    assert "outbox delivery" in log and " DEBUG " in log  # the scheduler ran and logged there
    assert stderr.splitlines() == ["storefront: logs (DEBUG) go to var/storefront.log; "
                                   "STOREFRONT_LOG_FILE=- shows them here"], stderr


def test_run_can_skip_the_demo_catalogue(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bot.cli", "run"], cwd=tmp_path,
                          input="/shop\n", capture_output=True, text=True, timeout=60,
                          env=_run_env(tmp_path, STOREFRONT_DEMO_CATALOGUE="false"))
    assert done.returncode == 0 and "No products are on sale yet." in done.stdout


def test_run_serves_telegram_through_the_real_adapter_and_stops_on_sigterm(tmp_path):
    from tests.standins.telegram_api import FakeBotAPI

    with FakeBotAPI() as api:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run"], cwd=tmp_path, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_run_env(tmp_path, TELEGRAM_BOT_TOKEN="4242:RUN-TOKEN",
                         STOREFRONT_LOG_LEVEL="DEBUG",
                         TELEGRAM_API_BASE_URL=api.base_url, STOREFRONT_HTTP_PORT="0",
                         STOREFRONT_OPERATORS="tg:1"))
        try:
            api.wait_for_sync("setMyCommands", timeout=30)
            api.push_text(7, "/shop")
            api.wait_for_sync(lambda c: c.method == "sendMessage" and c.chat_id == 7
                              and "(TEA)" in (c.text or ""), timeout=30)  # its card
            assert api.sent_texts(7)[0] == "Products:"
            assert any("Green tea 绿茶 (TEA) — 100.00 CNY" in t for t in api.sent_texts(7))
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "RUN-TOKEN" not in err
        log = (tmp_path / "var" / "storefront.log").read_text(encoding="utf-8")
        assert "storefront running: telegram" in log and "setMyCommands" in log  # DEBUG
        assert "RUN-TOKEN" not in log


def test_channel_hooks_do_nothing_without_credentials(tmp_path):
    import asyncio

    from bot import app as app_module
    from bot.settings import Settings

    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path}/h.db")  # type: ignore[call-arg]
    db = Database(settings.database_url)
    try:
        shop = app_module.make_app(settings, db)
        assert asyncio.run(app_module.start_telegram(settings, shop)) is None
        assert asyncio.run(app_module.start_http(settings, shop)) is None
    finally:
        db.dispose()


def test_the_app_is_built_once_with_what_each_channel_can_do(tmp_path):
    import dataclasses

    from bot import app as app_module
    from bot.settings import Settings

    def settings(**env: str) -> Settings:
        return Settings(_env_file=None, **env)  # type: ignore[call-arg]

    pay = {"WECHAT_TOKEN": "t", "WECHAT_APP_ID": "wxapp", "WECHAT_PAY_MCH_ID": "1",
           "WECHAT_PAY_PRIVATE_KEY_FILE": "k", "WECHAT_PAY_CERT_SERIAL": "s",
           "WECHAT_PAY_APIV3_KEY": "a", "WECHAT_PAY_PUBLIC_KEY_FILE": "p",
           "WECHAT_PAY_PUBLIC_KEY_ID": "i", "WECHAT_PAY_NOTIFY_URL": "https://x/n"}
    assert app_module.payments_of(settings()) == frozenset()
    assert app_module.payments_of(settings(), console=True) == {"console"}
    assert app_module.payments_of(settings(TELEGRAM_BOT_TOKEN="1:x")) == frozenset()
    assert app_module.payments_of(settings(
        TELEGRAM_BOT_TOKEN="1:x", TELEGRAM_PAYMENT_PROVIDER_TOKEN="p")) == {"telegram"}
    assert app_module.payments_of(settings(**pay)) == {"wechat"}
    # WeChat Pay collects CNY only; a missing WeChat Pay setting means no WeChat payments
    assert app_module.payments_of(settings(**pay, STORE_CURRENCY="USD")) == frozenset()
    assert app_module.payments_of(settings(**{**pay, "WECHAT_PAY_NOTIFY_URL": ""})) == frozenset()
    db = Database(f"sqlite:///{tmp_path}/a.db")
    try:
        shop = app_module.make_app(settings(STOREFRONT_OPERATORS="tg:1"), db, console=True)
        assert shop.takes_payments("console") and not shop.takes_payments("telegram")
        assert "tg:1" in shop.operators and shop.channels.bot_username is None
        with pytest.raises(dataclasses.FrozenInstanceError):
            shop.channels = shop.channels  # type: ignore[misc]
    finally:
        db.dispose()
