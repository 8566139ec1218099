"""The `storefront` command line: replay, state, verify, run, chat, release and friends."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence

from bot import cli_config, cli_inbox, cli_reports, cli_run, cli_scheduler
from engine.database import Database, migrate


def open_db(url: str | None, *, memory_default: bool = False) -> Database:
    """The database named by `--db`, else DATABASE_URL, else the default file; migrated."""
    if url is None and not memory_default:
        url = os.environ.get("DATABASE_URL")
    db = Database(url or ("sqlite://" if memory_default else None))
    migrate(db)
    return db


def cmd_replay(args: argparse.Namespace) -> int:
    from engine.replay import Replayer

    db = open_db(args.db, memory_default=True)
    try:
        with open(args.file, encoding="utf-8", errors="replace") as fh:
            state = Replayer(db).run(fh)
    except OSError as exc:
        print(f"storefront replay: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    json.dump(state, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    from engine.state import snapshot

    db = open_db(args.db)
    state = db.read(snapshot)
    state["errors"] = []
    json.dump(state, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from engine.verify import verify

    db = open_db(args.db)
    report = verify(db)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    open_db(args.db)
    print("database is at the newest schema")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
    "replay": ("apply a scenario file (SPEC §7) and print the final state", cmd_replay),
    "state": ("print an existing database's state as replay does", cmd_state),
    "verify": ("check the journal's hash chain, balances and invariants", cmd_verify),
    "migrate": ("bring the database schema up to date", cmd_migrate),
}


# Each of these modules defines `register(subparsers)`, adding its commands with
# `set_defaults(func=...)`; they live beside the code they drive.
def add_db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="database URL (default: DATABASE_URL or var/storefront.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storefront", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        add_db_option(p)
        p.set_defaults(func=fn)
        if name == "replay":
            p.add_argument("file")
    for module in (cli_run, cli_scheduler, cli_reports, cli_config, cli_inbox):
        module.register(sub)
    return parser


def redact_last_resort() -> None:
    """Commands other than `run` and `chat` log through Python's last-resort handler
    (warnings and errors to stderr); it gets the same secret filter as the log file."""
    import logging

    from bot.logs import Redactor, secrets_of

    try:
        from bot.settings import load

        secrets = secrets_of(load())
    except Exception:  # noqa: BLE001 - bad settings are reported by the commands that use them
        secrets = set()
    handler = logging.lastResort
    if handler is not None and not any(isinstance(f, Redactor) for f in handler.filters):
        handler.addFilter(Redactor(secrets))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    redact_last_resort()
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # what is still buffered goes (or fails) here, not at exit
        return code
    except BrokenPipeError:
        return reader_went_away()


def reader_went_away() -> int:
    """Whoever reads our output stopped (`storefront export … | head`): end quietly, with
    the status a Unix tool ended by SIGPIPE has (128 + 13), not with a traceback."""
    # Python flushes stdout again at exit, which would fail the same way: point it at
    # /dev/null first (the recipe of Python's `signal` documentation).
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
