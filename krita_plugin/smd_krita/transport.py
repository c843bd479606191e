"""The daemon's own protocol and client modules.

``install.py`` copies ``smd_daemon/protocol.py`` and ``client.py`` unchanged
into ``vendor/``; running from a source checkout (the unit tests) they come
straight from the ``smd_daemon`` package, which is the same file.
"""

try:
    from .vendor import client, protocol  # noqa: F401
except ImportError:  # a source checkout without an install
    from smd_daemon import client, protocol  # noqa: F401
