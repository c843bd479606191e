"""How peers appear in the daemon's log: short connection names, and text a
peer chose made safe for one line. Admission, sessions and CURVE all log peers."""

from __future__ import annotations


def label(identity: bytes) -> str:
    """A connection's name in logs: ZeroMQ's own identities differ in their last bytes."""
    return identity.hex()[-8:]


def printable(text: str, limit: int = 80) -> str:
    """Text a peer chose, fit for one log line: line breaks, terminal escapes and
    other control or format characters as Python escapes (``\\n``, ``\\x1b``,
    ``\\u202e``), at most ``limit`` characters."""
    cut = text[:limit]
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return shown + ("..." if len(text) > limit else "")
