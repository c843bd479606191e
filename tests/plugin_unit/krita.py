"""A small fake of Krita's Python API for unit tests of the plugin.

Like real Krita 5.1 (each fact checked there, see tests/krita):
childNodes() lists bottom to top and includes masks; RGBA/U8 pixelData is
B,G,R,A (U16: 16-bit little-endian, same order); a transparency mask's
pixelData is one byte per pixel; a paint layer's projection has its
transparency masks applied; setPixelData is ignored on groups; adding or
removing a layer is an undo step, marks the document modified and (adding)
activates the new layer a moment later (``Krita.process_queued()``);
setPixelData, visibility, opacity and lock changes are no undo steps;
a filter layer's projection is the whole picture below it; an annotation
marks the document modified.
"""

import uuid

from PyQt5.QtCore import QByteArray, QRect
from PyQt5.QtGui import QImage
from PyQt5.QtWidgets import QDockWidget

_BPP = {"U8": 4, "U16": 8}
_MASK_KINDS = ("transparencymask", "filtermask", "selectionmask", "transformmask", "colorizemask")


class _Uuid:
    def __init__(self):
        self._s = "{%s}" % uuid.uuid4()

    def toString(self):
        return self._s


class Node:
    def __init__(self, doc, name, kind):
        self.doc, self._name, self._type = doc, name, kind
        self._visible, self._locked, self._opacity = True, False, 255
        self._pass_through = False
        self._uuid = _Uuid()
        self._children, self._parent = [], None
        self._px = {}  # (x, y) -> pixel bytes, only where painted (masks: one byte)

    # identity and flags
    def name(self):
        return self._name

    def setName(self, n):
        self._name = n

    def type(self):
        return self._type

    def visible(self):
        return self._visible

    def setVisible(self, v):
        self._visible = v

    def locked(self):
        return self._locked

    def setLocked(self, v):
        self._locked = v

    def opacity(self):
        return self._opacity

    def setOpacity(self, v):
        self._opacity = int(v)

    def passThroughMode(self):
        return self._pass_through

    def setPassThroughMode(self, v):
        self._pass_through = bool(v)

    def uniqueId(self):
        return self._uuid

    def childNodes(self):
        return list(self._children)

    def parentNode(self):
        return self._parent

    def addChildNode(self, child, above):
        i = 0 if above is None else self._children.index(above) + 1
        child._parent = self
        self._children.insert(i, child)
        self.doc._modified = True
        app = Krita.instance()
        app.undo_stack.append(("add", child))
        if child._type not in _MASK_KINDS:
            app._queued.append(lambda: self.doc.setActiveNode(child))
        return True

    def remove(self):
        self._parent._children.remove(self)
        Krita.instance().undo_stack.append(("remove", self, self._parent))
        self._parent = None
        self.doc._modified = True
        return True

    # pixels
    def _is_mask(self):
        return self._type in _MASK_KINDS

    def _mask_value(self, x, y):
        return self._px.get((x, y), b"\x00")[0]

    def _pixels(self):
        """What the node shows: a group its visible children, a layer its pixels through its masks,
        a filter layer every visible layer below it (Krita filters them: the whole picture below)."""
        if self._type == "filterlayer":
            out = {}
            for c in self._parent._children[: self._parent._children.index(self)]:
                if c._visible and not c._is_mask():
                    out.update({k: v for k, v in c._pixels().items() if any(v)})
            return out
        if self._type == "grouplayer":
            out = {}
            for c in self._children:
                if c._visible and not c._is_mask():
                    for k, v in c._pixels().items():
                        if any(v):
                            out[k] = v
            return out
        masks = [m for m in self._children if m._type == "transparencymask" and m._visible]
        if not masks:
            return self._px
        bpp = _BPP[self.doc._depth]
        out = {}
        for (x, y), v in self._px.items():
            a = v[bpp - 1]
            for m in masks:
                a = int(a * m._mask_value(x, y) / 255 + 0.5)
            out[(x, y)] = v[: bpp - 1] + bytes([a])
        return out

    def _read(self, px, x, y, w, h, bpp):
        zero = bytes(bpp)
        return QByteArray(b"".join(px.get((i, j), zero) for j in range(y, y + h) for i in range(x, x + w)))

    def pixelData(self, x, y, w, h):
        if self._type == "grouplayer":
            return QByteArray()
        return self._read(self._px, x, y, w, h, 1 if self._is_mask() else _BPP[self.doc._depth])

    def projectionPixelData(self, x, y, w, h):
        return self._read(self._pixels(), x, y, w, h, _BPP[self.doc._depth])

    def setPixelData(self, data, x, y, w, h):
        if self._type == "grouplayer":
            return False
        bpp = 1 if self._is_mask() else _BPP[self.doc._depth]
        data = bytes(data)
        assert len(data) == w * h * bpp, "wrong size for setPixelData"
        for j in range(h):
            for i in range(w):
                o = (j * w + i) * bpp
                self._px[(x + i, y + j)] = data[o : o + bpp]
        self.doc._pixels_written += 1
        return True

    def bounds(self):
        if self._is_mask():
            pts = [k for k, v in self._px.items() if v[0]]
        else:
            bpp = _BPP[self.doc._depth]
            pts = [k for k, v in self._pixels().items() if (v[3] if bpp == 4 else v[6] or v[7])]
        if not pts:
            return QRect()
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return QRect(min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1)

    def thumbnail(self, w, h):
        # Any image that changes when the pixels change will do for the plugin.
        img = QImage(w, h, QImage.Format_ARGB32)
        img.fill(hash(tuple(sorted(self._px.items()))) & 0xFFFFFFFF)
        return img


class Document:
    def __init__(self, w, h, model="RGBA", depth="U8"):
        self._w, self._h, self._model, self._depth = w, h, model, depth
        self._modified = False
        self._annotations = {}
        self._pixels_written = 0
        self._root = Node(self, "root", "grouplayer")
        self._active = None
        self._file = ""
        self.refreshes = 0

    def width(self):
        return self._w

    def height(self):
        return self._h

    def colorModel(self):
        return self._model

    def colorDepth(self):
        return self._depth

    def rootNode(self):
        return self._root

    def createNode(self, name, kind):
        return Node(self, name, kind)

    def createGroupLayer(self, name):
        return Node(self, name, "grouplayer")

    def modified(self):
        return self._modified

    def setModified(self, v):
        self._modified = v

    def waitForDone(self):
        pass

    def fileName(self):
        return self._file

    def setActiveNode(self, n):
        self._active = n

    def activeNode(self):
        return self._active

    def annotation(self, kind):
        return QByteArray(self._annotations.get(kind, b""))

    def refreshProjection(self):
        self.refreshes += 1

    def setAnnotation(self, kind, description, data):
        self._annotations[kind] = bytes(data)
        self._modified = True


class _Action:
    def __init__(self, app, name):
        self.app, self.name = app, name

    def trigger(self):
        if self.name == "edit_undo" and self.app.undo_stack:
            step = self.app.undo_stack.pop()
            if step[0] == "add":
                node = step[1]
                node._parent._children.remove(node)
                node._parent = None
            else:
                _, node, parent = step
                parent._children.append(node)
                node._parent = parent


class _Window:
    def __init__(self, app):
        self.app = app

    def qwindow(self):
        return self.app.qwindow  # a test may give Krita a main window


class Krita:
    _inst = None

    def __init__(self):
        self._doc = None
        self._docs = []  # open documents
        self.qwindow = None
        self.settings = {}
        self.undo_stack = []
        self._queued = []

    @classmethod
    def instance(cls):
        if cls._inst is None:
            cls._inst = Krita()
        return cls._inst

    def process_queued(self):
        """Deliver what real Krita delivers through queued signals (layer activation)."""
        queued, self._queued = self._queued, []
        for fn in queued:
            fn()

    def version(self):
        return "5.2.2"

    def addExtension(self, ext):
        self.extensions = getattr(self, "extensions", []) + [ext]

    def addDockWidgetFactory(self, f):
        self.dockers = getattr(self, "dockers", []) + [f]

    def activeDocument(self):
        return self._doc

    def documents(self):
        return list(self._docs)

    def windows(self):
        return [_Window(self)]

    def activeWindow(self):
        return _Window(self)

    def action(self, name):
        return _Action(self, name)

    def readSetting(self, group, key, default):
        return self.settings.get((group, key), default)

    def writeSetting(self, group, key, value):
        self.settings[(group, key)] = value


class Extension:
    def __init__(self, parent=None):
        self.parent = parent


class DockWidget(QDockWidget):
    pass


class DockWidgetFactoryBase:
    DockRight = 2


class DockWidgetFactory:
    def __init__(self, *a):
        self.args = a
