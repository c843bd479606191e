"""The engine room: pure computation on diffusers components.

Nothing here knows about sockets, files or Krita.
"""

from smd_daemon.engine.models import Components, ModelLoadError, load_model
from smd_daemon.engine.scene import Background, Region, Scene, SceneError

__all__ = ["Background", "Components", "ModelLoadError", "Region", "Scene", "SceneError", "load_model"]
