"""Slow clients and connection floods: what keeps the one HTTP server answering.

uvicorn bounds idle keep-alive time (`timeout_keep_alive`) and header size (h11's 16 KiB),
but not how long a client may take to send its headers or its body, nor how many
connections it holds; and when the process runs out of file descriptors, asyncio's accept
loop logs "socket.accept() out of system resource" once per failed accept — up to
`backlog` times per second (docs/reliability.md, "Slow bodies"). So:

* **Read deadlines.** `GuardedH11Protocol` (uvicorn's h11 protocol plus a timer) gives a
  request `header_timeout` seconds from its first byte to the end of its headers, then
  `body_timeout` seconds to the end of its body — totals, not idle gaps, so trickling one
  byte at a time does not extend them (Go's `ReadHeaderTimeout` / `ReadTimeout`). A request
  that misses one is answered 408 and closed, whether or not the app reads its body. The
  deadlines follow h11's own view of the client (`their_state`), so they also hold for a
  body still dribbling in after the app has answered (413, 403).
* **A cap on open connections** below the open-file limit (`connection_cap`): a quarter of
  RLIMIT_NOFILE (at least 64) stays free for the database, Redis, outgoing API calls and
  sockets accepted but not yet admitted, so accept() does not meet EMFILE in the first
  place. asyncio accepts up to `backlog` sockets per loop tick, so that number is kept
  small, while the kernel's queue of connections waiting to be accepted stays long
  (LISTEN_QUEUE, set on the socket after the server starts): a burst waits its turn instead
  of having its SYNs dropped (a dropped SYN costs the client a second).
* **At the cap, the longest-waiting slow client makes room.** A connection is *waiting* while
  the server waits on the client: idle between requests, headers or body unfinished. A new
  connection closes the one that has waited longest (503); when every open connection is
  busy with a request the app is working on, the new connection is refused (503, closed).
  A webhook sends its whole request at once and is never waiting for long, so 1,500 stalled
  connections cannot keep /healthz or a WeChat message out.
* **Logged once a while.** What the guard does is counted and logged once at the start,
  then at most once per `REPORT_SECONDS` while it goes on, and what is left when the server
  stops (`_Report`); repeated warnings from asyncio and uvicorn (`StormFilter`) likewise.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("bot.http")

REPORT_SECONDS = 60.0
MIN_RESERVE = 64
LISTEN_QUEUE = 1024  # the kernel's accept queue (capped by net.core.somaxconn)

_ANSWERS = {
    status: (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
             f"content-length: {len(phrase)}\r\nconnection: close\r\n\r\n{phrase}").encode()
    for status, phrase in ((408, "Request Timeout"), (503, "Service Unavailable"))
}


def connection_cap(configured: int = 0, soft_limit: int | None = None) -> tuple[int, int]:
    """(cap on open connections, sockets accepted per loop tick) for this open-file limit.

    A quarter of the limit (at least MIN_RESERVE) stays for everything that is not an admitted
    HTTP connection. That includes sockets accepted but not yet admitted: asyncio accepts up
    to `backlog` sockets per loop tick and hands them to the protocol two ticks later, and a
    connection closed to make room is released one tick after that — so about three ticks'
    worth of accepts can be open beyond the cap. An eighth of the reserve per tick keeps that
    within it. `configured` > 0 lowers the cap."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY or soft_limit <= 0:
        soft_limit = 1 << 20
    reserve = max(MIN_RESERVE, soft_limit // 4)
    cap = max(1, soft_limit - reserve)
    if configured > 0:
        cap = min(cap, configured)
    return cap, max(8, min(LISTEN_QUEUE, reserve // 8))


class _Report:
    """Counts of what the guard did, logged at once the first time and then at most once
    every `every` seconds while it keeps happening."""

    KINDS = ("timed_out", "evicted", "refused")

    def __init__(self, guard: ConnectionGuard, every: float) -> None:
        self.guard, self.every = guard, every
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.totals = dict.fromkeys(self.KINDS, 0)
        self.since = time.time()
        self._timer: asyncio.TimerHandle | None = None

    def note(self, kind: str) -> None:
        self.counts[kind] += 1
        self.totals[kind] += 1
        if self._timer is None:
            self._say()
            self._timer = asyncio.get_running_loop().call_later(self.every, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if any(self.counts.values()):
            self._say()
            self._timer = asyncio.get_running_loop().call_later(self.every, self._tick)

    def _say(self) -> None:
        c, g = self.counts, self.guard
        level = logging.WARNING if c["evicted"] or c["refused"] else logging.INFO
        log.log(level, "HTTP slow clients since %s: %d timed out (headers %gs, body %gs); "
                "%d closed to admit new connections and %d new connections refused at the "
                "cap of %d open connections; %d open now",
                time.strftime("%H:%M:%S", time.localtime(self.since)), c["timed_out"],
                g.header_timeout, g.body_timeout, c["evicted"], c["refused"], g.cap,
                len(g.open))
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.since = time.time()

    def close(self) -> None:
        """The server stops: say what has not been said yet."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if any(self.counts.values()):
            self._say()


class ConnectionGuard:
    """The open connections of one server, which of them wait on their client (oldest
    first), and the cap."""

    def __init__(self, cap: int, header_timeout: float, body_timeout: float,
                 report_every: float = REPORT_SECONDS) -> None:
        self.cap, self.header_timeout, self.body_timeout = cap, header_timeout, body_timeout
        self.open: set[GuardedH11Protocol] = set()
        self.waiting: dict[GuardedH11Protocol, None] = {}  # insertion order: longest first
        self.report = _Report(self, report_every)

    def admit(self, conn: GuardedH11Protocol) -> bool:
        if len(self.open) >= self.cap:
            victim = next(iter(self.waiting), None)
            if victim is None:
                self.report.note("refused")
                return False
            victim.drop(503)
            self.report.note("evicted")
        self.open.add(conn)
        return True

    def forget(self, conn: GuardedH11Protocol) -> None:
        self.open.discard(conn)
        self.waiting.pop(conn, None)

    def protocol(self) -> type[GuardedH11Protocol]:
        """The protocol class to give uvicorn (`Config(http=...)`), bound to this guard."""
        return type("GuardedH11", (GuardedH11Protocol,), {"guard": self})


# What the server waits for from the client, judged by h11's state of the client's side.
_IDLE, _HEADERS, _BODY, _BUSY = "idle", "headers", "body", "busy"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines and admission through a ConnectionGuard.

    Relies on H11Protocol's `conn` (the h11 connection), `cycle` and `transport`, and on its
    hooks connection_made / data_received / on_response_complete / connection_lost;
    tests/test_http_slow_clients.py exercises each."""

    guard: ConnectionGuard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            self._answer_and_close(503)
            return
        self._enter(_HEADERS)

    def data_received(self, data: bytes) -> None:
        if self._phase in (_IDLE, _BUSY) and self.conn.their_state is h11.IDLE:
            self._enter(_HEADERS)  # the first bytes of the next request on this connection
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self.guard.forget(self)
        super().connection_lost(exc)

    # -- phases -----------------------------------------------------------------------------
    def _follow(self) -> None:
        their = self.conn.their_state
        if their is h11.SEND_BODY:
            self._enter(_BODY)
        elif their is h11.IDLE:
            # still reading headers, or a finished exchange and the connection kept alive
            if self._phase not in (_HEADERS, _IDLE):
                self._enter(_IDLE)
        else:  # the whole request is in (DONE), or the connection is ending
            self._enter(_BUSY)

    def _enter(self, phase: str) -> None:
        if phase == self._phase:
            return
        if self.transport is None or self.transport.is_closing() or self not in self.guard.open:
            return
        self._cancel_deadline()
        self._phase = phase
        if phase == _BUSY:
            self.guard.waiting.pop(self, None)
            return
        self.guard.waiting.setdefault(self, None)  # keeps its place from headers to body
        timeout = {_HEADERS: self.guard.header_timeout, _BODY: self.guard.body_timeout}.get(phase)
        if timeout is not None:
            self._deadline = self.loop.call_later(timeout, self._timed_out)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        self.guard.report.note("timed_out")
        self.drop(408)

    def drop(self, status: int) -> None:
        """Stop waiting on this client: answer `status` unless a response has started,
        then close."""
        self._cancel_deadline()
        self.guard.forget(self)
        self._answer_and_close(status)

    def _answer_and_close(self, status: int) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            # raw bytes: h11 will not send a response before it has seen a request
            self.transport.write(_ANSWERS[status])
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # a client that does not read must not hold the socket
        else:
            self.transport.close()


class StormFilter(logging.Filter):
    """Let each warning or error (by its message's first line) through at most once per
    `every` seconds; the next one let through says how many like it were held back. Lower
    levels pass."""

    def __init__(self, every: float = REPORT_SECONDS) -> None:
        super().__init__()
        self.every = every
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def held_back(self) -> int:
        """Records held back and not yet counted in a later one."""
        return sum(self._held.values())

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg).split("\n", 1)[0])
        now = time.monotonic()
        last = self._last.get(key, now - self.every)
        if now - last < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg}\n({held} more like this in the last {now - last:.0f} s " \
                         f"were not logged)"
        return True


def install_storm_filters(*names: str) -> None:
    """Put one StormFilter on each named logger (once)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, StormFilter) for f in logger.filters):
            logger.addFilter(StormFilter())
