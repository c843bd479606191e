"""The plugin as artists install it: the release zip through Krita's own plugin importer. Run by
tests/test_plugin_zip_krita.py (see scenarios.py for the form)."""

import os
import platform
import sys

from krita import Krita
from PyQt5.QtWidgets import QLineEdit

from .scenarios import controller, docker, new_document, status
from .session import click, find, node_named


def import_zip(args, out):
    """Tools > Scripts > Import Python Plugin from File...: Krita's importer module with Krita's own
    resource folder, then the plugins enabled as answering Yes to "Enable plugins now?" does."""
    from plugin_importer.plugin_importer import PluginImporter  # shipped with Krita (pykrita/)

    app = Krita.instance()
    c = out["checks"]
    c["asked_to_overwrite"] = []

    def overwrite(plugin):
        c["asked_to_overwrite"].append(plugin["name"])
        return True

    imported = PluginImporter(args["zip"], app.getAppDataLocation(), overwrite).import_all()
    for plugin in imported:
        app.writeSetting("python", "enable_%s" % plugin["name"], "true")
    c["imported"] = [p["name"] for p in imported]
    c["resources"] = app.getAppDataLocation()
    out["quit"] = True  # Krita writes its config when it quits; the artist restarts it
    yield 0.1


def _loaded(c):
    zmq = sys.modules.get("zmq")
    c["docker_present"] = docker() is not None
    c["status"] = status()
    c["zmq_file"] = getattr(zmq, "__file__", None)
    c["zmq_version"] = getattr(zmq, "__version__", None)
    c["sys_path_head"] = sys.path[:3]
    c["plugin_file"] = getattr(sys.modules.get("smd_krita"), "__file__", None)
    c["python"] = "%d.%d" % sys.version_info[:2]
    c["machine"] = platform.machine()


def zip_live(args, out):
    """After the import and a restart: which pyzmq the plugin loaded, the artist's settings, and a
    live frame from a real daemon."""
    app = Krita.instance()
    c = out["checks"]
    _loaded(c)
    c["address_in_docker"] = find("smd_address", QLineEdit).text()
    if args.get("address"):
        address = find("smd_address", QLineEdit)
        address.setText(args["address"])
        address.editingFinished.emit()
    doc, root, bg = new_document(64, "zipped")
    yield ("document active", lambda: app.activeDocument() == doc, 10)
    fox = doc.createNode("a red fox", "paintlayer")
    fox.setPixelData(bytes((0, 0, 255, 255)) * (32 * 32), 16, 16, 32, 32)
    root.addChildNode(fox, bg)
    doc.setActiveNode(fox)
    ctl = controller()
    c["preview_mode_kept"] = ctl.settings["preview_mode"]
    ctl.set_setting("preview_mode", "canvas")  # the frame on a layer, where its pixels can be read
    ctl.set_setting("size", 64)  # the smallest the engine takes: the CPU keeps up
    ctl.set_setting("steps", 2)
    click("smd_connect")
    yield ("connected", lambda: ctl.state == "connected", 90)
    c["status_connected"] = status()
    yield ("every layer read", lambda: ctl.rows and all(r.role for r in ctl.rows), 30)
    c["rows"] = [[r.name, r.role] for r in ctl.rows]
    click("smd_live")
    yield 0.5
    c["live"], c["status_live"] = ctl.live, status()
    yield ("first frame", lambda: ctl.frame_event is not None and node_named(doc, "SMD Preview"), 120)
    preview = node_named(doc, "SMD Preview")
    pixels = bytes(preview.pixelData(0, 0, 64, 64))
    c["preview_alpha_max"] = max(pixels[3::4])
    c["preview_colours"] = len(set(pixels[i : i + 3] for i in range(0, len(pixels), 4)))
    c["zmq_file_after_live"] = getattr(sys.modules.get("zmq"), "__file__", None)
    c["backend_file"] = getattr(sys.modules.get("zmq.backend.cython._zmq"), "__file__", None)
    c["pid"] = os.getpid()
    click("smd_live")
    yield 0.5
    out["quit"] = True
