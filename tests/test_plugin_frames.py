"""The plugin's side of frames that are not what it asked for: its decoder
(Qt, no numpy) allocates only for the size it expects, and its controller,
connected to a fake daemon on a real socket that sends a 1 GiB part, wrong
sizes and a PNG bomb, shows one line for each and keeps showing good frames.
Real Krita meets the same fake daemon in test_plugin_krita.py."""

from __future__ import annotations

import io

from plugin_unit import env  # noqa: F401  (Qt, the fake krita, the plugin on sys.path: first)

# isort: split
import numpy as np
import pytest
from daemon_util import free_port
from hostile_daemon import BAD, HostileDaemon, decode_bomb, png_bomb
from PIL import Image
from plugin_unit.fakes import live_controller, run_until
from smd_krita import pixels


def encoded(fmt: str, w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), (200, 40, 40), np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("encoding, fmt", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_the_decoder_reads_only_the_size_and_format_it_was_told(encoding, fmt):
    data = encoded(fmt, 96, 40)
    img = pixels.decode_frame(encoding, data, 96, 40, 3)
    assert (img.width(), img.height()) == (96, 40) and not img.isNull()
    assert pixels.decode_frame(encoding, data, 40, 96, 3).isNull()  # another size than the header's
    other = "png" if encoding != "png" else "jpeg"
    assert pixels.decode_frame(other, data, 96, 40, 3).isNull()  # sent as another format
    assert pixels.decode_frame("raw", bytes(96 * 40 * 3 - 1), 96, 40, 3).isNull()


def test_a_png_bomb_allocates_nothing_in_the_plugins_decoder():
    """A ~0.35 MB PNG whose header names 11000² pixels (QImage.fromData, the decoder before, took 440 MB more)."""
    refused, grew_mb = decode_bomb()
    assert refused and grew_mb < 50, grew_mb


@pytest.fixture
def controller(tmp_path):
    with live_controller(str(tmp_path), "a red fox") as parts:
        yield parts


def test_the_plugin_keeps_working_beside_a_hostile_daemon(controller):
    ctl, doc, fox = controller
    painted = bytes(fox.pixelData(0, 0, 64, 64))
    png_bomb()
    fake = HostileDaemon(f"tcp://127.0.0.1:{free_port()}", plan=BAD)
    fake.start()
    errors = []

    def seen(predicate):
        def check():
            if ctl.error and ctl.error not in errors:
                errors.append(ctl.error)
            return predicate()

        return check

    try:
        ctl.set_setting("address", fake.address)
        ctl.connect_daemon()
        assert run_until(seen(lambda: ctl.state == "connected")), ctl.status_text()
        ctl.set_live(True)
        # Every bad frame was sent, the 1 GiB part closed the connection, the client reconnected
        # and live mode came back with good frames.
        assert run_until(seen(lambda: "oversize" in fake.sent and fake.sent[-1] == "good"), 60), fake.sent
        assert run_until(seen(lambda: ctl.frame_event is not None and ctl.frame_event.seq > 5), 60), ctl.status_text()
    finally:
        fake.stop()
    assert len(errors) == 4 and all(e.startswith("dropped ") and "\n" not in e for e in errors), errors
    img = ctl.output.image
    assert (img.width(), img.height()) == (64, 64) and img.pixelColor(5, 5).getRgb()[:3] == (200, 40, 40)
    assert bytes(fox.pixelData(0, 0, 64, 64)) == painted  # the artist's layer untouched
