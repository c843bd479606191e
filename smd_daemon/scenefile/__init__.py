"""Reading layered scenes from files: OpenRaster (``.ora``) and JSON.

Both end as a :class:`~smd_daemon.engine.scene.Scene`; layered files are read
with the one layer-name grammar (:mod:`smd_daemon.grammar`), so a file reads
exactly as the same layers would in Krita. The formats and limits are
documented in ``docs/render.md``.

- ``ora``: OpenRaster files, each layer as the artist sees it in Krita;
- ``jsonscene``: JSON scenes (prompts with mask images);
- ``common``: what both share: command-line overrides, the output size,
  limits, image decoding and the checks made before any pixels are decoded;
- ``dockersettings``: the SMD Live docker's settings saved in a ``.kra``,
  which ``render`` compares with its own.

Every problem is a :class:`SceneError` with a one-line message.
"""

from __future__ import annotations

import os

from smd_daemon.engine.scene import SceneError

from .common import LoadedScene, Overrides, output_size  # noqa: F401
from .jsonscene import read_json
from .ora import read_ora


def load_scene(path: str, overrides: Overrides | None = None) -> LoadedScene:
    """Read ``path`` (``.ora`` or ``.json``) into a validated scene."""
    overrides = overrides or Overrides()
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise SceneError(f"{path}: no such file")
    if ext == ".ora":
        loaded = read_ora(path, overrides)
    elif ext == ".json":
        loaded = read_json(path, overrides)
    elif ext == ".kra":
        raise SceneError(
            f"{path}: a Krita document: export it as OpenRaster (File > Export..., .ora) beside it and render "
            f"that (render reads the SMD Live docker's settings from the .kra beside it)"
        )
    else:
        raise SceneError(f"{path}: unknown scene type {ext or '(no extension)'!r}; use an .ora or .json file")
    loaded.scene.validate()  # again: the background image has been added since
    return loaded
