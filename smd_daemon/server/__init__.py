"""``smd-daemon serve``: the ZeroMQ server, split by concern.

Threads and who owns what:

- the I/O thread (``router.Server``) owns the ROUTER socket: admission per
  connection (``admission``), the handshake, sessions' requests and replies
  (``sessions``), sending frames (``frames.FrameFlow`` bounds them);
- scene workers (``scenes``) decode planes, build and plan scenes, per
  session in order, within the memory budget (``memory``);
- the engine loop (``engine_loop``) runs every engine pass, chosen by the
  fair scheduler (``scheduler``);
- encoder threads compress frames (``images``).

They exchange typed messages (``messages``). ``command`` is the ``serve``
command line; ``curve`` the encryption and client keys; ``limits`` every
limit and default, defined once.
"""

from smd_daemon.server.limits import Limits  # noqa: F401
from smd_daemon.server.router import DEFAULT_BIND, Server  # noqa: F401
