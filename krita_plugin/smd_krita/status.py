"""What the docker says about the connection and the stream: words from the
client's state codes, and frame rate and latency that are never counted
across an outage. Pure logic (no Qt, no Krita)."""

from __future__ import annotations

import time

# Client.state_code values (docs/protocol.md, "Connection states").
CONNECTED, CONNECTING, NO_ANSWER, AUTH_FAILED, REFUSED, CLOSED, BYE = (
    "",
    "connecting",
    "no_answer",
    "auth_failed",
    "refused",
    "closed",
    "bye",
)
RECONNECTS = "the plugin reconnects by itself"


class Stats:
    """Frames per second and latency of the live stream.

    ``reset()`` whenever the stream stops (disconnected, Live off): the next
    frame then starts a new count instead of measuring the gap.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.fps = 0.0
        self.latency_ms = 0.0
        self.frames = 0
        self._last_frame: float | None = None

    def frame(self) -> None:
        now = self.clock()
        if self._last_frame is not None:
            dt = max(now - self._last_frame, 1e-3)
            self.fps = 1.0 / dt if not self.fps else 0.8 * self.fps + 0.2 / dt
        self._last_frame = now
        self.frames += 1

    def latency(self, seconds: float) -> None:
        self.latency_ms = seconds * 1000.0

    def text(self, live: bool) -> str:
        if not live or not self.frames:
            return ""
        fps = f"{self.fps:.1f} frames/s" if self.fps else "first frame"
        return f"{fps}, latency {self.latency_ms:.0f} ms" if self.latency_ms else fps


def model_text(info: dict) -> str:
    """One short line (the docker is narrow): the model and where it runs."""
    model = info.get("model", {})
    if not isinstance(model, dict):
        return f"connected: {model}"
    text = f"connected: {model.get('name') or 'model'}"
    if model.get("device"):
        text += f" on {model['device']}"
    if model.get("meaningful") is False:
        text += " (test model: noise)"
    return text


def details(info: dict, address: str) -> str:
    """The rest, for the status line's tooltip: address, limits, what a test model means."""
    lines = [f"daemon at {address}"]
    limits = info.get("limits", {})
    parts = [f"{k.replace('_', ' ')} {limits[k]}" for k in ("max_side", "max_regions", "max_steps") if k in limits]
    if parts:
        lines.append(", ".join(parts))
    model = info.get("model", {})
    if isinstance(model, dict) and model.get("meaningful") is False:
        lines.append("a test model with random weights: its pictures are noise")
    return "\n".join(lines)


def connection_text(code: str | None, state: str, reason: str, address: str, info: dict) -> tuple[str, str]:
    """(words, kind): kind is "ok", "busy" or "problem" (how the docker colours it)."""
    if state == "connected":
        return model_text(info), "ok"
    if code == CLOSED:
        return "not connected: press Connect", "problem"
    if code == NO_ANSWER:
        return f"no answer from {address}: is the daemon running? ({RECONNECTS})", "problem"
    if code == AUTH_FAILED:
        return (f"the daemon did not accept this key: check the server key and your key file ({RECONNECTS})", "problem")
    if code == REFUSED:
        return f"the daemon refused the connection: {reason}", "problem"
    if code == BYE:
        return f"the daemon closed the connection ({reason}); {RECONNECTS}", "problem"
    if code == CONNECTING or state == "connecting":
        return f"connecting to {address}…", "busy"
    return f"disconnected: {reason} ({RECONNECTS})", "problem"
