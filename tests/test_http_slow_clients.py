"""Slow headers, slow bodies and connection floods against the HTTP server (issue 13.4,
bot/http_guard.py, docs/reliability.md "Slow bodies").

The first test is the attack itself: `storefront run` (WeChat and Telegram configured) under
`ulimit -n 1024`, 1,500 connections that each declare a body and never finish it
(tests/slow_flood.py, another process), and meanwhile /healthz, a signed WeChat message and
a Telegram /shop are answered. The next starves a server of descriptors on purpose
(tests/fd_starved_server.py); the others pin each mechanism on an in-process server with
small numbers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.http_guard import ConnectionGuard, StormFilter, connection_cap
from tests.standins import wechat as sw
from tests.standins.telegram_api import FakeBotAPI
from tests.wechat_harness import GH_ID, SECRET, TOKEN, next_msg_id, open_shop, stock

ROOT = Path(__file__).resolve().parents[1]
APPID = "wx0123456789abcdef"
ALICE = "oAlice_000000000000000000001"
FLOOD = 1500
OPEN_FILES = 1024
ANSWER_WITHIN = 2.0  # seconds, the client timeout of every probe
ATTEMPTS = 3  # a probe may take up to three fresh connections (each within ANSWER_WITHIN)


# -- the attack against `storefront run` ------------------------------------------------------

def _wait_for(log: Path, pattern: str, proc: subprocess.Popen[Any], timeout: float = 60
              ) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text())
        if found:
            return found
        assert proc.poll() is None, f"storefront run ended:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the log:\n{log.read_text()[-3000:]}")


def _answered(request: Callable[[httpx.Client], httpx.Response], url: str,
              timings: list[float]) -> httpx.Response:
    """`request` on a fresh connection with a ANSWER_WITHIN client timeout; up to ATTEMPTS
    times. Records how long the answered attempt took (and -1 for each one that was not)."""
    for _ in range(ATTEMPTS):
        started = time.monotonic()
        try:
            with httpx.Client(base_url=url, timeout=ANSWER_WITHIN, trust_env=False) as client:
                response = request(client)
        except httpx.HTTPError:
            timings.append(-1.0)
            continue
        timings.append(round(time.monotonic() - started, 3))
        return response
    raise AssertionError(f"not answered within {ANSWER_WITHIN} s in {ATTEMPTS} attempts")


def _healthz(client: httpx.Client) -> httpx.Response:
    return client.get("/healthz")


def _wechat_help(client: httpx.Client) -> httpx.Response:
    xml = sw.text_message_xml(GH_ID, ALICE, "帮助", next_msg_id())
    return client.post("/wechat", params=sw.sign_query(TOKEN), content=xml,
                       headers={"Content-Type": "text/xml"})


def _serving(url: str, timings: dict[str, list[float]]) -> None:
    r = _answered(_healthz, url, timings["healthz"])
    assert r.status_code == 200 and r.json()["database"] == "ok", r.text
    r = _answered(_wechat_help, url, timings["wechat"])
    assert r.status_code == 200, r.text
    assert "商品" in sw.parse_reply_xml(r.text)["Content"]  # the real help text, in Chinese


def _telegram_answers(api: FakeBotAPI, chat: int, timings: list[float]) -> None:
    mark = len(api.calls)
    started = time.monotonic()
    api.push_text(chat, "/shop")
    api.wait_for_sync(lambda c: c.method == "sendMessage" and c.chat_id == chat
                      and "Green tea" in (c.text or ""), timeout=10, since=mark)  # its card
    timings.append(round(time.monotonic() - started, 3))


def _flood_says(flood: subprocess.Popen[str], command: str | None = None) -> dict[str, Any]:
    assert flood.stdin is not None and flood.stdout is not None
    if command is not None:
        flood.stdin.write(command + "\n")
        flood.stdin.flush()
    return json.loads(flood.stdout.readline())


@pytest.mark.slow  # 1,500 connections against `storefront run` in a process of its own
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, runs sh")
def test_1500_slow_bodies_under_a_1024_file_limit_leave_webhooks_and_health_answering(
        tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < FLOOD + 64:
        pytest.skip(f"the flood needs {FLOOD + 64} open files; this machine allows {hard}")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TELEGRAM_", "WECHAT_", "STOREFRONT_")) and k != "REDIS_URL"}
    log = tmp_path / "storefront.log"
    timings: dict[str, list[float]] = {"healthz": [], "wechat": [], "telegram": []}
    with sw.FakeWeChatAPI(appid=APPID, secret=SECRET) as wx, FakeBotAPI() as tg, \
            log.open("w") as out:
        env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
                   STOREFRONT_LOG_FILE="-",  # the log read here is the process's stderr
                   DATABASE_URL=f"sqlite:///{tmp_path}/run.db", STOREFRONT_HTTP_PORT="0",
                   WECHAT_TOKEN=TOKEN, WECHAT_APP_ID=APPID, WECHAT_APP_SECRET=SECRET,
                   WECHAT_API_BASE_URL=wx.base_url,
                   TELEGRAM_BOT_TOKEN="4242:SLOW-TOKEN", TELEGRAM_API_BASE_URL=tg.base_url,
                   # Read deadlines far beyond the test: every stalled connection stays
                   # until the flood lets go, so the probes get in only by the connection
                   # cap's eviction (the deadlines have their own tests below).
                   STOREFRONT_HTTP_HEADER_TIMEOUT="300", STOREFRONT_HTTP_BODY_TIMEOUT="300")
        proc = subprocess.Popen(
            ["sh", "-c", f"ulimit -n {OPEN_FILES} && exec {sys.executable} -m bot.cli run"],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env)
        flood = None
        try:
            found = _wait_for(log, r"listening on 127\.0\.0\.1:(\d+) \(at most (\d+) "
                                   r"connections", proc)
            port, cap = int(found[1]), int(found[2])
            url = f"http://127.0.0.1:{port}"
            limits = Path(f"/proc/{proc.pid}/limits").read_text()
            assert re.search(rf"Max open files\s+{OPEN_FILES}\s+{OPEN_FILES}\s", limits)
            assert cap == OPEN_FILES * 3 // 4 < FLOOD
            tg.wait_for_sync("setMyCommands", timeout=30)
            _serving(url, timings)
            before = len(log.read_text().splitlines())

            flood = subprocess.Popen(
                [sys.executable, "-m", "tests.slow_flood", "127.0.0.1", str(port), str(FLOOD)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env={**env, "PYTHONPATH": str(ROOT)})
            opened = _flood_says(flood)
            assert opened["open"] == FLOOD, opened
            # Every flood connection has been taken in once FLOOD - cap of them were closed
            # to stay at the cap; from then on the server holds `cap` stalled connections.
            held = _flood_says(flood, f"closed {FLOOD - cap}")
            assert held["closed_by_server"] >= FLOOD - cap, held

            for _ in range(3):
                _serving(url, timings)
                _telegram_answers(tg, 7, timings["telegram"])
            during = _flood_says(flood, "closed 0")  # still holding what the probes left
            assert during["open"] >= cap - 3 * ATTEMPTS * 2, during

            lines = log.read_text().splitlines()[before:]
            assert proc.poll() is None
            flood.stdin.close()  # type: ignore[union-attr]
            flood.wait(30)
            _serving(url, timings)
            _telegram_answers(tg, 8, timings["telegram"])
        finally:
            if flood is not None and flood.poll() is None:
                flood.kill()
            stopping = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            print(f"\nstopped in {time.monotonic() - stopping:.2f} s")
        text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    # the flood's own log: a line or two, not one per socket (the rest is routine: the
    # scheduler's jobs and Telegram's polls, logged at INFO)
    assert len(lines) < 50, "\n".join(lines[:60])
    ours = [line for line in lines if " INFO apscheduler" not in line
            and " INFO httpx: HTTP Request: POST" not in line]
    assert len(ours) <= 5, "\n".join(ours)
    assert any("closed to admit new connections" in line for line in ours), ours
    assert "Too many open files" not in text and "Traceback" not in text, text[-3000:]
    # the guard's lines (the first at once, the rest when the server stopped) account for
    # every connection it closed to stay at the cap
    closed = sum(int(n) for n in re.findall(r"(\d+) closed to admit new connections", text))
    assert closed >= FLOOD - cap
    print(f"\ncap {cap}; flood opened in {opened['seconds']} s; {len(lines)} log lines "
          f"during the flood, {len(ours)} not routine; answer times (s, -1 = attempt not "
          f"answered): {timings}\n" + "\n".join(ours))


def test_out_of_descriptors_the_server_pauses_accepting_logs_once_and_recovers(
        tmp_path: Path) -> None:
    """When the reserve is gone anyway (here: eaten on purpose), accept() meets EMFILE;
    asyncio pauses accepting for a second each time, and the log gets one line, not one
    per failed accept."""
    err = tmp_path / "server.log"
    with err.open("w") as out:
        proc = subprocess.Popen(
            ["sh", "-c", f"ulimit -n 256 && exec {sys.executable} -m tests.fd_starved_server "
                         f"sqlite:///{tmp_path}/fd.db"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=out, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout is not None
        clients: list[socket.socket] = []
        try:
            port = int(proc.stdout.readline().split()[1])
            proc.send_signal(signal.SIGUSR1)
            assert proc.stdout.readline().strip() == "starved"
            # the kernel completes these connections; the server cannot accept them
            clients = [_connect(f"http://127.0.0.1:{port}") for _ in range(40)]
            assert proc.stdout.readline().startswith("held ")  # >= 10 failed accepts
            proc.send_signal(signal.SIGUSR1)
            assert proc.stdout.readline().strip() == "fed"
            with httpx.Client(timeout=10, trust_env=False) as client:
                r = client.get(f"http://127.0.0.1:{port}/healthz")  # accepting again
            assert r.status_code == 200 and r.json()["database"] == "ok"
        finally:
            for sock in clients:
                sock.close()
            proc.send_signal(signal.SIGTERM)
            done = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0 and done.startswith("done ")
    log = err.read_text()
    assert log.count("socket.accept() out of system resource") == 1, log[-3000:]
    assert "Traceback" in log and log.count("Too many open files") == 1  # the first, whole


# -- each mechanism, in process ----------------------------------------------------------------

def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a 10 s socket timeout guards the test)."""
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


async def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture
async def quick(sqlite_url: str, keys: sw.PayKeys) -> Any:
    """The WeChat shop with short read deadlines and keep-alive, room for four connections."""
    async with open_shop(sqlite_url, keys, STOREFRONT_HTTP_HEADER_TIMEOUT="0.5",
                         STOREFRONT_HTTP_BODY_TIMEOUT="0.5",
                         STOREFRONT_HTTP_KEEPALIVE_TIMEOUT="1",
                         STOREFRONT_HTTP_MAX_CONNECTIONS="4") as s:
        stock(s.db)
        yield s


async def _stalled(url: str, first_bytes: bytes) -> tuple[socket.socket, float]:
    """A connection that sent `first_bytes`, and when it began (before the server could
    start any deadline, so a deadline never looks early)."""
    began = time.monotonic()
    sock = await asyncio.to_thread(_connect, url)
    sock.sendall(first_bytes)
    return sock, began


async def test_headers_that_never_end_are_answered_408_at_the_deadline_however_they_trickle(
        quick: Any) -> None:
    sock, started = await _stalled(quick.server.url, b"POST /wechat HTTP/1.1\r\nHost: x\r\n")

    def trickle_until_closed() -> bytes:
        sock.settimeout(0.05)
        data = b""
        while True:  # one more header byte every 50 ms: no idle gap ever reaches 0.5 s
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                try:
                    sock.sendall(b"X")
                except OSError:  # closed under our feet: what it said is still queued
                    sock.settimeout(10)
                    return data + _read_all(sock)
                assert time.monotonic() - started < 60, "never closed"
                continue
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    answer = await asyncio.to_thread(trickle_until_closed)
    took = time.monotonic() - started
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert 0.5 <= took < 60


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_deadline(
        quick: Any) -> None:
    sock, began = await _stalled(quick.server.url, b"")
    answer = await asyncio.to_thread(_read_all, sock)
    took = time.monotonic() - began
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and 0.5 <= took < 60


@pytest.mark.parametrize("declared", [60_000, 100_000], ids=["app-reads-it", "refused-413"])
async def test_a_body_that_never_ends_is_cut_at_the_deadline_whether_or_not_the_app_reads_it(
        quick: Any, declared: int, caplog: pytest.LogCaptureFixture) -> None:
    head = (f"POST /wechat HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n<xml>")
    sock, started = await _stalled(quick.server.url, head.encode())
    answer = await asyncio.to_thread(_read_all, sock)
    took = time.monotonic() - started
    sock.close()
    # within the cap the app waits for the body: the guard answers 408; above it the app
    # has said 413 at once, and the guard closes the connection the body still holds open
    expected = b"HTTP/1.1 408 " if declared < 65536 else b"HTTP/1.1 413 "
    assert answer.startswith(expected), answer
    assert 0.5 <= took < 60
    guard = quick.server.guard
    await _until(lambda: not guard.open)
    assert guard.report.totals["timed_out"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no "failed"
    r = await quick.http.get("/healthz")
    assert r.status_code == 200


async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
        quick: Any) -> None:
    sock, began = await _stalled(quick.server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.to_thread(_read_all, sock)  # the answer, then the close
    took = time.monotonic() - began
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b'"database":"ok"' in answer
    assert 1 <= took < 60
    assert quick.server.guard.report.totals["timed_out"] == 0  # uvicorn's keep-alive timer


@pytest.fixture
async def capped(sqlite_url: str, keys: sw.PayKeys) -> Any:
    """The WeChat shop with room for four connections, and read deadlines beyond the test."""
    async with open_shop(sqlite_url, keys, STOREFRONT_HTTP_MAX_CONNECTIONS="4",
                         STOREFRONT_HTTP_HEADER_TIMEOUT="300") as s:
        stock(s.db)
        yield s


async def test_at_the_cap_the_longest_waiting_slow_client_makes_room(capped: Any) -> None:
    guard = capped.server.guard
    slow = []
    for i in range(4):  # the cap: 4, each admitted before the next connects
        sock, _ = await _stalled(capped.server.url, b"POST /wechat HTTP/1.1\r\n")
        slow.append(sock)
        await _until(lambda n=i + 1: len(guard.open) == n)

    async def served(client: httpx.AsyncClient) -> None:
        assert (await client.get("/healthz")).status_code == 200
        reply = await client.post("/wechat", params=sw.sign_query(TOKEN),
                                  content=sw.text_message_xml(GH_ID, ALICE, "帮助",
                                                              next_msg_id()))
        assert "商品" in sw.parse_reply_xml(reply.text)["Content"]

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=capped.server.url, timeout=10, trust_env=False)

    async with client() as one, client() as two:
        await served(one)
        first = await asyncio.to_thread(_read_all, slow[0])
        assert first.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")  # the oldest
        # `one` stays connected, idle: a client waiting less long than slow[1], which
        # makes room for `two`
        await served(two)
        second = await asyncio.to_thread(_read_all, slow[1])
        assert second.startswith(b"HTTP/1.1 503 ")
        assert len(guard.open) == 4
    assert guard.report.totals == {"timed_out": 0, "evicted": 2, "refused": 0}
    for sock in slow[2:]:  # the younger ones are still held
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
    for sock in slow:
        sock.close()


async def test_at_the_cap_with_every_connection_busy_a_new_one_is_refused(
        sqlite_url: str, keys: sw.PayKeys) -> None:
    async with open_shop(sqlite_url, keys, STOREFRONT_HTTP_MAX_CONNECTIONS="1") as shop:
        guard, release = shop.server.guard, asyncio.Event()
        real = shop.server.wechat.handle_post

        async def slow_handler(query: dict[str, str], body: bytes) -> Any:
            await release.wait()  # the app is working on a whole request
            return await real(query, body)

        shop.server.wechat.handle_post = slow_handler
        busy = asyncio.create_task(shop.post(sw.text_message_xml(GH_ID, ALICE, "帮助",
                                                                 next_msg_id())))
        await _until(lambda: len(guard.open) == 1 and not guard.waiting)
        sock = await asyncio.to_thread(_connect, shop.server.url)  # refused on arrival
        refused = await asyncio.to_thread(_read_all, sock)
        sock.close()
        assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert guard.report.totals == {"timed_out": 0, "evicted": 0, "refused": 1}
        release.set()
        reply = shop.reply_of(await busy)  # the busy request was not disturbed
        assert "商品" in reply["Content"]


async def test_what_the_guard_does_is_logged_once_then_summarised(
        caplog: pytest.LogCaptureFixture) -> None:
    class Waiting:
        def drop(self, status: int) -> None:
            guard.forget(self)  # type: ignore[arg-type]

    guard = ConnectionGuard(cap=1, header_timeout=1, body_timeout=1, report_every=0.2)
    caplog.set_level(logging.INFO, logger="bot.http")
    for _ in range(500):
        victim = Waiting()
        guard.open.add(victim)  # type: ignore[arg-type]
        guard.waiting[victim] = None  # type: ignore[index]
        assert guard.admit(object()) is True  # type: ignore[arg-type]
        guard.open.clear()
    lines = [r.getMessage() for r in caplog.records if r.name == "bot.http"]
    assert len(lines) == 1 and "1 closed to admit new connections" in lines[0]
    await _until(lambda: len([r for r in caplog.records if r.name == "bot.http"]) == 2)
    summary = [r for r in caplog.records if r.name == "bot.http"][1]
    assert "499 closed to admit new connections" in summary.getMessage()
    assert summary.levelno == logging.WARNING
    guard.report.close()


def test_a_storm_of_the_same_warning_is_logged_once_then_counted() -> None:
    storm = StormFilter(every=60)
    records = [logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                                 "socket.accept() out of system resource\nsocket: <fd=9>",
                                 None, None) for _ in range(1000)]
    passed = [r for r in records if storm.filter(r)]
    assert len(passed) == 1
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "something else", None,
                              None)
    assert storm.filter(other)  # another message is not held back by the first
    storm.every = 0  # a minute later
    late = logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                             "socket.accept() out of system resource", None, None)
    assert storm.filter(late)
    assert "999 more like this" in late.getMessage()


def test_the_cap_leaves_a_quarter_of_the_open_file_limit_for_everything_else() -> None:
    assert connection_cap(0, 1024) == (768, 32)
    assert connection_cap(0, 65536) == (49152, 1024)
    assert connection_cap(100, 1024) == (100, 32)  # a configured cap only lowers it
    assert connection_cap(5000, 1024) == (768, 32)
    assert connection_cap(0, 64) == (1, 8)
