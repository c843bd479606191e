"""Every call into Krita's API lives in this package, so the rest of the
plugin can be tested against a fake ``krita`` module and survives API
changes in one place. (The docker and the extension subclass Krita's
``DockWidget`` and ``Extension``, which Krita requires; ``__init__.py``
registers them.)

- ``document``: documents, the layer tree, settings, the active layer;
- ``reading``: layers as the artist sees them, as alpha planes, the canvas image and control layers' pictures;
- ``preview``: the preview layer and applied results;
- ``saving``: keeping the preview out of saved files.
"""

from .document import (
    ANNOTATION,
    PREVIEW_NAME,
    RESULT_NAME,
    Layer,
    Unsupported,
    activate,
    active_document,
    active_uid,
    app,
    canvas_size,
    color_problem,
    documents,
    find_node,
    fingerprint,
    is_open,
    keep_unmodified,
    layers,
    load_document_settings,
    own_layer_uid,
    read_setting,
    save_document_settings,
    write_setting,
)
from .preview import (
    ActiveKeeper,
    apply_frame,
    find_preview,
    hide_preview,
    next_result_name,
    set_preview_look,
    write_preview,
)
from .reading import read_alpha, read_composite, read_picture, scale_table
from .saving import SaveGuard
