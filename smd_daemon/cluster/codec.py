"""Messages as ZeroMQ frames, in a format that cannot run code when read.

Frame 0 is JSON: plain values (None, booleans, numbers, text, lists) as they
are, and every other value as an object tagged ``"$"``: a tuple, a dict, one
of the allowed dataclasses (by class name, its fields by name), a named
constant, bytes or a numpy array. Bytes and arrays travel as their own
frames after the JSON, without a copy; an array's tag says its dtype (from a
short allow-list) and shape, which must match its frame's size exactly.

Reading builds only those values: an unknown type or field, a dtype not on
the list, a shape that disagrees with its buffer, too many frames, too large
a header or array, or too deep a nesting is refused with ``CodecError``
before anything is allocated for it.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import zmq

DTYPES = ("|u1", "<f4")  # uint8 (masks, images, frames) and float32 (masks)
MAX_HEADER_BYTES = 1 << 20
MAX_FRAMES = 64
MAX_DEPTH = 12
MAX_NDIM = 3


class CodecError(ValueError):
    """Frames that are not a message this codec may build."""


class Codec:
    def __init__(self, types, constants: dict, max_array_bytes: int):
        self.types = {t.__name__: t for t in types}
        self.fields = {name: tuple(f.name for f in dataclasses.fields(t)) for name, t in self.types.items()}
        self.constants = dict(constants)
        self._constant_names = {id(v): k for k, v in self.constants.items()}
        self.max_array_bytes = max_array_bytes
        clash = (set(self.types) & set(self.constants)) | ({"tuple", "dict", "bytes", "array"} & set(self.types))
        assert not clash, f"names used twice: {clash}"

    # --- writing ---------------------------------------------------------------------------

    def dumps(self, obj) -> list:
        """``obj`` (an allowed dataclass) as frames: the JSON, then each buffer."""
        if type(obj).__name__ not in self.types:
            raise CodecError(f"{type(obj).__name__} is not a message type")
        buffers: list = []
        head = json.dumps(self._enc(obj, buffers), separators=(",", ":"), allow_nan=True).encode()
        return [head, *buffers]

    def _enc(self, v, buffers: list):
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, (float, np.floating)):
            return float(v)
        if isinstance(v, list):
            return [self._enc(x, buffers) for x in v]
        if isinstance(v, tuple):
            return {"$": "tuple", "v": [self._enc(x, buffers) for x in v]}
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise CodecError("dict keys must be text")
            return {"$": "dict", "v": {k: self._enc(x, buffers) for k, x in v.items()}}
        if isinstance(v, (bytes, bytearray, memoryview)):
            buffers.append(v)
            return {"$": "bytes", "i": len(buffers)}
        if isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v)
            if a.dtype.str not in DTYPES or a.ndim > MAX_NDIM:
                raise CodecError(f"arrays of {a.dtype} with {a.ndim} dimensions do not cross")
            buffers.append(a.data.cast("B") if a.size else b"")
            return {"$": "array", "i": len(buffers), "dtype": a.dtype.str, "shape": list(a.shape)}
        name = self._constant_names.get(id(v))
        if name is not None:
            return {"$": name}
        name = type(v).__name__
        if self.types.get(name) is type(v):
            return {"$": name, "v": {f: self._enc(getattr(v, f), buffers) for f in self.fields[name]}}
        raise CodecError(f"{name} values do not cross")

    # --- reading ---------------------------------------------------------------------------

    def loads(self, frames: list, writable: bool = False):
        """The message ``dumps`` sent (frames as ``recv_multipart(copy=False)`` gives them).
        Arrays are read-only views of the frames, or, with ``writable``, copies."""
        if not frames or len(frames) > MAX_FRAMES:
            raise CodecError(f"{len(frames)} frames: a message has 1 to {MAX_FRAMES}")
        views = [f.buffer if isinstance(f, zmq.Frame) else memoryview(f) for f in frames]
        if views[0].nbytes > MAX_HEADER_BYTES:
            raise CodecError(f"a header of {views[0].nbytes} bytes (at most {MAX_HEADER_BYTES})")
        try:
            tree = json.loads(bytes(views[0]))
        except (ValueError, RecursionError) as e:
            raise CodecError(f"the header is not JSON ({str(e)[:80]})") from None
        reader = _Reader(self, views, writable)
        obj = reader.value(tree, 0)
        if type(obj).__name__ not in self.types:
            raise CodecError("the header is not a message")
        if len(reader.used) != len(views) - 1:
            raise CodecError(f"{len(views) - 1 - len(reader.used)} frames that no field refers to")
        return obj


class _Reader:
    def __init__(self, codec: Codec, views: list, writable: bool):
        self.codec, self.views, self.writable = codec, views, writable
        self.used: set[int] = set()

    def value(self, v, depth: int):
        if depth > MAX_DEPTH:
            raise CodecError(f"values nested deeper than {MAX_DEPTH}")
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self.value(x, depth + 1) for x in v]
        tag = v.get("$")
        if not isinstance(tag, str):
            raise CodecError("an object without a type")
        if tag == "tuple":
            return tuple(self.value(x, depth + 1) for x in _expect(v, "v", list))
        if tag == "dict":
            return {k: self.value(x, depth + 1) for k, x in _expect(v, "v", dict).items()}
        if tag == "bytes":
            return bytes(self.frame(v))
        if tag == "array":
            return self.array(v)
        codec = self.codec
        if tag in codec.constants and set(v) == {"$"}:
            return codec.constants[tag]
        if tag not in codec.types:
            raise CodecError(f"unknown type {str(tag)[:40]!r}")
        fields = _expect(v, "v", dict)
        unknown = set(fields).difference(codec.fields[tag])
        if unknown:
            raise CodecError(f"{tag} has no field {sorted(unknown)[0][:40]!r}")
        try:
            return codec.types[tag](**{k: self.value(x, depth + 1) for k, x in fields.items()})
        except TypeError as e:  # a required field missing
            raise CodecError(f"{tag}: {e}") from None

    def frame(self, v) -> memoryview:
        i = _expect(v, "i", int)
        if not 0 < i < len(self.views) or i in self.used:
            raise CodecError(f"frame {i} does not exist or is used twice")
        self.used.add(i)
        return self.views[i]

    def array(self, v) -> np.ndarray:
        dtype, shape = _expect(v, "dtype", str), _expect(v, "shape", list)
        if dtype not in DTYPES:
            raise CodecError(f"arrays of {dtype[:20]!r} do not cross")
        if len(shape) > MAX_NDIM or not all(type(n) is int and n >= 0 for n in shape):
            raise CodecError(f"a bad array shape {str(shape)[:60]}")
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if nbytes > self.codec.max_array_bytes:
            raise CodecError(f"an array of {nbytes} bytes (at most {self.codec.max_array_bytes})")
        buf = self.frame(v)
        if buf.nbytes != nbytes:
            raise CodecError(f"an array of shape {shape} and dtype {dtype} in a frame of {buf.nbytes} bytes")
        out = np.frombuffer(bytearray(buf) if self.writable else buf, dtype=dtype).reshape(shape)
        out.flags.writeable = self.writable
        return out


def _expect(v: dict, key: str, kind: type):
    x = v.get(key)
    if type(x) is not kind:
        raise CodecError(f"{v.get('$')!r}: {key!r} must be {kind.__name__}")
    return x
