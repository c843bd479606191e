"""Live frames of one session, from the engine to the client, bounded.

A session holds at most ``window`` frames sent and not acknowledged, one
frame ready to send (a newer one replaces it: latest frame wins) and the
frames the engine is making. The engine makes a frame only while that sum
is below ``window + 1``, so a client that stops reading costs neither memory
nor engine time, and never holds back anyone else.

An ``ack`` counts only with the ``token`` of a frame that was sent: a client
cannot acknowledge frames it never received (ZeroMQ's queue to a client
that does not read would otherwise fill up unseen: a ROUTER has no per-peer
limit we could read).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from smd_daemon.server.messages import FrameReady

TOKEN_BITS = 52  # fits a JSON number exactly


class FrameFlow:
    """Shared by the engine thread (may it make a frame?) and the I/O thread
    (what to send, acknowledgements); every method takes the lock briefly."""

    def __init__(self, window: int):
        self.window = window
        self._lock = threading.Lock()
        self._seq = 0  # frames sent so far
        self._unacked: dict[int, int] = {}  # seq -> token of frames sent, not yet acknowledged
        self._ready: FrameReady | None = None
        self._making = 0
        self._encoding = False  # a compressed frame is being encoded (keeps frames in order)
        self._random = random.SystemRandom()
        # Called (outside the lock) when the room to make frames grows (an ack, a stop):
        # whoever makes frames out of sight, such as a cluster worker, is told at once.
        self.on_room: Callable[[], None] | None = None

    def room(self) -> int:
        """How many more frames the engine may start now."""
        with self._lock:
            return self.window + 1 - len(self._unacked) - (self._ready is not None) - self._making

    def can_make(self) -> bool:
        return self.room() > 0

    def start_making(self) -> None:
        with self._lock:
            self._making += 1

    def made(self, frame: FrameReady | None) -> None:
        """The engine finished (``frame``) or gave up (None) on a frame it started."""
        with self._lock:
            self._making = max(0, self._making - 1)
            if frame is not None:
                self._ready = frame  # latest frame wins

    def next_to_send(self) -> tuple[FrameReady, int, int] | None:
        """The ready frame with its seq and token, if the window has room."""
        with self._lock:
            if self._ready is None or self._encoding or len(self._unacked) >= self.window:
                return None
            frame, self._ready = self._ready, None
            self._seq += 1
            token = self.new_token()
            self._unacked[self._seq] = token
            return frame, self._seq, token

    def new_token(self) -> int:
        """An unguessable number only the receiver of a frame or result can echo."""
        return self._random.getrandbits(TOKEN_BITS)

    def encoding(self, busy: bool) -> None:
        with self._lock:
            self._encoding = busy

    def ack(self, seq: int, token: int) -> bool:
        """Acknowledge every frame up to ``seq``; False (nothing changes) unless
        ``token`` is the one frame ``seq`` was sent with."""
        with self._lock:
            if self._unacked.get(seq) != token:
                return False
            self._unacked = {s: t for s, t in self._unacked.items() if s > seq}
        self._room_grew()
        return True

    def stop(self) -> None:
        """Live mode stopped: drop the ready frame and forget unacknowledged ones
        (a client need not acknowledge frames that arrive after it stopped)."""
        with self._lock:
            self._ready = None
            self._unacked.clear()
        self._room_grew()

    def _room_grew(self) -> None:
        if self.on_room is not None:
            self.on_room()

    @property
    def sent(self) -> int:
        return self._seq
