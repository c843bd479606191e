"""SMD Live: paint on layers named with prompts, watch StreamMultiDiffusion draw them.

Imports only the standard library, PyQt5 and pyzmq (vendored protocol and
client from the daemon). Where this Krita cannot run it, a docker says why
instead of a script error.
"""

import os
import sys

from . import zmq_folder

SUPPORTED_KRITA = ("5.1", "5.2")
_DEPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deps")
zmq_folder.put_first(_DEPS)  # the vendored pyzmq for this Python and platform, before any other


def _problem(version: str):
    if not version.startswith(SUPPORTED_KRITA):
        return f"SMD Live supports Krita {' and '.join(SUPPORTED_KRITA)}; this is Krita {version}."
    try:
        import PyQt5  # noqa: F401
    except ImportError:
        return "SMD Live needs PyQt5 (Krita 5); this Krita's Python has no PyQt5."
    try:
        import zmq  # noqa: F401
    except ImportError as e:
        return zmq_folder.missing(_DEPS, e)
    try:
        from .transport import client  # noqa: F401
    except ImportError as e:
        return f"SMD Live is incompletely installed ({e}): run install.py again."
    return None


def _register():
    from krita import DockWidgetFactory, DockWidgetFactoryBase, Krita

    app = Krita.instance()
    problem = _problem(app.version())
    if problem is None:
        from .docker import DOCKER_ID, SMDDocker
        from .extension import SMDExtension

        app.addExtension(SMDExtension(app))
        app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, SMDDocker))
        return
    sys.stderr.write(problem + "\n")
    app.addDockWidgetFactory(
        DockWidgetFactory("smd_live_docker", DockWidgetFactoryBase.DockRight, _message_docker(problem))
    )


def _message_docker(problem: str):
    """A docker that only shows ``problem``, built with whichever PyQt this Krita has."""
    from krita import DockWidget

    try:
        from PyQt5.QtWidgets import QLabel
    except ImportError:  # Krita 6: Qt 6
        from PyQt6.QtWidgets import QLabel

    class UnsupportedDocker(DockWidget):
        def __init__(self):
            super().__init__()
            self.setWindowTitle("SMD Live")
            label = QLabel(problem)
            label.setObjectName("smd_status")
            label.setWordWrap(True)
            self.setWidget(label)

        def canvasChanged(self, canvas):
            pass

    return UnsupportedDocker


_register()
