"""The Telegram adapter (python-telegram-bot 22): see docs/telegram.md.

    application = await start_telegram(settings, app)   # getMe, menus, polling or webhook
    ...
    await stop_telegram(application)

With TELEGRAM_WEBHOOK_URL set, mount `telegram_webhook_route(application, secret)` at
POST /telegram of the HTTP server.

(This package's name shadows nothing: imports are absolute, so `import telegram` inside it is
python-telegram-bot. Do not put `bot/` itself on `sys.path`.)
"""

from .application import TelegramAdapter, build_application
from .conversations import Conversations, MenuCommand
from .lifecycle import bot_username, publish_commands, start_telegram, stop_telegram
from .webhook import telegram_webhook_route

__all__ = [
    "Conversations",
    "MenuCommand",
    "TelegramAdapter",
    "bot_username",
    "build_application",
    "publish_commands",
    "start_telegram",
    "stop_telegram",
    "telegram_webhook_route",
]
