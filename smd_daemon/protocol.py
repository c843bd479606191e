"""The wire format between the daemon and its clients (protocol version 2).

``docs/protocol.md`` is the authoritative description; this module is its
only implementation. The daemon and the Krita plugin import this very file
(the plugin installer vendors it unchanged), so it may import only the
standard library and pyzmq: no numpy, torch or Pillow.

A message is one ZeroMQ multipart message: a UTF-8 JSON object (the header)
followed by zero or more binary parts (alpha planes, images, frames). The
header always has ``"v"`` (protocol version) and ``"type"``; binary parts
are referred to by their index in the list of parts after the header.
Nothing executable crosses the wire: JSON only, never pickle or eval.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass, field

PROTOCOL_VERSION = 2

# Generous sanity bounds checked before any limit of the daemon: they keep a
# hostile header from making the receiver allocate or loop without bound.
MAX_HEADER_BYTES = 256 * 1024
MAX_STRING = 8192
MAX_LIST = 1024
MAX_PARTS = 1100
MAX_INT = 2**63 - 1
MAX_TOKEN = 2**53 - 1  # frame tokens: exact as a JSON number anywhere

# JSON can spell lone UTF-16 surrogates ("\ud800"), which are not text:
# every string that crosses the wire must be encodable as UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")

# Frame and image encodings. "raw" is uncompressed 8-bit RGB (or RGBA, or a
# single channel for alpha planes), row-major, top row first.
FRAME_ENCODINGS = ("raw", "png", "jpeg", "webp")
# Alpha planes and raw images may also travel zlib-compressed (stdlib only,
# so the plugin can compress without an image library).
PLANE_ENCODINGS = ("raw", "zlib", "png")
IMAGE_ENCODINGS = ("raw", "zlib", "png", "jpeg", "webp")
# How regions enter the model (docs/protocol.md), the default first. The one
# list of the wire, the daemon and the plugin; the engine room, which may not
# import this module, keeps its own, and a test holds the two equal.
REGION_MODES = ("latent", "attention")


class ErrorCode:
    """Error codes in ``error`` messages. The message text is for people."""

    BAD_MESSAGE = "bad_message"  # not a multipart message with a JSON object header
    BAD_VERSION = "bad_version"  # protocol version the daemon does not speak
    UNKNOWN_TYPE = "unknown_type"
    BAD_FIELD = "bad_field"  # missing, wrongly typed or out-of-range field
    BAD_IMAGE = "bad_image"  # alpha plane or image that cannot be decoded or has the wrong size
    BAD_SCENE = "bad_scene"  # the scene as a whole cannot be drawn
    TOO_MANY_REGIONS = "too_many_regions"
    TOO_LARGE = "too_large"  # size, message or prompt over a limit
    HANDSHAKE_REQUIRED = "handshake_required"  # anything but hello before hello
    NO_SESSION = "no_session"  # a session request before open (or after the session was freed)
    NO_SCENE = "no_scene"  # live or generate before the first scene
    STALE_REVISION = "stale_revision"  # revision not newer than the last one applied
    BUSY = "busy"  # no free session, too many jobs queued, updates arriving faster than they are decoded
    QUOTA = "quota"  # this client's key (user, host) already holds its share of the sessions or connections
    NO_MEMORY = "no_memory"  # the daemon's memory budget cannot hold this scene beside the other sessions
    RATE_LIMITED = "rate_limited"  # flood of requests; some were dropped
    UNKNOWN_CONTROL = "unknown_control"  # a control layer of a kind the daemon has no model for
    ENGINE_ERROR = "engine_error"  # the engine failed for this session (out of memory, ...)
    INTERNAL = "internal_error"  # a bug in the daemon; the request was dropped, the daemon keeps serving
    # Never sent: the client library's own, for a frame or result it dropped (framecheck.py).
    BAD_FRAME = "bad_frame"


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``code`` is an ``ErrorCode``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Message:
    type: str
    header: dict
    parts: list = field(default_factory=list)  # bytes-like binary parts

    def part(self, index) -> memoryview:
        """The binary part a header field points to, or a BAD_FIELD error."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.parts):
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"{self.type}: binary part {index!r} does not exist (message has {len(self.parts)})",
            )
        return memoryview(self.parts[index])


# --- field checking ------------------------------------------------------


class F:
    """One header field: its kind, whether required, and its bounds."""

    __slots__ = ("kind", "required", "lo", "hi", "max_len", "choices", "items", "fields", "nullable")

    def __init__(
        self,
        kind,
        required=False,
        lo=None,
        hi=None,
        max_len=None,
        choices=None,
        items=None,
        fields=None,
        nullable=False,
    ):
        self.kind, self.required, self.lo, self.hi = kind, required, lo, hi
        self.max_len, self.choices, self.items, self.fields, self.nullable = max_len, choices, items, fields, nullable


def _check(value, spec: F, where: str):
    if value is None and spec.nullable:
        return
    kind = spec.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be an integer")
    elif kind == "num":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be a number")
        if not math.isfinite(value):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be finite")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be true or false")
    elif kind in ("str", "list"):
        if not isinstance(value, str if kind == "str" else list):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be a {'string' if kind == 'str' else 'list'}")
        limit = spec.max_len or (MAX_STRING if kind == "str" else MAX_LIST)
        if len(value) > limit:
            unit = "characters" if kind == "str" else "entries"
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{where} has {len(value)} {unit}, at most {limit} allowed")
        if kind == "list" and spec.items is not None:
            for i, item in enumerate(value):
                _check(item, spec.items, f"{where}[{i}]")
    elif kind == "obj":
        if not isinstance(value, dict):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be an object")
        check_fields(value, spec.fields or {}, where)
    elif kind == "any":
        pass
    if spec.choices is not None and value not in spec.choices:
        raise ProtocolError(
            ErrorCode.BAD_FIELD, f"{where} must be one of {', '.join(map(str, spec.choices))}, got {value!r}"
        )
    if spec.lo is not None and value < spec.lo or spec.hi is not None and value > spec.hi:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be between {spec.lo} and {spec.hi}, got {value}")


def check_fields(obj: dict, fields: dict, where: str) -> None:
    for name, spec in fields.items():
        if name not in obj:
            if spec.required:
                raise ProtocolError(ErrorCode.BAD_FIELD, f"{where}: missing field {name!r}")
            continue
        _check(obj[name], spec, f"{where}.{name}")


# Reference to a binary part holding an image or alpha plane.
IMAGE_REF = {"part": F("int", True, 0, MAX_PARTS), "encoding": F("str", choices=IMAGE_ENCODINGS)}
PLANE_REF = {"part": F("int", True, 0, MAX_PARTS), "encoding": F("str", choices=PLANE_ENCODINGS)}
LAYER = {
    "key": F("str", True, max_len=256),  # stable id of the layer (Krita's uniqueId)
    "name": F("str", max_len=4096),  # raw layer name; the daemon applies the grammar
    "visible": F("bool"),
    "alpha": F("obj", fields=PLANE_REF, nullable=True),  # 8-bit plane at output size
    "group": F("bool"),  # a group layer: listed, never read (its children are layers of their own)
    # A control layer's picture, RGB at output size, as the artist sees the layer over white paper.
    "image": F("obj", fields=IMAGE_REF, nullable=True),
}
BACKGROUND = {
    "prompt": F("str", max_len=4096),
    "negative_prompt": F("str", max_len=4096),
    "strength": F("num", lo=0, hi=1),
    "image": F("obj", fields=IMAGE_REF, nullable=True),  # RGB at output size
}
# Scene settings; in a partial update each is optional and keeps its value.
SETTINGS = {
    "width": F("int", lo=1, hi=65536),
    "height": F("int", lo=1, hi=65536),
    "seed": F("int", lo=0, hi=MAX_INT),
    "steps": F("int", lo=1, hi=1000),
    "guidance_scale": F("num", lo=0, hi=100),
    "mask_mode": F("str", choices=("continuous", "discrete")),
    "region_mode": F("str", choices=REGION_MODES),
    "negative_prompt": F("str", max_len=4096),
    "background": F("obj", fields=BACKGROUND),
}

# Client -> daemon requests. Every request may carry "id" (an int the reply
# echoes as "re").
REQUESTS = {
    "hello": {"protocol": F("int", True), "client": F("str", max_len=200)},
    "ping": {},
    "open": {},
    "close": {},
    "update": {
        "revision": F("int", True, 1, MAX_INT),
        "full": F("bool", True),
        "layers": F("list", items=F("obj", fields=LAYER)),
        "order": F("list", items=F("str", max_len=256)),
        **SETTINGS,
    },
    "live_start": {
        "encoding": F("str", choices=FRAME_ENCODINGS),
        "quality": F("int", lo=1, hi=100),
        "max_fps": F("num", lo=0.1, hi=1000),
    },
    "live_stop": {},
    # A live frame (seq) or a generate result (job), with the token it came with.
    "ack": {
        "seq": F("int", lo=0, hi=MAX_INT),
        "job": F("int", lo=0, hi=MAX_INT),
        "token": F("int", True, 0, MAX_TOKEN),
    },
    "generate": {
        "encoding": F("str", choices=FRAME_ENCODINGS),
        "quality": F("int", lo=1, hi=100),
        "steps": F("int", lo=1, hi=1000),
        "seed": F("int", lo=0, hi=MAX_INT),
    },
    "cancel": {"job": F("int", lo=0, hi=MAX_INT)},
}

# Daemon -> client messages (checked by the client more loosely: a newer
# daemon may add fields).
REPLIES = {
    "welcome": {
        "protocol": F("int", True),
        "daemon": F("obj"),
        "model": F("obj"),
        "limits": F("obj", True),
        "capabilities": F("obj"),
    },
    "pong": {},
    "opened": {"session": F("str", True)},
    "closed": {"reason": F("str")},
    "scene": {"revision": F("int", True), "layers": F("list", True, max_len=100000), "regions": F("int")},
    "live": {"active": F("bool", True), "encoding": F("str")},
    "frame": {
        "seq": F("int", True),
        "token": F("int", True),
        "revision": F("int", True),
        "width": F("int", True),
        "height": F("int", True),
        "encoding": F("str", True),
        "channels": F("int", True),
        "part": F("int", True),
    },
    "progress": {"job": F("int", True), "step": F("int", True), "total": F("int", True)},
    "result": {
        "job": F("int", True),
        "token": F("int", True),
        "revision": F("int", True),
        "width": F("int", True),
        "height": F("int", True),
        "encoding": F("str", True),
        "channels": F("int", True),
        "part": F("int", True),
    },
    "queued": {"job": F("int", True)},
    "cancelled": {"job": F("int", True)},
    "error": {"code": F("str", True), "message": F("str", True, max_len=100000)},
    "bye": {"reason": F("str")},
}


# --- building and reading messages --------------------------------------


def encode(type_: str, parts=(), **fields) -> list:
    """A message as a list of frames ready for ``socket.send_multipart``."""
    header = {"v": PROTOCOL_VERSION, "type": type_, **fields}
    head = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    return [head, *parts]


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed")


def decode(frames, schemas: dict | None = None) -> Message:
    """Parse and check one received multipart message.

    ``schemas`` is ``REQUESTS`` on the daemon and ``REPLIES`` on the client.
    Raises ``ProtocolError`` with the code to send back.
    """
    if not frames:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "empty message")
    if len(frames) - 1 > MAX_PARTS:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{len(frames) - 1} binary parts, at most {MAX_PARTS} allowed")
    head = frames[0]
    raw = head.bytes if hasattr(head, "bytes") else bytes(head)
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"header is {len(raw)} bytes, at most {MAX_HEADER_BYTES} allowed")
    try:
        text = raw.decode("utf-8")
        header = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"header is not a JSON object: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "header is not a JSON object")
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(header):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            "header holds text that is not valid Unicode (a lone UTF-16 surrogate such as \\ud800)",
        )
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # not true, not 2.0
        raise ProtocolError(
            ErrorCode.BAD_VERSION,
            f"protocol version {version!r} is not supported; this side speaks version {PROTOCOL_VERSION}",
        )
    type_ = header.get("type")
    if not isinstance(type_, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "header has no message type")
    parts = [f.buffer if hasattr(f, "buffer") else f for f in frames[1:]]
    if schemas is not None:
        if type_ not in schemas:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {type_[:60]!r}")
        if "id" in header:
            _check(header["id"], F("int", lo=0, hi=MAX_INT), f"{type_}.id")
        check_fields(header, schemas[type_], type_)
    return Message(type_, header, parts)


def _has_lone_surrogate(value) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def request_id(header: dict):
    """The request id to echo in a reply, or None when absent or malformed."""
    rid = header.get("id") if isinstance(header, dict) else None
    return rid if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= MAX_INT else None


# --- addresses ------------------------------------------------------------------

DEFAULT_PORT = 7555
DEFAULT_ADDRESS = f"tcp://127.0.0.1:{DEFAULT_PORT}"
ADDRESS_EXAMPLES = (
    "an address looks like 127.0.0.1:7555, gpu-box (port 7555), tcp://gpu-box:7555, [::1]:7555 or ipc:///tmp/smd.sock"
)
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?$")


def normalize_address(text: str) -> str:
    """A daemon address as people write it -> the ZeroMQ endpoint.

    ``host``, ``host:port``, ``tcp://host[:port]``, ``[v6]:port`` and bare IPv6
    (``::1``) become ``tcp://host:port`` (port 7555 when none is given; ``*``
    is any interface, for binding); ``ipc://path`` is kept. Anything else
    raises ValueError with one sentence that says what an address looks like.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"no daemon address given; {ADDRESS_EXAMPLES}")
    s = text.strip()
    scheme, sep, rest = s.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme in ("ipc", "inproc"):
            if not rest or any(c in rest for c in "\0\r\n"):
                raise ValueError(f"{text!r} names no socket path; {ADDRESS_EXAMPLES}")
            return f"{scheme}://{rest}"
        if scheme != "tcp":
            raise ValueError(
                f"{text!r} is not a daemon address ({scheme}:// is not spoken here, the daemon "
                f"speaks ZeroMQ); {ADDRESS_EXAMPLES}"
            )
        s = rest
    host, port = _host_port(s, text)
    return f"tcp://{host}:{port}"


def _host_port(s: str, text: str) -> tuple[str, int]:
    port_text = ""
    if s.startswith("["):  # [v6] or [v6]:port
        end = s.find("]")
        host, after = (s[1:end], s[end + 1 :]) if end > 0 else ("", "?")
        if after:
            if not after.startswith(":"):
                raise ValueError(f"{text!r} is not a daemon address; {ADDRESS_EXAMPLES}")
            port_text = after[1:]
        v6 = True
    elif s.count(":") >= 2:  # a bare IPv6 address: no port can be told apart
        host, v6 = s, True
    else:
        host, _, port_text = s.partition(":")
        if _ and not port_text:
            raise ValueError(f"{text!r} has no port after ':'; {ADDRESS_EXAMPLES}")
        v6 = False
    if v6:
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise ValueError(f"{text!r} is not a valid IPv6 address; {ADDRESS_EXAMPLES}") from None
    elif host != "*" and not _HOSTNAME.match(host):
        raise ValueError(f"{text!r} is not a daemon address ({host!r} is not a host name); {ADDRESS_EXAMPLES}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} has port {port_text!r}, not a number from 1 to 65535; {ADDRESS_EXAMPLES}")
    return host, int(port_text)


def is_ipv6_endpoint(endpoint: str) -> bool:
    """A normalized tcp endpoint with an IPv6 host: ZeroMQ sockets need the IPV6 option for it."""
    return endpoint.startswith("tcp://[")


def is_local_address(address: str) -> bool:
    """True for endpoints only this machine can reach (loopback TCP, ipc, inproc)."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host.lower() == "localhost" or host == "::1":
        return True
    octets = host.split(".")
    return len(octets) == 4 and octets[0] == "127" and all(o.isdigit() for o in octets)
