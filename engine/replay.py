"""`storefront replay` (SPEC §7): scenario lines → the same engine functions → final state.

Checks run in the order SPEC §7's table lists them; the first that fails names the refusal,
and a refused event changes nothing. Events without an `at` happen at the latest `at` seen so
far, so a scenario replays to the same journal, byte for byte, every time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from storage.db import Database

from . import service
from .accounts import KEEP
from .errors import Refusal
from .state import snapshot
from .times import parse_at

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REQUIRED = {
    "config": (), "product": ("sku", "price", "margin", "lock_days", "scheme"),
    "join": ("user",), "deposit": ("pool", "amount"), "buy": ("user", "at"),
    "release": ("at",), "settle": ("at",), "refund": ("order", "at"),
    "withdraw_points": ("user", "points"), "transfer_points": ("from", "to", "points"),
    "withdraw_cash": ("user", "amount"), "receive": ("order", "at"),
}


class Replayer:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.clock = EPOCH
        self.errors: list[dict[str, Any]] = []

    def _at(self, ev: dict[str, Any]) -> Any:
        raw = ev.get("at")
        try:
            self.clock = max(self.clock, parse_at(raw))
        except Refusal:
            pass  # the engine refuses it in its own place in the check order
        return raw

    def apply(self, ev: dict[str, Any]) -> None:
        op = ev.get("op")
        if not isinstance(op, str) or op not in _REQUIRED:
            raise Refusal("unknown_op", str(op))
        if any(f not in ev for f in _REQUIRED[op]):
            raise Refusal("invalid_event", "missing field")
        db, now = self.db, self.clock
        if op == "config":
            sections = {k: v for k, v in ev.items() if k != "op"}
            service.configure(db, sections, at=now, actor="replay")
        elif op == "product":
            service.upsert_product(db, sku=ev["sku"], price=ev["price"], margin=ev["margin"],
                                   lock_days=ev["lock_days"], scheme=ev["scheme"],
                                   name=ev.get("name"), stock=ev.get("stock", KEEP), at=now,
                                   actor="replay")
        elif op == "join":
            service.join(db, user=ev["user"], referrer=ev.get("referrer"), at=now)
        elif op == "deposit":
            service.deposit(db, pool=ev["pool"], amount=ev["amount"], at=now, actor="replay")
        elif op == "buy":
            if "sku" not in ev and "lines" not in ev:
                raise Refusal("invalid_event", "missing field")
            # `"lines": null` is a malformed list, not the shorthand (SPEC §9)
            lines = ev["lines"] if ev.get("lines") is not None else \
                ([] if "lines" in ev else None)
            service.buy(db, user=ev["user"], sku=ev.get("sku"), qty=ev.get("qty", 1),
                        lines=lines, at=self._at(ev), pay_points=ev.get("pay_points"),
                        order=ev.get("order"))
        elif op == "receive":
            service.receive(db, order=ev["order"], at=self._at(ev), actor="replay")
        elif op == "release":
            service.release(db, at=self._at(ev))
        elif op == "settle":
            service.settle(db, at=self._at(ev))
        elif op == "refund":
            service.refund(db, order=ev["order"], at=self._at(ev), actor="replay")
        elif op == "withdraw_points":
            service.withdraw_points(db, user=ev["user"], points=ev["points"], at=now)
        elif op == "transfer_points":
            service.transfer_points(db, sender=ev["from"], receiver=ev["to"],
                                    points=ev["points"], at=now)
        elif op == "withdraw_cash":
            service.withdraw_cash(db, user=ev["user"], amount=ev["amount"], at=now)

    def line(self, number: int, text: str) -> None:
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            return
        try:
            try:
                ev = json.loads(stripped)
            except (ValueError, RecursionError) as exc:
                raise Refusal("invalid_json") from exc
            if not isinstance(ev, dict):
                raise Refusal("invalid_event", "not an object")
            self.apply(ev)
        except Refusal as refusal:
            self.errors.append({"line": number, "code": refusal.code})

    def run(self, lines: Iterable[str]) -> dict[str, Any]:
        for number, text in enumerate(lines, start=1):
            self.line(number, text)
        return self.state()

    def state(self) -> dict[str, Any]:
        state = self.db.read(snapshot)
        state["errors"] = self.errors
        return state
