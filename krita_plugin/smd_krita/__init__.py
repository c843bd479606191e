"""SMD Live: paint on layers named with prompts, watch StreamMultiDiffusion draw them.

Imports only the standard library, the Qt binding Krita runs on (PyQt5 or
PyQt6, chosen in ``qt.py``) and pyzmq (vendored protocol and client from the
daemon). Where this Krita cannot run it, a docker says why instead of a
script error.
"""

import os
import sys

from . import zmq_folder

SUPPORTED_KRITA = ("5.1", "5.2", "5.3", "6")  # a major.minor, or a major for all its releases
_DEPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deps")
zmq_folder.put_first(_DEPS)  # the vendored pyzmq for this Python and platform, before any other


def _supported(version: str) -> bool:
    parts = version.split(".")
    return parts[0] in SUPPORTED_KRITA or ".".join(parts[:2]) in SUPPORTED_KRITA


def _problem(version: str):
    if not _supported(version):
        return f"SMD Live supports Krita 5.1, 5.2, 5.3 and 6.x; this is Krita {version}."
    try:
        from . import qt  # noqa: F401
    except ImportError as e:  # a Qt that is neither 5 nor 6, or a Krita without its PyQt
        return f"SMD Live cannot use this Krita's Qt: {e}"
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
    from krita import (  # pyright: ignore[reportMissingImports]  (Krita's own module: it exists only inside Krita)
        DockWidgetFactory,
        DockWidgetFactoryBase,
        Krita,
    )

    app = Krita.instance()
    problem = _problem(app.version())
    if problem is None:
        from .docker import DOCKER_ID, SMDDocker
        from .extension import SMDExtension

        app.addExtension(SMDExtension(app))
        app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockPosition.DockRight, SMDDocker))
        return
    sys.stderr.write(problem + "\n")
    try:
        docker = _message_docker(problem)
    except ImportError:  # no Qt binding the plugin knows: the line above is all it can say
        return
    app.addDockWidgetFactory(DockWidgetFactory("smd_live_docker", DockWidgetFactoryBase.DockPosition.DockRight, docker))


def _message_docker(problem: str):
    """A docker that only shows ``problem``, built with whichever PyQt this Krita has."""
    from krita import DockWidget  # pyright: ignore[reportMissingImports]  (as above)

    from .qt import QLabel

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
