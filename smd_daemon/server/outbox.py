"""Events for the I/O thread from every other thread: a queue, and a wake-up
on an inproc socket so the I/O thread's poll returns at once.

Each posting thread has its own PUSH socket (ZeroMQ sockets are not thread
safe); a high-water mark of one makes a second wake-up while one is pending
free.
"""

from __future__ import annotations

import collections
import threading
import uuid

import zmq


class Outbox:
    def __init__(self, ctx: zmq.Context, stopping: threading.Event):
        self.ctx, self.stopping = ctx, stopping
        self._events: collections.deque = collections.deque()
        self._addr = f"inproc://wake-{uuid.uuid4().hex}"
        self._thread = threading.local()
        self.wake_sock: zmq.Socket | None = None

    def bind(self) -> zmq.Socket:
        """The socket the I/O thread polls (inproc: bound before any thread posts)."""
        self.wake_sock = self.ctx.socket(zmq.PULL)
        self.wake_sock.bind(self._addr)
        return self.wake_sock

    def post(self, event) -> None:
        """Hand an event to the I/O thread (any thread); dropped once the daemon stops."""
        if self.stopping.is_set():
            return
        self._events.append(event)
        try:
            sock = getattr(self._thread, "sock", None)
            if sock is None:
                sock = self._thread.sock = self.ctx.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, 1)
                sock.connect(self._addr)
            sock.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass  # a wake-up is already pending
        except zmq.ZMQError:
            pass  # the context is closing: the daemon is stopping

    def clear_wakeups(self) -> None:
        while True:
            try:
                self.wake_sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def drain(self, handle) -> None:
        while self._events:
            handle(self._events.popleft())

    def close(self) -> None:
        if self.wake_sock is not None:
            self.wake_sock.close(linger=0)
