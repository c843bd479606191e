"""Plugin logic against the fake ``krita`` module (run with a Python that has PyQt5 and pyzmq)."""

import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(REPO, "krita_plugin"), REPO]

from PyQt5.QtGui import QImage  # noqa: E402
from PyQt5.QtWidgets import QApplication  # noqa: E402

APP = QApplication.instance() or QApplication(["unit", "-platform", "offscreen"])

import krita  # noqa: E402  (the fake)
from smd_krita import kritaapi, live, settings  # noqa: E402


def pause():
    """Long enough for a held-back change to be sent."""
    time.sleep(max(live.DEBOUNCE_S, live.MIN_GAP_S) + 0.01)


def bgra(b, g, r, a, n):
    return bytes((b, g, r, a)) * n


def new_doc(w=16, h=16, model="RGBA", depth="U8"):
    app = krita.Krita.instance()
    app._doc = doc = krita.Document(w, h, model, depth)
    app.undo_stack.clear()
    root = doc.rootNode()
    bg = doc.createNode("Background", "paintlayer")
    root.addChildNode(bg, None)
    bg.setPixelData(bgra(255, 255, 255, 255, w * h), 0, 0, w, h)
    doc.setModified(False)
    return doc, bg


def add(doc, name, parent=None, kind="paintlayer", above="top"):
    parent = parent or doc.rootNode()
    node = doc.createNode(name, kind)
    kids = parent.childNodes()
    parent.addChildNode(node, kids[-1] if kids and above == "top" else None)
    return node


class Layers(unittest.TestCase):
    def test_bottom_to_top_groups_hidden_preview(self):
        doc, bg = new_doc()
        fox = add(doc, "a fox")
        grp = add(doc, "a house", kind="grouplayer")
        win = add(doc, "a window", parent=grp)
        grp.setVisible(False)
        add(doc, kritaapi.PREVIEW_NAME)
        add(doc, "mask", parent=fox, kind="transparencymask")
        got = [(l.name, l.kind, l.visible, l.depth) for l in kritaapi.layers(doc)]
        self.assertEqual(got, [("Background", "paintlayer", True, 0), ("a fox", "paintlayer", True, 0),
                               ("a house", "grouplayer", False, 0), ("a window", "paintlayer", False, 1)])
        self.assertTrue(win.visible())  # effective visibility comes from the parent, the node is untouched

    def test_alpha_clipped_to_canvas_and_scaled(self):
        doc, _ = new_doc(16, 16)
        fox = add(doc, "a fox")
        fox.setPixelData(bgra(0, 0, 255, 255, 8 * 16), -4, 0, 8, 16)  # half outside on the left
        layer = [l for l in kritaapi.layers(doc) if l.name == "a fox"][0]
        a = kritaapi.read_alpha(doc, layer, 16, 16)
        self.assertEqual(len(a), 256)
        self.assertEqual(a[0:4], b"\xff" * 4)
        self.assertEqual(a[4:16], b"\x00" * 12)
        half = kritaapi.read_alpha(doc, layer, 8, 8)  # document larger than the output
        self.assertEqual(len(half), 64)
        self.assertEqual(half[0], 255)
        self.assertEqual(half[5], 0)
        double = kritaapi.read_alpha(doc, layer, 32, 32)  # smaller than the output
        self.assertEqual((double[0], double[6], double[20]), (255, 255, 0))

    def test_group_alpha_is_its_projection(self):
        doc, _ = new_doc(8, 8)
        grp = add(doc, "a house", kind="grouplayer")
        w = add(doc, "Paint Layer 2", parent=grp)
        w.setPixelData(bgra(1, 2, 3, 255, 4), 6, 6, 2, 2)
        layer = [l for l in kritaapi.layers(doc) if l.name == "a house"][0]
        a = kritaapi.read_alpha(doc, layer, 8, 8)
        self.assertEqual(a[6 * 8 + 6], 255)
        self.assertEqual(sum(1 for v in a if v), 4)

    def test_sixteen_bit_alpha_and_unsupported_models(self):
        doc = krita.Document(8, 8, "RGBA", "U16")
        krita.Krita.instance()._doc = doc
        n = add(doc, "a fox")
        n.setPixelData(bytes([0, 0, 0, 0, 0, 0, 0xFF, 0xFF]) * 8, 0, 0, 8, 1)
        a = kritaapi.read_alpha(doc, kritaapi.layers(doc)[0], 8, 8)
        self.assertEqual(a[:8], b"\xff" * 8)
        self.assertEqual(a[8:], bytes(56))
        f32 = krita.Document(8, 8, "RGBA", "F32")
        self.assertIn("Convert Image Color Space", kritaapi.color_problem(f32))
        gray = krita.Document(8, 8, "GRAYA", "U8")
        self.assertEqual(kritaapi.color_problem(gray), "")
        self.assertIn("RGB document", kritaapi.color_problem(gray, writing=True))
        with self.assertRaises(kritaapi.Unsupported):
            kritaapi.write_preview(gray, QImage(8, 8, QImage.Format_RGB888))

    def test_composite_is_rgb_over_white(self):
        doc, bg = new_doc(4, 4)
        bg.setPixelData(bytes(4 * 16), 0, 0, 4, 4)  # fully transparent background
        red = add(doc, "Paint Layer 2")
        red.setPixelData(bgra(0, 0, 255, 255, 2), 0, 0, 2, 1)  # B,G,R,A: pure red
        layers = kritaapi.layers(doc)
        rgb = kritaapi.read_composite(doc, layers, 4, 4)
        self.assertEqual(rgb[:3], b"\xff\x00\x00")
        self.assertEqual(rgb[6:9], b"\xff\xff\xff")


class Writing(unittest.TestCase):
    def test_preview_on_top_locked_scaled_not_modifying(self):
        doc, bg = new_doc(8, 8)
        add(doc, "a fox")
        frame = QImage(bytes([10, 20, 30]) * 16, 4, 4, 12, QImage.Format_RGB888).copy()
        doc.setModified(False)
        node = kritaapi.write_preview(doc, frame)
        self.assertFalse(doc.modified())
        self.assertEqual(doc.rootNode().childNodes()[-1].name(), kritaapi.PREVIEW_NAME)
        self.assertTrue(node.locked())
        self.assertEqual(bytes(node.pixelData(0, 0, 8, 8)), bgra(30, 20, 10, 255, 64))
        add(doc, "new on top")  # the artist adds a layer: the preview goes back on top
        kritaapi.write_preview(doc, frame)
        names = [n.name() for n in doc.rootNode().childNodes()]
        self.assertEqual(names, ["Background", "a fox", "new on top", kritaapi.PREVIEW_NAME])
        self.assertTrue(kritaapi.remove_preview(doc))
        self.assertIsNone(kritaapi.find_preview(doc))
        self.assertFalse(kritaapi.remove_preview(doc))

    def test_apply_is_one_undoable_new_layer(self):
        doc, bg = new_doc(4, 4)
        before = bytes(bg.pixelData(0, 0, 4, 4))
        frame = QImage(bytes([1, 2, 3]) * 16, 4, 4, 12, QImage.Format_RGB888).copy()
        node = kritaapi.apply_frame(doc, frame)
        self.assertTrue(node.name().startswith(kritaapi.RESULT_NAME))
        self.assertEqual(bytes(node.pixelData(0, 0, 1, 1)), bgra(3, 2, 1, 255, 1))
        krita.Krita.instance().action("edit_undo").trigger()
        self.assertEqual([n.name() for n in doc.rootNode().childNodes()], ["Background"])
        self.assertEqual(bytes(bg.pixelData(0, 0, 4, 4)), before)


class Settings(unittest.TestCase):
    def test_document_settings_round_trip_and_bad_values(self):
        doc, _ = new_doc()
        kritaapi.save_document_settings(doc, {"seed": 7, "steps": 3})
        self.assertEqual(kritaapi.load_document_settings(doc), {"seed": 7, "steps": 3})
        doc.setAnnotation(kritaapi.ANNOTATION, "", b"not json")
        self.assertEqual(kritaapi.load_document_settings(doc), {})
        s = settings.clean({"steps": "999", "seed": "x", "background_source": "moon", "strength": 3})
        self.assertEqual((s["steps"], s["seed"], s["background_source"], s["strength"]), (50, 0, "canvas", 1.0))

    def test_global_settings_persist(self):
        settings.save_global({**settings.DEFAULTS, "address": "tcp://10.0.0.2:7555"})
        self.assertEqual(settings.load_global()["address"], "tcp://10.0.0.2:7555")

    def test_output_size_follows_aspect_and_limit(self):
        self.assertEqual(live.output_size(2048, 1024, 512), (512, 256))
        self.assertEqual(live.output_size(1000, 3000, 768), (256, 768))
        self.assertEqual(live.output_size(4000, 4000, 4096, max_side=1024), (1024, 1024))
        self.assertEqual(live.output_size(100, 10000, 512), (64, 512))


class Compatibility(unittest.TestCase):
    def test_unsupported_krita_is_named_in_words(self):
        import smd_krita
        self.assertIsNone(smd_krita._problem("5.2.2"))
        self.assertIn("this is Krita 6.0.0", smd_krita._problem("6.0.0"))
        self.assertIn("this is Krita 4.4.8", smd_krita._problem("4.4.8"))

    def test_unsupported_krita_gets_a_docker_saying_so(self):
        import smd_krita
        app = krita.Krita.instance()
        app.dockers = []
        app.version = lambda: "6.0.0"
        try:
            smd_krita._register()
        finally:
            del app.version
        docker_cls = app.dockers[-1].args[2]
        widget = docker_cls()
        self.assertIn("supports Krita 5.1 and 5.2", widget.widget().text())


class FakeClient:
    """Records what the controller sends; frames are fed by the test."""

    def __init__(self):
        self.calls, self.revision, self.limits, self.info = [], 0, {"max_side": 1024}, {}
        self.state, self.state_reason = "connected", ""

    def set_scene(self, w, h, layers, **kw):
        self.known = {l.key for l in layers}
        self.revision += 1
        self.calls.append(("full", [(l.name, l.alpha is not None) for l in layers], kw))
        return self.revision

    def update_scene(self, layers=(), order=None, **kw):
        for l in layers:  # as the daemon: a layer it has never seen must bring its alpha plane
            assert l.key in self.known or l.alpha is not None, f"new layer {l.name!r} without a plane"
        self.known.update(l.key for l in layers)
        self.revision += 1
        self.calls.append(("update", [(l.name, l.alpha is not None) for l in layers], order, kw))
        return self.revision

    def poll(self, timeout_ms=0): return []
    def fileno(self): return -1
    def start_live(self, **kw): self.calls.append(("live",))
    def stop_live(self): self.calls.append(("stop",))


class Controller(unittest.TestCase):
    def setUp(self):
        self.doc, self.bg = new_doc(16, 16)
        self.fox = add(self.doc, "a fox")
        self.fox.setPixelData(bgra(0, 0, 255, 255, 4), 0, 0, 2, 2)
        self.ctl = live.Controller()
        self.ctl.timer.stop()
        self.ctl.settings["size"] = 64
        self.client = self.ctl.client = FakeClient()
        self.ctl._follow_document()
        self.ctl.live = True

    def frame(self, rev):
        from smd_daemon.client import FrameEvent
        self.ctl._handle(FrameEvent(1, rev, 64, 64, "raw", 3, bytes(64 * 64 * 3), True, None, {}, time.time()))

    def test_full_scene_then_only_changed_layers_after_a_pause(self):
        self.ctl._scan(force=True)
        kind, layers, kw = self.client.calls[-1]
        self.assertEqual(kind, "full")
        self.assertEqual(layers, [("Background", True), ("a fox", True)])
        self.assertIsNotNone(kw["background_image"])
        n = len(self.client.calls)
        self.ctl._scan()
        self.assertEqual(len(self.client.calls), n, "nothing changed: nothing sent")
        self.fox.setPixelData(bgra(0, 0, 255, 255, 1), 5, 5, 1, 1)
        self.ctl._scan()  # seen, but held back: too soon after the last update
        self.assertEqual(len(self.client.calls), n)
        pause()
        self.ctl._scan()
        kind, layers, order, kw = self.client.calls[-1]
        self.assertEqual((kind, layers, order), ("update", [("a fox", True)], None))

    def test_first_change_after_a_pause_goes_out_at_once(self):
        self.ctl._scan(force=True)
        self.frame(self.client.revision)
        pause()
        n = len(self.client.calls)
        self.fox.setPixelData(bgra(0, 0, 255, 255, 1), 9, 9, 1, 1)
        self.ctl._scan()
        self.assertEqual(len(self.client.calls), n + 1)
        self.fox.setPixelData(bgra(0, 0, 255, 255, 1), 10, 9, 1, 1)
        self.ctl._scan()  # mid-stroke: held back
        self.assertEqual(len(self.client.calls), n + 1)

    def test_a_new_hidden_layer_still_brings_a_plane(self):
        self.ctl._scan(force=True)
        self.frame(self.client.revision)
        pause()
        cat = add(self.doc, "a cat")
        cat.setVisible(False)
        self.ctl._scan()
        kind, layers, order, kw = self.client.calls[-1]
        self.assertEqual((kind, layers), ("update", [("a cat", True)]))
        self.assertEqual(order, [l.uid for l in kritaapi.layers(self.doc)])

    def test_in_flight_updates_are_bounded(self):
        self.ctl._scan(force=True)
        sent = len(self.client.calls)
        for i in range(6):
            self.fox.setName(f"a fox {i}")
            pause()
            self.ctl._scan()
            pause()
            self.ctl._scan()
        self.assertEqual(len(self.client.calls) - sent, live.MAX_IN_FLIGHT - 1)
        self.frame(self.client.revision)  # the daemon caught up: the newest name goes out
        self.ctl._scan()
        self.assertEqual(self.client.calls[-1][1], [("a fox 5", True)])
        self.assertEqual(self.doc.rootNode().childNodes()[-1].name(), kritaapi.PREVIEW_NAME)

    def test_ignored_layers_skip_pixels_and_background_leaves_out_regions(self):
        from smd_daemon.client import SceneEvent
        self.ctl._scan(force=True)
        self.ctl._handle(SceneEvent(1, [{"name": "Background", "role": "ignored", "reason": "automatic layer name"},
                                        {"name": "a fox", "role": "region", "prompt": "a fox"}]))
        self.assertTrue(self.ctl._bg_dirty)
        pause()
        self.ctl._scan()
        kind, layers, order, kw = self.client.calls[-1]
        self.assertEqual(layers, [])
        bg = kw["background_image"]
        self.assertEqual(bg[:3], b"\xff\xff\xff", "the red fox region is not part of the canvas image")
        self.frame(self.client.revision)
        self.bg.setPixelData(bgra(0, 0, 0, 255, 1), 15, 15, 1, 1)
        pause()
        self.ctl._scan()
        pause()
        self.ctl._scan()
        kind, layers, order, kw = self.client.calls[-1]
        self.assertEqual(layers, [("Background", False)])

    def test_sketches_and_own_results_stay_out_of_the_canvas_image(self):
        from smd_daemon.client import SceneEvent
        sketch = add(self.doc, "# sketch")
        sketch.setPixelData(bgra(0, 0, 0, 255, 1), 15, 0, 1, 1)
        self.ctl._scan(force=True)
        first = self.client.calls[-1][2]["background_image"]
        px = (1 * 64 + 62) * 3  # the sketch's pixel, at the 64x64 output size
        self.assertEqual(first[px:px + 3], b"\x00\x00\x00", "before the daemon's reading, all is canvas")
        self.ctl._handle(SceneEvent(1, [{"name": "Background", "role": "ignored", "reason": "automatic layer name"},
                                        {"name": "a fox", "role": "region", "prompt": "a fox"},
                                        {"name": "# sketch", "role": "ignored", "reason": "marked with #"}]))
        pause()
        self.ctl._scan()
        bg = self.client.calls[-1][-1]["background_image"]
        self.assertEqual(bg[px:px + 3], b"\xff\xff\xff")

    def test_stopping_live_removes_preview_and_settings_reach_the_scene(self):
        self.ctl._scan(force=True)
        self.frame(self.client.revision)
        self.assertIsNotNone(kritaapi.find_preview(self.doc))
        self.ctl.set_setting("background_source", "prompt")
        self.ctl.set_setting("background_prompt", "a meadow")
        pause()
        self.ctl._scan()
        pause()
        self.ctl._scan()
        kw = self.client.calls[-1][-1]
        self.assertEqual(kw["background"]["prompt"], "a meadow")
        self.assertEqual(kritaapi.load_document_settings(self.doc)["background_prompt"], "a meadow")
        self.ctl.set_live(False)
        self.assertIsNone(kritaapi.find_preview(self.doc))
        self.assertEqual(self.client.calls[-1], ("stop",))

    def test_switching_documents_moves_the_preview_and_resends_everything(self):
        self.ctl._scan(force=True)
        self.frame(self.client.revision)
        old = self.doc
        self.assertIsNotNone(kritaapi.find_preview(old))
        other, _ = new_doc(32, 16)
        hidden = add(other, "a hidden cat")
        hidden.setVisible(False)
        hidden.setLocked(True)
        self.ctl._follow_document()
        self.assertIsNone(kritaapi.find_preview(old))
        self.ctl.settings["size"] = 128
        self.assertEqual(self.ctl.output_size(), (128, 64))
        self.ctl._scan()
        kind, layers, kw = self.client.calls[-1]
        self.assertEqual(kind, "full")
        self.assertEqual(layers, [("Background", True), ("a hidden cat", False)])
        self.assertTrue(hidden.locked())  # read, never changed

    def test_a_failing_tick_is_shown_not_raised(self):
        real = kritaapi.layers
        kritaapi.layers = lambda doc: 1 / 0
        try:
            self.ctl.tick()  # must not raise: Krita would open a modal "Script error"
        finally:
            kritaapi.layers = real
        self.assertIn("internal error", self.ctl.error)

    def test_no_document(self):
        krita.Krita.instance()._doc = None
        self.ctl._follow_document()
        self.ctl._scan(force=True)
        self.assertEqual(self.ctl.output_size(), (0, 0))


if __name__ == "__main__":
    unittest.main()
