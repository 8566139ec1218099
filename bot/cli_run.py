"""`storefront run` (every configured channel) and `storefront chat` (the console chat)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any


def cmd_run(args: argparse.Namespace) -> int:
    from bot.app import main

    return main(args.db)


def cmd_chat(args: argparse.Namespace) -> int:
    from bot import settings as settings_module
    from bot.app import make_app, say_where_logs_go, seed_demo_catalogue
    from bot.cli import open_db
    from bot.console import run_console
    from bot.logs import setup_logging
    from engine.users import IDENTITY

    if not IDENTITY.match(args.identity):
        print(f"storefront chat: --as wants an identity such as console:alice, not "
              f"{args.identity!r}")
        return 2
    settings = settings_module.load()
    say_where_logs_go(setup_logging(settings), settings)
    db = open_db(args.db or settings.database_url)
    try:
        if settings.demo_catalogue:
            seed_demo_catalogue(db)
        asyncio.run(run_console(make_app(settings, db, console=True), args.identity,
                                lang=args.lang))
    except KeyboardInterrupt:
        pass
    finally:
        db.dispose()
    return 0


def register(sub: Any) -> None:
    from bot.cli import add_db_option

    p = sub.add_parser("run", help="serve every configured channel (the console chat when "
                                   "none is configured)")
    add_db_option(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("chat", help="talk to the shop in this terminal (console chat)")
    add_db_option(p)
    p.add_argument("--as", dest="identity", default="console:admin",
                   help="who you are (default console:admin, an operator)")
    p.add_argument("--lang", choices=("zh", "en"), default=None,
                   help="your language at first contact (default English)")
    p.set_defaults(func=cmd_chat)
