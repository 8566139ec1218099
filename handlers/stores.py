"""The adapters' own stores, handed to them by this layer: adapters reach nothing below the
handlers (pyproject.toml's import-linter contracts). They are the Telegram inbox (updates
stored before they are acknowledged, engine/inbox.py) and WeChat's seen messages and replay
nonces (engine/seen.py). The adapters use them as they are; nothing here adds to them."""

from engine import inbox, seen

__all__ = ["inbox", "seen"]
