"""Errors a user of the ``smd-daemon`` commands can fix.

Each becomes one line on stderr and exit status 2 (``cli.main``); the
engine's own ``SceneError`` and ``ModelLoadError`` are treated the same way.
"""


class UsageError(Exception):
    """A problem with the user's input (a flag, a file, an address)."""
