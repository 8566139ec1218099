"""Channel-agnostic conversations: adapters call `await dispatch(app, request)`.

Also for adapters: `commands()` (what to advertise), `parse_text(text)` (free text to a
command), `run_job(app, job, request, update)` (a `Progress` item's job), and in
`handlers.shop` the payment confirmations `precheck(...)` / `paid(...)`;
`handlers.notify.render(kind, params, lang)` for the outbox. See docs/conversations.md.
"""

from __future__ import annotations

# Importing the conversation modules registers their commands and buttons.
from . import (  # noqa: F401
    account,
    admin,
    admin_store,
    cart,
    catalogue,
    delivery,
    link,
    onsale,
    orders,
    referral,
    settings,
    shop,
)

# digital goods' codes and support threads (docs/digital.md, docs/support.md)
from . import codes as _codes  # noqa: F401
from . import support as _support  # noqa: F401

# the web dashboard's one-time login link (docs/web.md)
from . import web as _web  # noqa: F401
from .admin import run_job
from .registry import CommandInfo, commands, dispatch, parse_text

__all__ = ["CommandInfo", "commands", "dispatch", "parse_text", "run_job"]
