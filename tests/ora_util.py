"""Building OpenRaster files for the tests, and running a script inside real Krita."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import zipfile
from xml.sax.saxutils import quoteattr

import numpy as np
import pytest
from PIL import Image


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def rgba(w: int, h: int, color=(200, 30, 30), box=None, alpha=255) -> np.ndarray:
    """A w x h layer, transparent except ``box`` = (x0, y0, x1, y1) (default: all of it)."""
    a = np.zeros((h, w, 4), np.uint8)
    x0, y0, x1, y1 = box or (0, 0, w, h)
    a[y0:y1, x0:x1, :3] = color
    a[y0:y1, x0:x1, 3] = alpha
    return a


class Layer:
    def __init__(self, name, pixels=None, x=0, y=0, visible=True, opacity=1.0, src=None):
        self.name, self.pixels, self.x, self.y = name, pixels, x, y
        self.visible, self.opacity, self.src = visible, opacity, src


class Group:
    """A group; ``isolation="isolate"`` is Krita's normal group, anything else (or None: no attribute) a
    pass-through group, as Krita reads them."""

    def __init__(self, name, children, visible=True, x=0, y=0, opacity=1.0, isolation="isolate"):
        self.name, self.children, self.visible, self.x, self.y = name, children, visible, x, y
        self.opacity, self.isolation = opacity, isolation


def make_ora(path, w, h, stack, *, stack_xml=None, members=None) -> str:
    """Write an .ora; ``stack`` lists Layers/Groups top first, as stack.xml does."""
    files: dict[str, bytes] = {}
    counter = [0]

    def element(item) -> str:
        vis = "visible" if item.visible else "hidden"
        if isinstance(item, Group):
            inner = "".join(element(c) for c in item.children)
            isolation = "" if item.isolation is None else f' isolation="{item.isolation}"'
            return (
                f'<stack name={quoteattr(item.name)} visibility="{vis}" x="{item.x}" y="{item.y}" '
                f'opacity="{item.opacity}"{isolation}>{inner}</stack>'
            )
        src = item.src
        if src is None:
            src = f"data/layer{counter[0]}.png"
            counter[0] += 1
            files[src] = png_bytes(item.pixels)
        return (
            f'<layer name={quoteattr(item.name)} src={quoteattr(src)} x="{item.x}" y="{item.y}" '
            f'visibility="{vis}" opacity="{item.opacity}" composite-op="svg:src-over"/>'
        )

    xml = stack_xml
    if xml is None:
        xml = (
            f'<?xml version=\'1.0\' encoding=\'UTF-8\'?><image w="{w}" h="{h}" version="0.0.5">'
            f"<stack>{''.join(element(i) for i in stack)}</stack></image>"
        )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "image/openraster")  # stored first, as the spec asks
        if xml is not False:
            z.writestr("stack.xml", xml)
        for name, data in {**files, **(members or {})}.items():
            z.writestr(name, data)
    return str(path)


def kritarunner(tmp_path, script: str, function: str, **env_vars) -> subprocess.CompletedProcess:
    """Run ``function`` of ``script`` inside Krita (no window) with a private HOME."""
    (tmp_path / "krita_script.py").write_text(script)
    home = tmp_path / "home"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",  # Krita's Python must find the system python3 first
        "QT_QPA_PLATFORM": "offscreen",
        "PYTHONPATH": str(tmp_path),
        "HOME": str(home),
        **env_vars,
    }
    for var, sub in [
        ("XDG_CONFIG_HOME", "cfg"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_RUNTIME_DIR", "run"),
        ("TMPDIR", "tmp"),
    ]:
        (home / sub).mkdir(parents=True)
        env[var] = str(home / sub)
    (home / "run").chmod(0o700)
    return subprocess.run(
        ["kritarunner", "-s", "krita_script", "-f", function], env=env, capture_output=True, text=True, timeout=180
    )


# tests/run.sh installs Krita and sets SMD_REQUIRE_KRITA: there a missing Krita fails instead of skipping.
krita_missing = pytest.mark.skipif(
    not shutil.which("kritarunner") and not os.environ.get("SMD_REQUIRE_KRITA"),
    reason="Krita is not installed (tests/run.sh installs it)",
)
