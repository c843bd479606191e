"""CURVE encryption and client keys for a daemon reachable from the network,
and the log of every connection refused during ZeroMQ's handshake.

``zmq.auth``'s ZAP handler checks every client's public key against
``KEYS/authorized``; a refusal is logged at info level with the client's
address and the key's fingerprint (``smd-daemon keys`` prints the same
fingerprints), at most once per interval per address and key. An accepted
key's name (its file name in ``authorized``) becomes the connection's
User-Id, which the daemon counts sessions by (``admission.Origin``).

Handshakes that fail before ZAP is asked (a client without encryption,
one that encrypts to another server key, encryption on at the client only)
are told by the socket monitor; ``RefusalLog`` logs them the same way.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import threading

import zmq
from zmq.auth import load_certificate
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from smd_daemon.errors import UsageError
from smd_daemon.keys import fingerprint
from smd_daemon.server.logtext import printable

log = logging.getLogger("smd_daemon.server")


class LoggingAuthenticator(ThreadAuthenticator):
    """``zmq.auth``'s authenticator, telling the operator whom it refused."""

    def __init__(self, context, throttled_log, names: dict[bytes, str]):
        super().__init__(context)
        self.throttled_log = throttled_log
        self.names = names  # public key (Z85 text) -> its name in the authorized folder
        self._asking = ("?", "")

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = z85.encode(client_public_key)
        return self.names.get(key) or fingerprint(key)

    async def handle_zap_message(self, msg):
        # ZAP request: version, id, domain, address, identity, mechanism, credentials...
        if len(msg) >= 7 and msg[5] == b"CURVE":
            self._asking = (printable(msg[3].decode("utf-8", "replace")), fingerprint(z85.encode(msg[6])))
        else:
            self._asking = (printable(msg[3].decode("utf-8", "replace")) if len(msg) > 3 else "?", "")
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
    names = _key_names(allowed)
    n = len(names)
    if n == 0:
        log.warning("no client keys in %s: nobody can connect", allowed)
    auth = LoggingAuthenticator(context, throttled_log, names)
    auth.start()
    auth.configure_curve(domain="*", location=allowed)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    log.info("CURVE encryption on; %d allowed client key(s) in %s", n, allowed)
    return auth


def _key_names(folder: str) -> dict[bytes, str]:
    """Each allowed public key (Z85 text) and its name (its file name without ``.key``), as zmq.auth reads them."""
    names = {}
    for entry in sorted(os.listdir(folder)):
        if entry.endswith(".key"):
            try:
                public, _ = load_certificate(os.path.join(folder, entry))
            except (OSError, ValueError):
                continue  # zmq.auth skips it too
            names.setdefault(public, entry[: -len(".key")])
    return names


# What a failed handshake means, by libzmq's protocol error code.
_FAILURES: dict[int, str] = {  # keyed by the event's value, a plain int
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "mechanism",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "key",
}
_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class RefusalLog:
    """Logs each connection refused during the handshake before ZAP is asked,
    from the daemon socket's monitor, on a thread of its own.

    The monitor names no peer: the address is read from the accepted socket
    (``getpeername``) as soon as its ``accepted`` event arrives. A handshake
    refused within microseconds (on loopback) may be closed by then; the line
    then says the address is unknown. libzmq reports a failure and then that
    connection's ``disconnected`` from the same I/O thread, one after the other,
    which pairs the failure with its socket."""

    def __init__(self, sock, throttled_log, encrypted: bool):
        self.throttled_log, self.encrypted = throttled_log, encrypted
        self._monitor = sock.get_monitor_socket(_EVENTS)
        self._stop = threading.Event()
        self._addresses: dict[int, str] = {}  # socket fd -> peer address, while connected
        self._failure = None  # what the last failed handshake was; its disconnect comes next
        self.refused, self.unknown = 0, 0  # refusals, logged or not, and those whose address was gone
        self._thread = threading.Thread(target=self._run, name="refusals", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        if self.refused:
            log.info(
                "refused %d connection(s) during the handshake (the address of %d could not be read)",
                self.refused,
                self.unknown,
            )

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._monitor.poll(100):
                    self._event(self._monitor.recv_multipart())
        except zmq.ZMQError:
            pass  # the context is closing
        finally:
            self._monitor.close(linger=0)

    def _event(self, frames) -> None:
        if len(frames) != 2 or len(frames[0]) != 6:
            return
        event, value = struct.unpack("=HI", frames[0])
        if event == zmq.EVENT_ACCEPTED:
            self._addresses[value] = _peer_address(value)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self._failure = _FAILURES.get(value, f"protocol error 0x{value:08x}")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._failure = "closed"
        elif event == zmq.EVENT_DISCONNECTED:
            address = self._addresses.pop(value, "")
            failure, self._failure = self._failure, None
            if failure is not None:
                self._log(failure, address)

    def _log(self, failure: str, address: str) -> None:
        self.refused += 1
        self.unknown += not address
        address = address or "an unknown address (it closed before it could be read)"
        if failure == "mechanism":
            why = (
                "it does not use encryption (give the client this daemon's public key and a client key)"
                if self.encrypted
                else "it uses encryption, and this daemon has none (it was started without --keys)"
            )
        elif failure == "key":
            why = "its encrypted hello does not open with this daemon's key (it has another server public key)"
        elif failure == "closed":  # often the client saw the mismatch first and hung up
            why = "it closed the connection during the handshake, as a client " + (
                "without encryption does when it sees that this daemon requires it (or a port check)"
                if self.encrypted
                else "with encryption does at a daemon without it (or a port check)"
            )
        else:
            why = f"it does not speak ZeroMQ's handshake ({failure})"
        self.throttled_log(logging.INFO, "handshake:" + failure, address, "refused a client from %s: %s", address, why)


def _peer_address(fd: int) -> str:
    """Who is at the other end of socket ``fd`` (its host, or a local process),
    or '' when the connection is gone already."""
    try:
        dup = os.dup(fd)
    except OSError:
        return ""
    try:
        s = socket.socket(fileno=dup)
    except OSError:  # no longer a socket
        os.close(dup)
        return ""
    with s:
        try:
            peer = s.getpeername()
            if s.family == socket.AF_UNIX:
                pid, uid, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                return f"a local process (pid {pid}, user {uid})"
        except (OSError, AttributeError):  # gone; or no SO_PEERCRED on this system
            return ""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return printable(str(peer[0]))  # the host: a client retrying comes from a new port each time
    return ""
