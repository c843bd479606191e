"""The engine room: pure computation on diffusers components.

Nothing here knows about sockets or Krita. Files are touched only to load
a model (``models.py``, and ``tiny.py`` for the offline presets); scenes,
images and frames come and go as arrays.
"""

from smd_daemon.engine.models import Components, ModelLoadError, load_model
from smd_daemon.engine.scene import Background, Region, Scene, SceneError

__all__ = ["Background", "Components", "ModelLoadError", "Region", "Scene", "SceneError", "load_model"]
