"""The HTTP server in a process that has run out of file descriptors, for
tests/test_http_slow_clients.py (run it under a small `ulimit -n`).

    python -m tests.fd_starved_server DATABASE_URL

Starts `bot.http.start_http` (only /healthz) and prints `port <n>`; on SIGUSR1 opens
/dev/null until the process has no descriptor left (as if the database, Redis or outgoing
calls had taken the reserve) and prints `starved`; prints `held <k>` once the storm filter
on the `asyncio` logger has held back k >= 10 records; on a second SIGUSR1 gives the
descriptors back and prints `fed`; on SIGTERM stops and prints `done <k>`. Its log goes to
stderr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import IO

from bot.http import start_http
from bot.http_guard import StormFilter
from bot.settings import Settings
from handlers.base import App
from storage.db import Database
from storage.migrate import migrate


def held() -> int:
    return sum(f.held_back() for f in logging.getLogger("asyncio").filters
               if isinstance(f, StormFilter))


async def main(url: str) -> None:
    db = Database(url)
    migrate(db)
    settings = Settings(_env_file=None, DATABASE_URL=url,  # type: ignore[call-arg]
                        STOREFRONT_HTTP_HOST="127.0.0.1", STOREFRONT_HTTP_PORT=0)
    server = await start_http(settings, App(db=db, operators=frozenset(), currency="CNY"))
    loop = asyncio.get_running_loop()
    stop, toggle = asyncio.Event(), asyncio.Queue[None]()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, toggle.put_nowait, None)
    print(f"port {server.port}", flush=True)

    async def starve_and_feed() -> None:
        await toggle.get()
        hog: list[IO[str]] = []
        try:
            while True:
                hog.append(open(os.devnull))  # noqa: SIM115 - held on purpose
        except OSError:
            pass
        print("starved", flush=True)
        while held() < 10:
            await asyncio.sleep(0.05)
        print(f"held {held()}", flush=True)
        await toggle.get()
        for f in hog:
            f.close()
        print("fed", flush=True)

    task = asyncio.create_task(starve_and_feed())
    await stop.wait()
    task.cancel()
    await server.stop()
    db.dispose()
    print(f"done {held()}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(main(sys.argv[1]))
