"""The events ``Client.poll`` returns (standard library only).

``StateEvent`` (connection state), ``SceneEvent`` (how the daemon read each
layer: ``grammar.ParsedLayer.to_dict()``, passed through unchanged),
``FrameEvent`` (live frames and generate results; ``job`` is None for live
frames; raw frames are ``channels`` bytes per pixel, row-major; compressed
ones are the encoded file bytes, whose header names ``width`` x ``height``:
``framecheck`` checked both against the size asked for),
``ProgressEvent``, ``QueuedEvent``, ``CancelledEvent``, ``LiveEvent`` and
``ErrorEvent`` (a code from ``protocol.ErrorCode`` and a message for people).

Part of the client library's interface: ``client.py`` re-exports every name
here, and the Krita plugin vendors this file with it, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .protocol import ProtocolError


class StateCode:
    """Why the client is in its state (``Client.state_code``, ``StateEvent.code``): a
    closed set a program decides on; ``state_reason`` is the sentence for people."""

    CONNECTED = ""
    CONNECTING = "connecting"  # saying hello (also after the daemon restarted or dropped the session)
    NO_ANSWER = "no_answer"  # nothing answers: is the daemon running, is the address right?
    AUTH_FAILED = "auth_failed"  # the CURVE handshake failed: the daemon did not accept this key
    REFUSED = "refused"  # the daemon answered hello with an error (protocol version, too many clients)
    CLOSED = "closed"  # closed by this side; nothing reconnects
    BYE = "bye"  # the daemon said bye (shutting down, or our heartbeats stopped)


@dataclass
class StateEvent:
    state: str
    reason: str = ""
    code: str = ""  # a StateCode


@dataclass
class SceneEvent:
    revision: int
    layers: list  # one dict per layer: name, role, prompt, options, reason, warnings
    regions: int = 0


@dataclass
class FrameEvent:
    seq: int
    revision: int
    width: int
    height: int
    encoding: str
    channels: int
    data: bytes
    settled: bool = True
    job: int | None = None  # set for generate results
    header: dict = field(default_factory=dict)
    received_at: float = 0.0  # time.time() when the bytes arrived

    @classmethod
    def from_message(cls, msg, received_at: float) -> FrameEvent:
        """A ``frame`` or ``result`` message (``protocol.Message``) as an event."""
        h = msg.header
        try:
            data = msg.part(h["part"]).tobytes()
        except ProtocolError:
            data = b""
        return cls(
            h["seq"] if msg.type == "frame" else -1,
            h["revision"],
            h["width"],
            h["height"],
            h["encoding"],
            h["channels"],
            data,
            bool(h.get("settled", True)),
            h.get("job"),
            h,
            received_at,
        )


@dataclass
class ProgressEvent:
    job: int
    step: int
    total: int


@dataclass
class QueuedEvent:
    job: int


@dataclass
class CancelledEvent:
    job: int


@dataclass
class LiveEvent:
    active: bool


@dataclass
class ErrorEvent:
    code: str
    message: str
    re: int | None = None
    header: dict = field(default_factory=dict)
