"""A slow-body / slow-header flood for the HTTP server, run as its own process.

    python -m tests.slow_flood HOST PORT N

opens N connections to HOST:PORT (its own open-file limit raised to fit), each a request
that declares a body and never finishes, in three kinds taken in turn:

    big      POST /wechat, Content-Length: 100000 (above the 64 KiB cap), a few body bytes
    body     POST /wechat, Content-Length: 60000 (under the cap, so the app waits), a few bytes
    headers  the request line and one header, never the blank line that ends the headers

and trickles one more byte down every connection every 2 s (that defeats idle and keep-alive
timers, as a real slowloris does). It never reconnects. It prints one JSON line when every
connection has been tried (`{"open": …, "failed": …, "seconds": …}`), then holds them and
answers its stdin: a line `closed K` is answered `{"closed_by_server": …, "open": …}` once
the server has closed at least K of them (or after 60 s, whatever the count); end of input
gets the same line, and the flood closes the rest and ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import sys
import time

KINDS = (
    b"POST /wechat HTTP/1.1\r\nHost: shop\r\nContent-Type: text/xml\r\n"
    b"Content-Length: 100000\r\n\r\n<xml>",
    b"POST /wechat HTTP/1.1\r\nHost: shop\r\nContent-Type: text/xml\r\n"
    b"Content-Length: 60000\r\n\r\n<xml>",
    b"POST /wechat HTTP/1.1\r\nHost: shop\r\nX-",
)
TRICKLE_SECONDS = 2.0


def _raise_open_file_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        top = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


async def _open(host: str, port: int, kind: bytes) -> socket.socket | None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 10)
        await loop.sock_sendall(sock, kind)
    except (OSError, TimeoutError):
        sock.close()
        return None
    return sock


async def _watch(sock: socket.socket, closed: list[int]) -> None:
    """Count the connection as closed by the server when it ends (EOF or reset)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = await loop.sock_recv(sock, 4096)
        except OSError:
            data = b""
        if not data:
            closed[0] += 1
            return


async def _trickle(socks: list[socket.socket]) -> None:
    while True:
        await asyncio.sleep(TRICKLE_SECONDS)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(b"a")


async def main(host: str, port: int, n: int) -> None:
    _raise_open_file_limit(n + 64)
    started = time.monotonic()
    gate = asyncio.Semaphore(100)  # connects in flight at once

    async def one(i: int) -> socket.socket | None:
        async with gate:
            return await _open(host, port, KINDS[i % len(KINDS)])

    results = await asyncio.gather(*(one(i) for i in range(n)))
    socks = [s for s in results if s is not None]
    closed = [0]
    watchers = [asyncio.create_task(_watch(s, closed)) for s in socks]
    trickle = asyncio.create_task(_trickle(socks))
    print(json.dumps({"open": len(socks), "failed": n - len(socks),
                      "seconds": round(time.monotonic() - started, 3)}), flush=True)
    loop = asyncio.get_running_loop()

    def status() -> None:
        print(json.dumps({"closed_by_server": closed[0], "open": len(socks) - closed[0]}),
              flush=True)

    while line := await loop.run_in_executor(None, sys.stdin.readline):
        want = int(line.split()[1])
        deadline = time.monotonic() + 60
        while closed[0] < want and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        status()
    status()
    trickle.cancel()
    for task in watchers:
        task.cancel()
    for sock in socks:
        sock.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
