"""The fork server the kill tests' drivers share (tests/fault_driver.py,
tests/transfer_kill_driver.py): one JSON command a line on stdin, each run in a forked child
of a parent that has already imported everything, its result a JSON line on stdout."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage import faults

Command = dict[str, Any]


def fork(child: Callable[[Command], Any], command: Command, *, quiet: bool = False
         ) -> dict[str, Any]:
    """`child(command)` in a forked child: its exit code and what it returned (or the
    traceback it raised, exit 1). `quiet`: the child's stdout goes to /dev/null (the
    protocol's stdout is not its to write on)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: do the work, report, and leave without cleanup of the parent's
        os.close(read_end)
        if quiet:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        code = 0
        try:
            out = child(command)
        except BaseException:  # noqa: BLE001 - reported to the test, which fails on it
            out = {"error": traceback.format_exc()}
            code = 1
        with os.fdopen(write_end, "w") as pipe:
            pipe.write(json.dumps(out, default=str))
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    return {"exit": os.waitstatus_to_exitcode(status), "out": json.loads(data) if data else None}


def serve(run: Callable[[Command], dict[str, Any]], stdin: Any, stdout: Any,
          before: Callable[[Command], None] | None = None) -> None:
    """Each command line through `run` (after `before`, in the parent) until `{"op": "quit"}`."""
    for line in stdin:
        command = json.loads(line)
        if command.get("op") == "quit":
            break
        if before is not None:
            before(command)
        stdout.write(json.dumps(run(command)) + "\n")
        stdout.flush()


class Driver:
    """The test side: start `module`'s fork server once (no fault armed in its environment,
    nor the variables in `drop`), send it commands, get the answers."""

    module = ""
    drop: tuple[str, ...] = ()

    def __init__(self, popen: Callable[..., Any] = subprocess.Popen) -> None:
        root = Path(__file__).resolve().parent.parent
        env = {k: v for k, v in os.environ.items() if k not in (faults.ENV, *self.drop)}
        self.proc = popen([sys.executable, "-m", self.module], cwd=root, env=env,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, **command: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.module} died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.write('{"op": "quit"}\n')
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
