"""`storefront config [--db URL] [KEY=VALUE …]`: the shop's rules from the command line.

Without arguments it prints every rule as `KEY=VALUE` (ready to paste back) with how it
reads and what it means. With arguments it applies them as one `config` event — the same
check and journal entry as a replayed `config` line (SPEC §7), journaled with the actor
`cli:<OS user>` — and prints old → new; a refused change prints the refusal code and the
rule it names, changes nothing and exits 1.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

USAGE_ERROR = 2


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name, no passwd entry: a container's uid
        return "cli"


def _sections(pairs: list[str]) -> dict[str, dict[str, str]] | None:
    """`["queue.min_order=50.00"]` → `{"queue": {"min_order": "50.00"}}`; None when a pair is
    not `SECTION.KEY=VALUE`. Values are passed exactly as typed: the engine judges them."""
    sections: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        section, dot, name = key.partition(".")
        if not eq or not dot or not section or not name:
            print(f"storefront config: expected SECTION.KEY=VALUE (e.g. store.settle_days=7), "
                  f"got {pair!r}", file=sys.stderr)
            return None
        sections.setdefault(section, {})[name] = value
    return sections


def cmd_config(args: argparse.Namespace) -> int:
    from bot.cli import open_db
    from engine import service, users
    from engine.config import DEFAULTS
    from engine.errors import Refusal
    from handlers.settings import meaning, show_value

    sections = _sections(args.pairs)
    if sections is None:
        return USAGE_ERROR
    db = open_db(args.db)
    try:
        if not sections:
            raw = db.read(users.store_config).raw
            width = max(len(f"{k}={raw[k]}") for k in DEFAULTS)
            for key in DEFAULTS:
                shown = show_value("en", key, raw[key], raw["store.currency"])
                print(f"{key}={raw[key]}".ljust(width) + f"  # {shown}: {meaning('en', key)}")
            return 0
        actor = _actor()
        try:
            changed = service.change_settings(db, sections, actor=actor)
        except Refusal as refused:
            print(f"storefront config: refused {refused.code}: {refused.detail}; nothing was "
                  f"changed", file=sys.stderr)
            return 1
        for key, (old, new) in changed.items():
            print(f"{key}: {old} -> {new}")
        print(f"(journaled as {actor})")
        return 0
    finally:
        db.dispose()


def register(sub: Any) -> None:
    from bot.cli import add_db_option

    p = sub.add_parser("config", help="print the shop's rules, or change them: KEY=VALUE …")
    add_db_option(p)
    p.add_argument("pairs", nargs="*", metavar="KEY=VALUE",
                   help="rules to change, e.g. store.settle_days=7 queue.min_order=50.00")
    p.set_defaults(func=cmd_config)
