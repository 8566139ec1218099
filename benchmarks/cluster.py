"""The two-process setup of benchmarks/two_process.py (issue 19): the loopback Bot API
stand-in, `storefront run` processes in webhook mode on one database and Redis, and `Proxy`, a
small Starlette round-robin proxy on loopback in front of them (each request to the next
process in turn); `prepare` makes the shop they serve.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import ROOT

TOKEN = "919:TWO-PROCESS"
SECRET = "two-process-secret"
PRICE = 2_000  # fen: TEA


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the proxy ------------------------------------------------------------------------------

class Proxy:
    """A round-robin HTTP proxy on loopback: each request to the next backend in turn."""

    def __init__(self, backends: list[int]) -> None:
        import httpx
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        self.backends = backends
        self.sent: Counter[int] = Counter()
        turn = itertools.count()
        client: list[httpx.AsyncClient] = []

        async def forward(request: Request) -> Response:
            if not client:
                client.append(httpx.AsyncClient(timeout=30, limits=httpx.Limits(
                    max_connections=256, max_keepalive_connections=64)))
            port = self.backends[next(turn) % len(self.backends)]
            self.sent[port] += 1
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() in ("content-type", "x-telegram-bot-api-secret-token")}
            try:
                r = await client[0].request(request.method,
                                            f"http://127.0.0.1:{port}{request.url.path}",
                                            content=await request.body(), headers=headers)
            except httpx.HTTPError:
                return Response(status_code=502)
            return Response(r.content, status_code=r.status_code,
                            media_type=r.headers.get("content-type"))

        self.app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
        self.port = free_port()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> Proxy:
        import uvicorn

        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                log_config=None, access_log=False, lifespan="off", http="h11",
                                ws="none", loop="asyncio", timeout_keep_alive=60)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="proxy", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the proxy did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


# -- the processes --------------------------------------------------------------------------

RUN = "import sys; from bot.cli import main; sys.exit(main(sys.argv[1:]))"


class Service:
    """One `storefront run` process (webhook mode) on `url`, its HTTP server on `port`."""

    def __init__(self, url: str, redis_url: str, api_url: str, proxy_port: int, where: Path,
                 operator: int, port: int, zygote: Any = None) -> None:
        self.url, self.port, self.where, self.zygote = url, port, where, zygote
        where.mkdir(parents=True, exist_ok=True)
        self.log = where / "service.log"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("TELEGRAM_", "WECHAT_", "STOREFRONT_", "DATABASE_",
                                         "REDIS_"))}
        self.env.update({
            "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": api_url,
            "TELEGRAM_PAYMENT_PROVIDER_TOKEN": "provider-test",
            "TELEGRAM_WEBHOOK_URL": f"http://127.0.0.1:{proxy_port}/telegram",
            "TELEGRAM_WEBHOOK_SECRET": SECRET, "REDIS_URL": redis_url,
            "STOREFRONT_DEMO_CATALOGUE": "false", "STOREFRONT_HTTP_PORT": str(self.port),
            "STOREFRONT_CHARGE_SPOOL": str(where / "unrecorded_charges.jsonl"),
            "STOREFRONT_OPERATORS": f"tg:{operator}", "STOREFRONT_LOG_FILE": "-",
            "STOREFRONT_LOG_LEVEL": "WARNING", "DATABASE_URL": url, "PYTHONPATH": str(ROOT)})
        self.proc: Any = None  # a `subprocess.Popen`, or the fork server's `Forked`
        self.terminated = False  # a second SIGTERM would cut the graceful stop short

    def start(self) -> None:
        if self.zygote is not None:  # forked from a server that has done the imports
            from tests.storefront_zygote import Forked

            pid = self.zygote.spawn(["run", "--db", self.url], env=self.env, cwd=self.where,
                                    log=self.log)
            self.proc = Forked(self.zygote, pid)
            return
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", RUN, "run", "--db", self.url],
                                         cwd=self.where, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_up(self, deadline: float) -> None:
        import httpx

        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"storefront run exited ({self.proc.returncode})\n"
                                   + self.tail())
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz",
                             timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("storefront run did not come up\n" + self.tail())
            time.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None and not self.terminated:
            self.proc.terminate()
            self.terminated = True
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            return self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


# -- the shop -------------------------------------------------------------------------------

def prepare(url: str, chats: list[int], operator: int, *, migrated: bool = False) -> None:
    """Migrate (unless `migrated`); TEA (queue and points, 15 days) and RICE (points, no
    lock); every user known (English) with points from one RICE bought 40 days ago and a
    queue entry (5 TEA: 100.00, the least that makes one) that has matured since, for the
    operator's release in the middle to pay (after their `/deposit` of what they owe)."""
    from datetime import UTC, datetime, timedelta

    from engine import service, users
    from storage.db import Database
    from storage.migrate import migrate

    db = Database(url)
    try:
        if not migrated:
            migrate(db)
        service.upsert_product(db, sku="TEA", price="20.00", margin="0.30", lock_days=15,
                               scheme="both", name="Tea", actor="bench")
        service.upsert_product(db, sku="RICE", price="5.00", margin="0.30", lock_days=0,
                               scheme="points", name="Rice", actor="bench")
        then = datetime.now(UTC) - timedelta(days=40)
        users.resolve(db, f"tg:{operator}", lang="en")
        for chat in chats:
            users.resolve(db, f"tg:{chat}", lang="en")
            handle = f"tg:{chat}"
            service.buy(db, user=handle, sku="RICE", qty=1, at=then, key=f"setup:rice:{chat}")
            service.buy(db, user=handle, sku="TEA", qty=5, at=then, key=f"setup:tea:{chat}")
    finally:
        db.dispose()


@dataclass
class Cluster:
    """The stand-in, `processes` services on one database and Redis, and the proxy."""

    url: str
    redis_url: str
    processes: int
    where: Path
    operator: int
    zygote: Any = None  # tests/storefront_zygote.py `Zygote`: start each process from it
    api: Any = None
    proxy: Proxy | None = None
    services: list[Service] = field(default_factory=list)

    @contextmanager
    def running(self, meanwhile: Callable[[], object] = lambda: None) -> Iterator[Cluster]:
        """The stand-in, proxy and processes up; `meanwhile` runs while the processes start."""
        from tests.standins.telegram_api import FakeBotAPI

        with ExitStack() as stack:
            self.api = stack.enter_context(FakeBotAPI(token=TOKEN))
            ports = [free_port() for _ in range(self.processes)]
            self.proxy = Proxy(ports).start()
            stack.callback(self.proxy.stop)
            self.services = []
            for i, port in enumerate(ports):
                svc = Service(self.url, self.redis_url, self.api.base_url, self.proxy.port,
                              self.where / f"p{i}", self.operator, port, self.zygote)
                self.services.append(svc)
            stack.callback(self.stop)
            for svc in self.services:
                svc.start()
            meanwhile()
            deadline = time.monotonic() + 120
            for svc in self.services:
                svc.wait_up(deadline)
            yield self

    def stop(self) -> None:
        """SIGTERM to every process at once, then wait for each (a graceful stop each)."""
        for svc in self.services:
            if svc.proc is not None and svc.proc.poll() is None and not svc.terminated:
                svc.proc.terminate()
                svc.terminated = True
        for svc in self.services:
            svc.stop()

    def tails(self) -> str:
        return "\n".join(f"--- process {i}\n{s.tail()}" for i, s in enumerate(self.services))
