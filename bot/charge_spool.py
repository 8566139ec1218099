"""Charges a channel took that the database could not record yet: a durable local spool.

Telegram sends `successful_payment` once. If the database is down for longer than the
adapter's retries, the charge is appended here (one JSON line, fsync'd before the buyer is
answered) and replayed until it is recorded. Recording is keyed by the charge id, so a
line replayed twice, or one that was in fact recorded just before a crash, credits once.

Operators are told (`told`, an outbox write: engine/inbox.py): once a charge is recorded from
here, that it was recorded late; while it still fails, that it is waiting — written by the
first round after the database accepts writes again (rounds come every `BUSY` seconds while
the spool holds charges). The writes are keyed by the charge, so each operator gets each
message once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
DEFAULT_PATH = Path("var/unrecorded_charges.jsonl")

EVERY, BUSY = 30.0, 5.0  # seconds between rounds: spool empty / holding charges

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
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            log.error("unreadable line in %s kept aside: %r", path, line[:200])
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


async def replay(path: Path, record: Record, told: Told | None = None) -> int:
    """Try to record every spooled charge; keep those that still fail. Returns how many were
    recorded. The file is replaced atomically, so a crash here loses no line. With `told`, a
    charge leaves the spool only once `told(charge, True)` confirms it is accounted for and
    has written the operators' "recorded late" message (else it is recorded again next
    round, which credits nothing); for a charge still failing, `told(charge, False)` writes
    the "waiting" message."""
    items = pending(path)
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
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for item in left:
            fh.write(json.dumps(item, sort_keys=True, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return done


async def keep_replaying(path: Path, record: Record, told: Told | None = None, *,
                         every: float = EVERY, busy: float = BUSY) -> None:
    """The background task until cancelled: replay the spool every `every` seconds, or every
    `busy` seconds while it holds charges."""
    while True:
        try:
            await replay(path, record, told)
        except Exception:  # noqa: BLE001 - never let the task die
            log.exception("replaying %s failed", path)
        await asyncio.sleep(busy if path.exists() and path.stat().st_size else every)
