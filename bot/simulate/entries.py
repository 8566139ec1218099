"""What happened to every queue entry of a simulation, day by day."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine import sim_reads
from engine.database import Database


@dataclass
class Entries:
    """What happened to every entry, learned incrementally from new entry rows and the
    journal's payments out of the queue pool (so each day reads only what is new)."""

    created: list[int] = field(default_factory=list)  # day index of creation, by seq - 1
    amount: list[int] = field(default_factory=list)
    paid: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)  # day index when fully paid, or -1
    last_txn: int = 0
    released: int = 0  # fen paid by static release, so far
    accelerated: int = 0  # fen paid by acceleration, so far

    def update(self, db: Database, day: int) -> tuple[int, int]:
        """Read what is new; returns the fen the queue pool paid since last time by static
        release and by acceleration (paid while settling a referee's order)."""
        new, pays, self.last_txn = sim_reads.queue_changes(db, len(self.created),
                                                           self.last_txn)
        for _seq, amount in new:
            self.created.append(day)
            self.amount.append(amount)
            self.paid.append(0)
            self.done.append(-1)
        released = accelerated = 0
        for kind, ref, amount in pays:
            i = int(ref.split(":")[1]) - 1
            self.paid[i] -= amount
            if kind == "release":
                released -= amount
            else:
                accelerated -= amount
            if self.paid[i] == self.amount[i]:
                self.done[i] = day
        self.released += released
        self.accelerated += accelerated
        return released, accelerated

    def figures(self, day: int) -> dict[str, Any]:
        n = len(self.created)
        if n == 0:
            return {"entries": 0, "entries_paid": 0, "share_paid": "", "amount_share_paid": "",
                    "median_wait_days": "", "median_paid_wait_days": ""}
        created, done = np.array(self.created), np.array(self.done)
        finished = done >= 0
        # Waiting entries count with their age so far: a lower bound of their wait.
        waits = np.where(finished, done - created, day - created)
        total, paid = sum(self.amount), sum(self.paid)
        return {"entries": n, "entries_paid": int(finished.sum()),
                "share_paid": f"{finished.sum() / n:.4f}",
                "amount_share_paid": f"{paid / total:.4f}" if total else "",
                "median_wait_days": f"{float(np.median(waits)):.1f}",
                "median_paid_wait_days": (f"{float(np.median(waits[finished])):.1f}"
                                          if finished.any() else "")}
