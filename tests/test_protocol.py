"""The wire-format module and the client library without a daemon: no torch needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from install import VENDORED
from smd_daemon import protocol
from smd_daemon.protocol import ErrorCode as E
from smd_daemon.protocol import ProtocolError

V = protocol.PROTOCOL_VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _decode(obj_or_bytes, parts=()):
    head = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
    return protocol.decode([head, *parts], protocol.REQUESTS)


def test_roundtrip_keeps_header_and_binary_parts():
    frames = protocol.encode(
        "update",
        [b"\x01\x02", b"\x03"],
        revision=3,
        full=True,
        width=64,
        height=64,
        layers=[{"key": "k", "name": "a fox", "alpha": {"part": 1, "encoding": "raw"}}],
    )
    msg = protocol.decode(frames, protocol.REQUESTS)
    assert msg.type == "update" and msg.header["v"] == protocol.PROTOCOL_VERSION
    assert bytes(msg.part(msg.header["layers"][0]["alpha"]["part"])) == b"\x03"
    with pytest.raises(ProtocolError) as e:
        msg.part(2)
    assert e.value.code == E.BAD_FIELD


def test_encode_refuses_nan():
    with pytest.raises(ValueError):
        protocol.encode("live_start", max_fps=float("nan"))


@pytest.mark.parametrize(
    "head,code",
    [
        (b"", E.BAD_MESSAGE),
        (b"\xff\xfe", E.BAD_MESSAGE),
        (b"null", E.BAD_MESSAGE),
        (b'"hello"', E.BAD_MESSAGE),
        (b"[" * 100000, E.BAD_MESSAGE),
        (b'{"v": 2, "type": "ack", "seq": Infinity}', E.BAD_MESSAGE),
        (b'{"v": 2, "type": "ack", "seq": NaN}', E.BAD_MESSAGE),
        (b" " * (protocol.MAX_HEADER_BYTES + 1), E.TOO_LARGE),
        ({"type": "ping"}, E.BAD_VERSION),
        ({"v": "1", "type": "ping"}, E.BAD_VERSION),
        ({"v": V}, E.BAD_MESSAGE),
        ({"v": V, "type": 5}, E.BAD_MESSAGE),
        ({"v": V, "type": "format_disk"}, E.UNKNOWN_TYPE),
        ({"v": V, "type": "ping", "id": -1}, E.BAD_FIELD),
        ({"v": V, "type": "ack"}, E.BAD_FIELD),
        ({"v": V, "type": "ack", "seq": "3"}, E.BAD_FIELD),
        ({"v": V, "type": "ack", "seq": 1.5}, E.BAD_FIELD),
        ({"v": V, "type": "ack", "seq": False}, E.BAD_FIELD),
        ({"v": V, "type": "ack", "seq": -4}, E.BAD_FIELD),
        ({"v": V, "type": "ack", "seq": 2**70}, E.BAD_FIELD),
        ({"v": V, "type": "live_start", "encoding": "bmp"}, E.BAD_FIELD),
        ({"v": V, "type": "live_start", "max_fps": 1e308}, E.BAD_FIELD),
        ({"v": V, "type": "update", "revision": 1, "full": True, "layers": "fox"}, E.BAD_FIELD),
        ({"v": V, "type": "update", "revision": 1, "full": True, "layers": [{"name": "no key"}]}, E.BAD_FIELD),
        ({"v": V, "type": "update", "revision": 1, "full": True, "layers": [{"key": "k"}] * 2000}, E.TOO_LARGE),
        (
            {"v": V, "type": "update", "revision": 1, "full": True, "layers": [{"key": "k", "name": "x" * 9000}]},
            E.TOO_LARGE,
        ),
        ({"v": V, "type": "update", "revision": 1, "full": True, "background": {"strength": -0.1}}, E.BAD_FIELD),
        ({"v": V, "type": "update", "revision": 1, "full": True, "background": {"image": {"part": "0"}}}, E.BAD_FIELD),
        ({"v": V, "type": "update", "revision": 0, "full": True}, E.BAD_FIELD),
    ],
)
def test_malformed_headers_raise_with_code(head, code):
    with pytest.raises(ProtocolError) as e:
        _decode(head)
    assert e.value.code == code and e.value.message


def test_too_many_parts():
    with pytest.raises(ProtocolError) as e:
        _decode({"v": V, "type": "ping"}, [b""] * (protocol.MAX_PARTS + 1))
    assert e.value.code == E.TOO_LARGE


def test_unknown_fields_are_tolerated_for_forward_compatibility():
    assert _decode({"v": V, "type": "ping", "trace": {"a": 1}}).type == "ping"


@pytest.mark.parametrize(
    "address,local",
    [
        ("tcp://127.0.0.1:7555", True),
        ("tcp://127.3.2.1:1", True),
        ("tcp://localhost:7555", True),
        ("tcp://[::1]:7555", True),
        ("ipc:///tmp/smd.sock", True),
        ("tcp://0.0.0.0:7555", False),
        ("tcp://*:7555", False),
        ("tcp://192.168.1.5:7555", False),
        ("tcp://eth0:7555", False),
        ("tcp://127.0.0.1.evil.example:1", False),
    ],
)
def test_local_addresses(address, local):
    assert protocol.is_local_address(address) is local


@pytest.mark.parametrize(
    "text,endpoint",
    [
        ("127.0.0.1:7555", "tcp://127.0.0.1:7555"),
        ("127.0.0.1", "tcp://127.0.0.1:7555"),
        ("localhost", "tcp://localhost:7555"),
        ("gpu-box:7000", "tcp://gpu-box:7000"),
        ("gpu-box.studio.lan", "tcp://gpu-box.studio.lan:7555"),
        ("tcp://gpu-box:7556", "tcp://gpu-box:7556"),
        ("tcp://10.0.0.2", "tcp://10.0.0.2:7555"),
        ("  TCP://10.0.0.2:1  ", "tcp://10.0.0.2:1"),
        ("[::1]:7555", "tcp://[::1]:7555"),
        ("[::1]", "tcp://[::1]:7555"),
        ("::1", "tcp://[::1]:7555"),
        ("tcp://[fe80:0:0::1]:9", "tcp://[fe80::1]:9"),
        ("ipc:///tmp/smd.sock", "ipc:///tmp/smd.sock"),
        ("tcp://*:7555", "tcp://*:7555"),
        ("0.0.0.0", "tcp://0.0.0.0:7555"),
        ("tcp://eth0:7555", "tcp://eth0:7555"),
    ],
)
def test_addresses_people_write_become_endpoints(text, endpoint):
    assert protocol.normalize_address(text) == endpoint
    assert protocol.normalize_address(endpoint) == endpoint  # idempotent
    assert protocol.is_ipv6_endpoint(endpoint) == ("[" in endpoint)


@pytest.mark.parametrize(
    "text,why",
    [
        ("http://gpu-box:7555", "http:// is not spoken here"),
        ("https://gpu-box", "https:// is not spoken here"),
        ("udp://1.2.3.4:5", "udp://"),
        ("127.0.0.1:", "no port after ':'"),
        ("127.0.0.1:99999", "from 1 to 65535"),
        ("gpu-box:port", "from 1 to 65535"),
        ("gpu box", "is not a host name"),
        ("[::1", "is not a daemon address"),
        ("[nope]:1", "not a valid IPv6 address"),
        ("tcp://h:1/", "from 1 to 65535"),
        ("", "no daemon address"),
        ("   ", "no daemon address"),
        ("ipc://", "no socket path"),
        ("tcp://", "is not a host name"),
    ],
)
def test_anything_else_is_one_sentence_saying_what_an_address_looks_like(text, why):
    with pytest.raises(ValueError) as e:
        protocol.normalize_address(text)
    msg = str(e.value)
    assert why in msg and "\n" not in msg, msg
    assert msg.endswith(
        "an address looks like 127.0.0.1:7555, gpu-box (port 7555), tcp://gpu-box:7555, "
        "[::1]:7555 or ipc:///tmp/smd.sock"
    )


def test_client_takes_addresses_as_people_write_them():
    from smd_daemon.client import Client

    c = Client("127.0.0.1:9", name="plain")
    assert c.address == "tcp://127.0.0.1:9" and not c.compress_planes
    c.close()
    with pytest.raises(ValueError, match="is not spoken here"):
        Client("http://127.0.0.1:9")


BLOCKER = r"""
import sys
BLOCKED = ("torch", "numpy", "PIL", "diffusers", "transformers", "smd_daemon.engine", "smd_daemon.server")
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError("blocked in this test: " + name)
sys.meta_path.insert(0, Blocker())
import importlib
client = importlib.import_module(sys.argv[1] + ".client")
protocol = importlib.import_module(sys.argv[1] + ".protocol")
assert client.protocol is protocol
c = client.Client("tcp://127.0.0.1:9", name="isolated")
c.connect()
c.set_scene(64, 64, [client.Layer("1", "a fox", bytes(64 * 64))])
c.poll(timeout_ms=10)
c.close()
print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy", "PIL")))
"""


def test_protocol_and_client_import_without_torch_numpy_or_pillow(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(
        [sys.executable, "-c", BLOCKER, "smd_daemon"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "imported: []" in r.stdout


def test_vendored_copies_work_as_a_package_of_their_own(tmp_path):
    # What the Krita installer does: the two files, unchanged, in another package.
    pkg = tmp_path / "vendored_smd"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in VENDORED:
        shutil.copyfile(os.path.join(ROOT, "smd_daemon", name), pkg / name)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-c", BLOCKER, "vendored_smd"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "imported: []" in r.stdout


def test_client_is_non_blocking_without_a_daemon():
    from smd_daemon.client import CONNECTING, Client, ClientError, Layer

    c = Client("tcp://127.0.0.1:9", name="nobody", timeout=1.0)
    try:
        c.connect()
        t0 = time.monotonic()
        events = c.poll(timeout_ms=0)
        assert time.monotonic() - t0 < 0.5
        assert c.state == CONNECTING and events and events[0].state == CONNECTING
        with pytest.raises(ClientError):
            c.update_scene([])  # before any scene
        rev = c.set_scene(64, 64, [Layer("1", "a fox", bytes(64 * 64))])
        assert rev == 1 and c.update_scene([], seed=5) == 2
        with pytest.raises(ClientError):
            c.set_scene(64, 64, [Layer("1", "a fox", bytes(10))])
        with pytest.raises(ClientError):
            c.start_live("gif")
        assert isinstance(c.fileno(), int)
    finally:
        c.close()


def test_no_request_can_name_a_file_or_model_on_the_server():
    def names(fields):
        for name, spec in fields.items():
            yield name
            if spec.fields:
                yield from names(spec.fields)
            if spec.items is not None and spec.items.fields:
                yield from names(spec.items.fields)

    every = {n for fields in protocol.REQUESTS.values() for n in names(fields)}
    assert not {n for n in every if any(w in n for w in ("path", "file", "dir", "model", "url", "device"))}, every
