"""The front end's socket for its workers: a CURVE server that admits this run's worker key alone.

``tcp://HOST`` (on the cluster's network) or ``ipc://PATH`` (a socket file,
for workers on this machine, in a folder only this user may enter: checked
before binding). Whoever lacks the key is refused by ZeroMQ itself, before
any message: a wrong key by the ZAP handler, anything else (no CURVE,
another server key) in the handshake; each refusal is logged. A socket file
removed or replaced after binding is logged once, and never deleted here.
"""

from __future__ import annotations

import logging
import os
import stat

import zmq
from zmq.auth.thread import ThreadAuthenticator

from smd_daemon.cluster import wire
from smd_daemon.errors import UsageError
from smd_daemon.keys import fingerprint

log = logging.getLogger("smd_daemon.cluster")


class _OneKey:
    """Admits the one CURVE key this run's workers hold; logs anyone else."""

    def __init__(self, public: bytes, throttled_log):
        self.public, self.throttled_log = public, throttled_log

    def callback(self, domain, key) -> bool:
        if key != self.public:
            self.throttled_log(
                logging.WARNING,
                "worker-key",
                key,
                "refused a connection to the workers' socket: its CURVE key %s is not this run's worker key",
                fingerprint(key),
            )
        return key == self.public


class WorkerSocket:
    def __init__(self, ctx, keys: wire.Keys, throttled_log):
        self.ctx, self.keys, self.throttled_log = ctx, keys, throttled_log
        self.auth: ThreadAuthenticator | None = None
        self.path: str | None = None  # the socket file
        self._file: tuple | None = None  # (device, inode) of the socket file bound, while it is there

    def open(self, endpoint: str):
        """A bound ROUTER and the socket that reports its failed handshakes (``log_refusals``)."""
        sock = self.ctx.socket(zmq.ROUTER)
        wire.configure(sock)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.auth = ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve_callback("*", _OneKey(self.keys.worker_public, self.throttled_log))
        sock.curve_server = True
        sock.curve_secretkey = self.keys.server_secret
        sock.curve_publickey = self.keys.server_public
        self.monitor = wire.watch_handshakes(sock)
        if endpoint.startswith("tcp://"):
            host = endpoint[len("tcp://") :]
            sock.bind(f"tcp://[{host}]:0" if ":" in host else f"tcp://{host}:0")
        else:
            path = endpoint[len("ipc://") :]
            check_private_folder(os.path.dirname(path))
            sock.bind(endpoint)
            self.path, self._file = path, _file_id(path)
        return sock, self.monitor

    def log_refusals(self) -> None:
        for event in wire.handshake_failures(self.monitor):
            if event != zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # a key refused: _OneKey told whose
                why = wire.HANDSHAKE_FAILURES[event]
                self.throttled_log(
                    logging.WARNING, "worker-handshake", why, "refused a connection to the workers' socket: %s", why
                )

    def check(self) -> None:
        """Say once if the socket file is no longer the one bound (upkeep)."""
        if self._file is not None and _file_id(self.path) != self._file:
            log.error(
                "the workers' socket file %s was removed or replaced by another process: workers that start "
                "from now on cannot reach this front end",
                self.path,
            )
            self._file = None

    def close(self) -> None:
        """After the socket closed: remove its file if it is still ours; stop the ZAP handler."""
        if self._file is not None and _file_id(self.path) == self._file:
            os.unlink(self.path)
        if self.auth is not None:
            self.auth.stop()


def check_private_folder(folder: str) -> None:
    """The workers' socket file goes only into a folder of this user's that nobody else may enter."""
    st = os.lstat(folder)
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or mode & 0o077:
        raise UsageError(
            f"the workers' socket folder {folder} must be a folder of this user's that only it may enter "
            f"(it is owned by uid {st.st_uid}, mode {mode:04o})"
        )


def _file_id(path: str) -> tuple | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
