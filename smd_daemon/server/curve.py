"""CURVE encryption and client keys for a daemon reachable from the network.

``zmq.auth``'s ZAP handler checks every client's public key against
``KEYS/authorized``; a refusal is logged at info level with the client's
address and the key's fingerprint (``smd-daemon keys`` prints the same
fingerprints), at most once per interval per address and key.
"""

from __future__ import annotations

import logging
import os
import stat

from zmq.auth import load_certificate
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from smd_daemon.errors import UsageError
from smd_daemon.keys import fingerprint

log = logging.getLogger("smd_daemon.server")


class LoggingAuthenticator(ThreadAuthenticator):
    """``zmq.auth``'s authenticator, telling the operator whom it refused."""

    def __init__(self, context, throttled_log):
        super().__init__(context)
        self.throttled_log = throttled_log
        self._asking = ("?", "")

    async def handle_zap_message(self, msg):
        # ZAP request: version, id, domain, address, identity, mechanism, credentials...
        if len(msg) >= 7 and msg[5] == b"CURVE":
            self._asking = (msg[3].decode("utf-8", "replace"), fingerprint(z85.encode(msg[6])))
        else:
            self._asking = (msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?", "")
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous"):
        if status_code != b"200":
            address, key = self._asking
            self.throttled_log(
                logging.INFO,
                "zap",
                (address, key),
                "refused a client from %s: its key %s is not in the authorized folder (%s)",
                address,
                key or "(none)",
                status_text.decode("utf-8", "replace"),
            )
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


def check_secret_file(path: str) -> None:
    """Refuse a secret key others may read, as ssh does."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise UsageError(
            f"{path} is readable or writable by other users (mode {mode:04o}): make it private with 'chmod 600 {path}'"
        )


def setup(context, sock, keys_dir: str, throttled_log) -> LoggingAuthenticator:
    """Turn ``sock`` (not yet bound) into a CURVE server; returns the running authenticator."""
    secret_file = os.path.join(keys_dir, "server.key_secret")
    allowed = os.path.join(keys_dir, "authorized")
    if not os.path.isfile(secret_file):
        raise UsageError(f"no server key in {keys_dir}: create one with 'smd-daemon keys {keys_dir}'")
    if not os.path.isdir(allowed):
        raise UsageError(f"no folder of allowed client keys at {allowed}: create one with 'smd-daemon keys {keys_dir}'")
    check_secret_file(secret_file)
    public, secret = load_certificate(secret_file)
    if not secret:
        raise UsageError(f"{secret_file} holds no secret key")
    n = len([f for f in os.listdir(allowed) if f.endswith(".key")])
    if n == 0:
        log.warning("no client keys in %s: nobody can connect", allowed)
    auth = LoggingAuthenticator(context, throttled_log)
    auth.start()
    auth.configure_curve(domain="*", location=allowed)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    log.info("CURVE encryption on; %d allowed client key(s) in %s", n, allowed)
    return auth
