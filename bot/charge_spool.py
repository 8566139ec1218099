"""Charges a channel took that the database could not record yet: a durable local spool.

Telegram sends `successful_payment` once. If the database is down for longer than the
adapter's retries, the charge is appended here (one JSON line, fsync'd before the buyer is
answered) and replayed until it is recorded. Recording is keyed by the charge id, so a
line replayed twice, or one that was in fact recorded just before a crash, credits once.

Operators are told (`told`, an outbox write: engine/inbox.py): once a charge is recorded from
here, that it was recorded late; while it still fails, that it is waiting — written by the
first round after the database accepts writes again. The writes are keyed by the charge, so
each operator gets each message once.

A round is one `replay`. The scheduler runs one every `EVERY` seconds, the first at its
start: the Telegram adapter hands it over as a `Chore` (bot/telegram/lifecycle.py `chores`,
collected by bot/app.py), like the HTTP server's. A process without the scheduler (a test
of the adapter alone) replays nothing by itself: it calls `replay`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
DEFAULT_PATH = Path("var/unrecorded_charges.jsonl")

EVERY = 5.0  # seconds between rounds (a round on an empty spool only looks at the file)

Record = Callable[[dict[str, Any]], Awaitable[object]]
# told(charge, recorded): tell the operators (raises while the database takes no writes)
Told = Callable[[dict[str, Any], bool], Awaitable[object]]


def spool(path: Path, charge: dict[str, Any]) -> None:
    """Append one charge durably (the line is on disk when this returns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(charge, sort_keys=True, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def pending(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return _items(path.read_bytes(), path)


def _items(data: bytes, path: Path) -> list[dict[str, Any]]:
    out = []
    for line in data.decode("utf-8").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            log.error("unreadable line in %s kept aside: %r", path, line[:200])
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


async def replay(path: Path, record: Record, told: Told | None = None) -> int:
    """One round: try to record every spooled charge; keep those that still fail. Returns
    how many were recorded. The file is replaced atomically, so a crash here loses no line,
    and a charge spooled while the round was recording (the adapter appends in this event
    loop) is carried over into the new file. With `told`, a charge leaves the spool only
    once `told(charge, True)` confirms it is accounted for and has written the operators'
    "recorded late" message (else it is recorded again next round, which credits nothing);
    for a charge still failing, `told(charge, False)` writes the "waiting" message."""
    if not path.exists():
        return 0
    data = path.read_bytes()  # later bytes are charges spooled during this round
    items = _items(data, path)
    if not items:
        return 0
    left, done = [], 0
    telling = told is not None  # until a message cannot be written: not this round, then
    for item in items:
        try:
            await record(item)
            if told is not None:  # raises unless the charge is now accounted for
                await told(item, True)
        except Exception:  # noqa: BLE001 - still failing: keep it for the next round
            left.append(item)
            if told is not None and telling:
                try:
                    await told(item, False)
                except Exception:  # noqa: BLE001 - the database takes no writes yet
                    telling = False
                    log.debug("cannot tell operators about charge %s yet",
                              item.get("charge_id"), exc_info=True)
            continue
        done += 1
        log.warning("spooled charge %s is now recorded", item.get("charge_id"))
    _rewrite(path, left, len(data))
    return done


def _rewrite(path: Path, left: list[dict[str, Any]], read: int) -> None:
    """Replace the spool with `left` and the lines appended after its first `read` bytes
    (no await in here: nothing is appended meanwhile by this process)."""
    with open(path, "rb") as fh:
        fh.seek(read)
        appended = fh.read()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        for item in left:
            out.write((json.dumps(item, sort_keys=True, ensure_ascii=False) + "\n")
                      .encode("utf-8"))
        out.write(appended)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
