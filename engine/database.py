"""The database as the layers above the engine see it: a handle to pass to the engine's
service functions, and the one error that means "the database cannot answer right now".

Handlers and adapters never import `storage` (the import-linter contracts in pyproject.toml);
what they need of it comes through here.
"""

from storage.db import Database, DatabaseUnavailable

__all__ = ["Database", "DatabaseUnavailable"]
