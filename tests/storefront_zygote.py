"""A fork server for `storefront` processes (tests/test_telegram_inbox_kill.py,
tests/test_two_process.py through benchmarks/cluster.py): one per test session, started by
the first test that asks for it (tests/conftest.py `storefront_zygote`)."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# The fork server: imports the service's modules once, then forks each `storefront` process
# (the service, `storefront verify`) from that state. A child is the real `bot.cli.main(argv)`
# in its own directory, environment and log (and, if asked, a separate file for stderr), killed with SIGKILL by its pid; only Python's
# module imports are shared. They were most of a start-up (8 s of CPU on this 2-core box,
# 17 s of wall time while others' suites ran) and have nothing to do with what a restart
# recovers. Commands on stdin, one JSON line each; answers on stdout.
ZYGOTE = r"""
import json, os, sys, threading, traceback
import bot.app, bot.cli, bot.http, bot.telegram, bot.wechat, bot.wechatpay, scheduler  # noqa
# (and what `run` imports later, on its way up: the web pages, the deliverer, their libraries)
import bot.web.site, bot.web.admin, bot.web.buyer, bot.wechatpay.transfers  # noqa
import engine.batch, engine.queue_ahead, handlers.notify, jinja2, httpcore  # noqa
import anyio.lowlevel, anyio.streams.memory, anyio.streams.stapled, anyio.streams.tls  # noqa
import concurrent.futures.thread, starlette.staticfiles, uvicorn.lifespan.on  # noqa
import storage.faults
assert threading.active_count() == 1, threading.enumerate()  # nothing to break by forking
out = sys.stdout
out.write("ready\n"); out.flush()
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "spawn":
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.chdir(cmd["cwd"])
                os.environ.clear()
                os.environ.update(cmd["env"])
                log = os.open(cmd["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                err = os.open(cmd.get("err") or cmd["log"],
                              os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0); os.dup2(log, 1); os.dup2(err, 2)
                os.close(null); os.close(log); os.close(err)
                # what a fresh process reads from its environment as it imports
                storage.faults.disarm()
                if os.environ.get(storage.faults.ENV):
                    storage.faults.arm(os.environ[storage.faults.ENV])
                code = bot.cli.main(cmd["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(code or 0)
        answer = {"pid": pid}
    else:  # "poll" (None while it runs) or "wait": the child's exit status
        done, status = os.waitpid(cmd["pid"], os.WNOHANG if cmd["op"] == "poll" else 0)
        answer = {"status": os.waitstatus_to_exitcode(status) if done else None}
    out.write(json.dumps(answer) + "\n"); out.flush()
"""


class Zygote:
    """The fork server above, for the whole session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one question and its answer at a time
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=ROOT,
                                     env={**base_env(), "PYTHONPATH": str(ROOT)},
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._read() == "ready"

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return line.strip()

    def _ask(self, **cmd: Any) -> Any:
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            return json.loads(self._read())

    def spawn(self, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path,
              err: Path | None = None) -> int:
        """A child running `bot.cli.main(argv)`: stdout to `log`, stderr to `err` (default
        `log`); its pid."""
        return int(self._ask(op="spawn", argv=argv, env=env, cwd=str(cwd), log=str(log),
                             err=str(err) if err else None)["pid"])

    def poll(self, pid: int) -> int | None:
        status = self._ask(op="poll", pid=pid)["status"]
        return None if status is None else int(status)

    def wait(self, pid: int) -> int:
        return int(self._ask(op="wait", pid=pid)["status"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


_shared: list[Zygote] = []
_shared_lock = threading.Lock()


def shared() -> Zygote:
    """The session's fork server, started on first use, closed when the session ends."""
    with _shared_lock:
        if not _shared:
            _shared.append(Zygote())
            atexit.register(_shared[0].close)
        return _shared[0]


def run_cli(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float
            ) -> subprocess.CompletedProcess[str]:
    """`storefront ARGV` to its end, forked from `shared()`: as `subprocess.run(...,
    capture_output=True, text=True)` would report it (a signal's death as -N)."""
    with tempfile.TemporaryDirectory(prefix="storefront-cli-") as where:
        out, err = Path(where) / "stdout", Path(where) / "stderr"
        proc = Forked(shared(), shared().spawn(argv, env=env, cwd=cwd, log=out, err=err))
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess(argv, code, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))


def storefront(*args: str, check: bool = False, timeout: float = 120
               ) -> subprocess.CompletedProcess[str]:
    """`storefront ARGS` in this test process's environment and directory, through
    `run_cli`; `check`: its exit status must be 0."""
    done = run_cli(list(args), env=dict(os.environ), cwd=Path.cwd(), timeout=timeout)
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, list(args), done.stdout,
                                            done.stderr)
    return done


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("TELEGRAM_", "WECHAT_", "STOREFRONT_", "DATABASE_", "REDIS_"))}




class Forked:
    """A child of the fork server, as much of `subprocess.Popen` as benchmarks/cluster.py
    uses: `poll`, `wait`, `terminate`, `kill`, `returncode`."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote, self.pid = zygote, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.poll(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
