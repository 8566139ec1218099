"""The fork server the kill tests' drivers share (tests/fault_driver.py,
tests/transfer_kill_driver.py): one JSON command a line on stdin, each run in a forked child
of a parent that has already imported everything, its result a JSON line on stdout."""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from typing import Any

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
