"""Named fault points for crash tests; inert unless `STOREFRONT_FAULT` names one.

Code marks the moments a crash could hurt with `faults.point("release.after_page")`. A test
process started with, for example::

    STOREFRONT_FAULT=release.after_page:3            # SIGKILL on the 3rd time it is reached
    STOREFRONT_FAULT=release.entry_paid:150:raise    # raise FaultInjected instead
    STOREFRONT_FAULT=release.after_page:*:sleep0.2   # pause 0.2 s every time (races)

dies (or raises, or pauses) exactly there; several items are separated by commas. Without
the variable `point` is one dictionary test, so the marks cost nothing in production. Tests
inside one process use `arm(...)`/`disarm()` instead of the environment.

Points in use: `release.locked`, `release.after_settle`, `release.entry_paid` (inside a page's
transaction, before it commits), `release.after_page` (after a page committed),
`release.before_record`, `outbox.claimed`, `outbox.after_send` (sent, not yet marked sent),
and around every unit of work (storage/db.py `Database.run`): `commit.before:<label>` (all
its work done, not yet committed) and `commit.after:<label>` (committed, the caller not yet
told). The label is the engine action (`buy`, `record_payment`, `release`, `settle`,
`withdraw_points`, `transfer_points`, `request_withdrawal`, `decide_withdrawal`, …) or the
unit of work's own name (`claim.work`, `_changed.<lambda>`, …); names may
contain colons: `STOREFRONT_FAULT=commit.after:buy:1`. tests/fault_driver.py lists every
point an action reaches (docs/reliability.md).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

ENV = "STOREFRONT_FAULT"


class FaultInjected(RuntimeError):
    """Raised at a point armed with the `raise` action."""


@dataclass
class _Fault:
    at: int | None  # fire on this hit (1-based); None: every hit
    action: str  # "kill", "raise" or "sleep<seconds>"
    hits: int = 0


_armed: dict[str, _Fault] = {}


def parse(spec: str) -> dict[str, _Fault]:
    """`name:count[:action],…` → faults; a malformed item raises ValueError (tests only)."""
    faults: dict[str, _Fault] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        # Names may contain colons (`commit.before:buy`): count and action are read from
        # the right.
        parts = item.rsplit(":", 2)
        if len(parts) == 3 and _is_count(parts[1]) and not _is_count(parts[2]):
            name, count, action = parts
        else:
            name, _, count = item.rpartition(":")
            action = "kill"
        if not name or not _is_count(count):
            raise ValueError(f"{ENV}: bad item {item!r} (want name:count[:action])")
        if action not in ("kill", "raise") and not (
                action.startswith("sleep") and _is_seconds(action[5:])):
            raise ValueError(f"{ENV}: unknown action {action!r}")
        faults[name] = _Fault(None if count == "*" else int(count), action)
    return faults


def _is_count(text: str) -> bool:
    return text == "*" or text.isdigit() and int(text) > 0


def _is_seconds(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def arm(spec: str) -> None:
    """Replace the armed faults with `spec` (same syntax as the environment variable)."""
    global _armed
    _armed = parse(spec)


def disarm() -> None:
    _armed.clear()


def point(name: str) -> None:
    """A place where a crash is interesting; does nothing unless a fault is armed here."""
    if not _armed:
        return
    fault = _armed.get(name)
    if fault is None:
        return
    fault.hits += 1
    if fault.at is not None and fault.hits != fault.at:
        return
    if fault.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.action == "raise":
        raise FaultInjected(name)
    else:
        time.sleep(float(fault.action[5:]))


if os.environ.get(ENV):
    arm(os.environ[ENV])
