"""The daemon's own wire modules.

``install.py`` copies them (``protocol.py``, ``client.py`` and what the
client imports) unchanged into ``vendor/``; running from a source checkout
(the unit tests) they come straight from the ``smd_daemon`` package, which
is the same file. The static checks read them there too: ``vendor/`` exists
only in an installed plugin.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smd_daemon import client, protocol  # noqa: F401
else:
    try:
        from .vendor import client, protocol  # noqa: F401
    except ImportError:  # a source checkout without an install
        from smd_daemon import client, protocol  # noqa: F401
