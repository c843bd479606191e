"""The daemon's optional TOML config file: the same settings as the flags.

    model = "tiny"
    bind = "tcp://0.0.0.0:7555"
    keys = "/etc/smd-daemon/keys"
    max_sessions = 4

Unknown keys and wrongly typed values are errors, so a typo never passes
silently. Command-line flags win over the file.
"""

from __future__ import annotations

import tomllib

from smd_daemon.errors import UsageError

LOG_LEVELS = ("debug", "info", "warning", "error")


def load_config(path: str, options: dict) -> dict:
    """Read ``path``; ``options`` maps each allowed key to ``(type, default, help)``."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config {path}: not valid TOML: {e}") from None
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in options:
            raise UsageError(f"config {path}: unknown setting {key!r} (known: {', '.join(sorted(options))})")
        kind = options[name][0]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise UsageError(f"config {path}: {key} must be {kind.__name__}, got {type(value).__name__}")
        if name == "log_level" and value not in LOG_LEVELS:
            raise UsageError(f"config {path}: log_level must be one of {', '.join(LOG_LEVELS)}")
        out[name] = value
    return out
