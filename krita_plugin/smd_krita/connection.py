"""The connection to the daemon: the vendored client, a read notifier on its
socket, and its state (with the client's state code, contract of
docs/protocol.md) for the docker to put in words."""

from __future__ import annotations

from . import status
from .qt import QObject, QSocketNotifier, sip
from .transport import client as client_mod
from .transport import protocol


def same_address(a: str, b: str) -> bool:
    """Whether two addresses as people write them name the same endpoint."""
    try:
        return protocol.normalize_address(a) == protocol.normalize_address(b)
    except ValueError:
        return False


class Connection(QObject):
    def __init__(self, on_readable, parent=None):
        super().__init__(parent)
        self._on_readable = on_readable
        self.client = None
        self._notifier, self._notifier_fd = None, None
        self.state, self.code, self.reason = "disconnected", status.CLOSED, "not connected"

    @property
    def connected(self) -> bool:
        return self.client is not None and self.state == "connected"

    @property
    def info(self) -> dict:
        return self.client.info if self.client is not None else {}

    @property
    def limits(self) -> dict:
        return self.client.limits if self.client is not None else {}

    def open(self, address: str, server_key: str, key_file: str) -> str:
        """Connect (in the background); returns '' or why it cannot even start."""
        self.close()
        try:
            key = server_key.strip().encode("ascii") or None
            # The client accepts host, host:port, tcp://host:port... (a sentence when it cannot).
            self.client = client_mod.Client(
                address.strip(), name="krita", server_public_key=key, client_secret_file=key_file.strip() or None
            )
            self.client.connect()
        except Exception as e:  # a bad address or key file: say so, stay usable
            self.client = None
            self.set_state("disconnected", status.CLOSED, "not connected")
            return f"cannot connect: {e}"
        self.set_state(self.client.state, self.client.state_code, self.client.state_reason)
        self.watch()
        return ""

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._notifier is not None:
            self._notifier.setEnabled(False)
            self._notifier.deleteLater()
            self._notifier, self._notifier_fd = None, None
        self.set_state("disconnected", status.CLOSED, "not connected")

    def set_state(self, state: str, code: str | None, reason: str) -> None:
        self.state, self.code, self.reason = state, code, reason

    def poll(self) -> list:
        if self.client is None:
            return []
        events = self.client.poll(0)
        self.watch()
        return events

    def watch(self) -> None:
        """A read notifier on the ZeroMQ fd (recreated when the client reconnects)."""
        if self.client is None:
            return
        fd = self.client.fileno()
        if fd == self._notifier_fd:
            return
        if self._notifier is not None:
            self._notifier.setEnabled(False)
            self._notifier.deleteLater()
        self._notifier = QSocketNotifier(sip.voidptr(fd), QSocketNotifier.Type.Read, self)  # the fd as Qt's qintptr
        self._notifier.activated.connect(lambda _fd: self._on_readable())
        self._notifier_fd = fd

    def words(self, typed_address: str) -> tuple[str, str]:
        """What to say about the connection: (words, kind "ok"/"busy"/"problem")."""
        address = self.client.address if self.client is not None else typed_address
        return status.connection_text(self.code, self.state, self.reason, address, self.info)

    def details(self, typed_address: str) -> str:
        address = self.client.address if self.client is not None else typed_address
        return status.details(self.info, address)

    def encoding(self) -> str:
        # Raw frames cost nothing to decode on loopback; over a network JPEG, which
        # every Qt build decodes (WebP needs an optional image-format plugin).
        local = self.client is not None and protocol.is_local_address(self.client.address)
        return "raw" if local else "jpeg"

    @property
    def defaults(self) -> dict:
        """The daemon's defaults for settings an update leaves out (``welcome.defaults``)."""
        return self.info.get("defaults", {})

    def region_modes(self) -> list:
        return list(self.info.get("capabilities", {}).get("region_modes") or [])
