"""What a client accepts as a live frame or a generate result (standard
library only; the Krita plugin vendors this file with ``client.py``).

Whatever answers at the daemon's address is not trusted with the client's
memory. A frame or result is dropped, before its bytes are copied or
decoded, unless:

- its ``width`` and ``height`` are those of the scene revision it claims to
  show (this client asked for that size: ``AskedSizes``);
- a raw frame holds exactly ``width × height × 3`` bytes;
- an encoded one (png, jpeg, webp) holds at most ``max_encoded_bytes`` and
  its file header (PNG's IHDR, JPEG's SOF, WebP's VP8/VP8L/VP8X) names that
  very size, so no decoder allocates for more (a decompression bomb is a
  small file whose header names a huge image).

The socket itself refuses any part over ``max_part_bytes`` (ZeroMQ's
``MAXMSGSIZE``) before allocating it.
"""

from __future__ import annotations

import struct

from .events import ErrorEvent
from .protocol import MAX_HEADER_BYTES, ErrorCode, ProtocolError

CHANNELS = 3  # frames are RGB
# The largest side a client expects frames at before it asks for more; the
# daemon's engine draws at most 4096 pixels per side (``limits.max_side``).
DEFAULT_MAX_SIDE = 4096
ENCODED_SLACK = 64 * 1024


def max_encoded_bytes(width: int, height: int) -> int:
    """The most bytes an encoded frame of this size may take: twice the raw
    size (JPEG of noise at quality 100 without chroma subsampling takes 1.4×)."""
    return 2 * width * height * CHANNELS + ENCODED_SLACK


def max_part_bytes(side: int) -> int:
    """ZeroMQ's ``MAXMSGSIZE`` for a client that asks for frames up to ``side`` pixels per side."""
    return max(max_encoded_bytes(side, side), MAX_HEADER_BYTES)


class AskedSizes:
    """The output size of every recent scene revision this client sent: a frame
    of revision ``r`` must be the size of the scene at ``r``."""

    KEPT = 16  # size changes remembered; frames of older scenes are long gone

    def __init__(self):
        self._changes: list = []  # (first revision, (width, height)), oldest first
        self.newest = 0

    def asked(self, revision: int, size: tuple) -> None:
        if not self._changes or self._changes[-1][1] != size:
            self._changes = (self._changes + [(revision, size)])[-self.KEPT :]
        self.newest = revision

    def at(self, revision) -> tuple | None:
        """The size asked for at ``revision``, or None for a revision never sent (or long gone)."""
        if isinstance(revision, bool) or not isinstance(revision, int) or revision > self.newest:
            return None
        for first, size in reversed(self._changes):
            if first <= revision:
                return size
        return None


def refusal(msg, asked: AskedSizes) -> tuple | None:
    """None when the ``frame`` or ``result`` message ``msg`` is what was asked for;
    otherwise the ``ErrorEvent`` (code ``bad_frame``) that tells why, and the ``ack``
    fields that acknowledge it all the same."""
    try:
        check(msg, asked)
        return None
    except ProtocolError as e:
        h = msg.header
        job = h["job"] if msg.type == "result" else None
        fields = {"code": e.code, "message": e.message, **({} if job is None else {"job": job})}
        ack = {"seq": h["seq"]} if job is None else {"job": job}
        return ErrorEvent(e.code, e.message, job, fields), {**ack, "token": h["token"]}


def check(msg, asked: AskedSizes) -> None:
    """Raise ``ProtocolError(BAD_FRAME)`` with one sentence unless the ``frame``
    or ``result`` message ``msg`` is what was asked for."""
    h = msg.header
    what = "frame" if msg.type == "frame" else f"result of job {h['job']}"
    size = asked.at(h["revision"])
    if size is None:
        raise _refuse(f"a {what} of scene revision {h['revision']}, which this client never sent")
    w, h_ = h["width"], h["height"]
    if (w, h_) != size:
        raise _refuse(f"a {what} of {w}x{h_} pixels; the scene asked for {size[0]}x{size[1]}")
    if h["channels"] != CHANNELS:
        raise _refuse(f"a {what} with {h['channels']} channels, not {CHANNELS}")
    try:
        data = msg.part(h["part"])
    except ProtocolError:
        raise _refuse(f"a {what} whose pixels are not in the message") from None
    encoding = h["encoding"]
    if encoding == "raw":
        if len(data) != w * h_ * CHANNELS:
            raise _refuse(f"a raw {what} of {len(data)} bytes; {w}x{h_} RGB is {w * h_ * CHANNELS}")
        return
    if encoding not in ("png", "jpeg", "webp"):
        raise _refuse(f"a {what} in an unknown encoding {encoding[:20]!r}")
    if len(data) > max_encoded_bytes(w, h_):
        raise _refuse(f"a {encoding} {what} of {len(data)} bytes, more than a {w}x{h_} image can take")
    found = image_size(data, encoding)
    if found is None:
        raise _refuse(f"a {what} that is not a {encoding} file")
    if found != (w, h_):
        raise _refuse(f"a {encoding} {what} whose file header says {found[0]}x{found[1]}, not {w}x{h_}")


def _refuse(sentence: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FRAME, f"dropped {sentence}")


def image_size(data, encoding: str) -> tuple | None:
    """(width, height) from a PNG, JPEG or WebP file's header; None when it has none."""
    head = bytes(data[:32])
    try:
        if encoding == "png":
            if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
                return None
            return struct.unpack(">II", head[16:24])
        if encoding == "webp":
            return _webp_size(head)
        if encoding == "jpeg":
            return _jpeg_size(data)
    except struct.error:  # a header cut short
        return None
    return None


def _webp_size(head: bytes) -> tuple | None:
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit sizes
        if head[23:26] != b"\x9d\x01\x2a":
            return None
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":  # lossless: a signature byte, then 14-bit sizes minus one
        if head[20:21] != b"\x2f":
            return None
        bits = struct.unpack("<I", head[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: the canvas size, 24-bit minus one
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    return None


# JPEG start-of-frame markers (every SOFn but DHT, JPG and DAC, which share the range).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM stand alone
_MAX_SEGMENTS = 1000  # metadata (EXIF, ICC in 64 KiB pieces) comes first; a frame header follows soon


def _jpeg_size(data) -> tuple | None:
    """The size in the first SOF segment, walking the segments before it."""
    data = memoryview(data)
    if bytes(data[:2]) != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    for _ in range(_MAX_SEGMENTS):
        if i + 4 > n:
            return None
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or the scan, before any frame header
            return None
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in _SOF:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None
