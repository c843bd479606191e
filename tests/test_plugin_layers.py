"""The plugin's Krita wrapper against the fake ``krita`` module: reading layers
as the artist sees them, the preview layer and applied results."""

import krita  # the fake
import pytest
from plugin_unit import env  # noqa: F401  (Qt, the fake krita, the plugin on sys.path)
from plugin_unit.fakes import add, bgra, new_doc
from PyQt5.QtGui import QImage
from smd_krita import kritaapi


def by_name(doc):
    return {l.name: l for l in kritaapi.layers(doc)}


def frame(color=(10, 20, 30), w=4, h=4):
    return QImage(bytes(color) * (w * h), w, h, w * 3, QImage.Format_RGB888).copy()


def test_layers_bottom_to_top_groups_hidden_preview_and_masks_left_out():
    doc, bg = new_doc()
    fox = add(doc, "a fox")
    grp = add(doc, "a house", kind="grouplayer")
    win = add(doc, "a window", parent=grp)
    grp.setVisible(False)
    kritaapi.write_preview(doc, frame())  # the plugin's own preview: never input
    add(doc, "Transparency Mask 1", parent=fox, kind="transparencymask")
    got = [(l.name, l.kind, l.visible, l.depth) for l in kritaapi.layers(doc)]
    assert got == [
        ("Background", "paintlayer", True, 0),
        ("a fox", "paintlayer", True, 0),
        ("a house", "grouplayer", False, 0),
        ("a window", "paintlayer", False, 1),
    ]
    assert win.visible()  # effective visibility comes from the parent; the node is untouched
    assert by_name(doc)["a window"].parent == grp.uniqueId().toString()


def test_alpha_clipped_to_canvas_and_scaled():
    doc, _ = new_doc(16, 16)
    fox = add(doc, "a fox")
    fox.setPixelData(bgra(0, 0, 255, 255, 8 * 16), -4, 0, 8, 16)  # half outside on the left
    layer = by_name(doc)["a fox"]
    a = kritaapi.read_alpha(doc, layer, 16, 16)
    assert len(a) == 256 and a[0:4] == b"\xff" * 4 and a[4:16] == b"\x00" * 12
    half = kritaapi.read_alpha(doc, layer, 8, 8)  # document larger than the output
    assert len(half) == 64 and half[0] == 255 and half[5] == 0
    double = kritaapi.read_alpha(doc, layer, 32, 32)  # smaller than the output
    assert (double[0], double[6], double[20]) == (255, 255, 0)


def test_own_transparency_mask_is_applied():
    doc, _ = new_doc(8, 8)
    fox = add(doc, "a fox")
    fox.setPixelData(bgra(0, 0, 255, 255, 64), 0, 0, 8, 8)
    mask = add(doc, "Transparency Mask 1", parent=fox, kind="transparencymask")
    mask.setPixelData(bytes([255] * 4 + [0] * 4) * 8, 0, 0, 8, 8)  # shows the left half
    a = kritaapi.read_alpha(doc, by_name(doc)["a fox"], 8, 8)
    assert sum(1 for v in a if v) == 32, "as the artist sees it: half"
    assert a[:8] == b"\xff" * 4 + b"\x00" * 4


def test_group_opacity_and_masks_reach_the_layers_inside():
    doc, _ = new_doc(8, 8)
    grp = add(doc, "characters", kind="grouplayer")
    grp.setOpacity(128)
    cat = add(doc, "a cat", parent=grp)
    cat.setOpacity(200)
    cat.setPixelData(bgra(0, 255, 0, 255, 64), 0, 0, 8, 8)
    gmask = add(doc, "Transparency Mask 1", parent=grp, kind="transparencymask")
    gmask.setPixelData(bytes([0] * 32 + [255] * 32), 0, 0, 8, 8)  # shows the bottom half
    layer = by_name(doc)["a cat"]
    assert layer.opacities == (200, 128) and layer.factor == pytest.approx(128 / 255 * 200 / 255)
    a = kritaapi.read_alpha(doc, layer, 8, 8)
    expect = int(int(255 * 200 / 255 + 0.5) * 128 / 255 + 0.5)  # rounded at each level, as Krita does
    assert set(a[:32]) == {0} and set(a[32:]) == {expect}


def test_opacity_scaling_rounds_exactly_at_each_level():
    table = kritaapi.scale_table((128,))
    assert all(table[a] == int(a * 128 / 255 + 0.5) for a in range(256))
    assert kritaapi.scale_table((255, 255))[200] == 200
    # A layer at 37 % in a group at 61 %: what Krita 5.1 shows, one rounding per level.
    assert [kritaapi.scale_table((94, 156))[a] for a in (2, 12, 15, 20, 24, 37, 200, 255)] == [1, 2, 4, 4, 6, 9, 45, 58]


def test_a_pass_through_group_gives_its_opacity_to_each_layer_in_it():
    doc, _ = new_doc(8, 8)
    grp = add(doc, "characters", kind="grouplayer")
    grp.setOpacity(156)
    grp.setPassThroughMode(True)
    cat = add(doc, "a cat", parent=grp)
    cat.setOpacity(94)
    cat.setPixelData(bgra(0, 255, 0, 255, 64), 0, 0, 8, 8)
    layer = by_name(doc)["a cat"]
    assert layer.opacities == (57,)  # 94 * 156 / 255 = 57.5, cut down as Krita merges them
    assert set(kritaapi.read_alpha(doc, layer, 8, 8)) == {57}


def test_sixteen_bit_alpha_and_unsupported_models():
    doc = krita.Document(8, 8, "RGBA", "U16")
    krita.Krita.instance()._doc = doc
    n = add(doc, "a fox")
    n.setPixelData(bytes([0, 0, 0, 0, 0, 0, 0xFF, 0xFF]) * 8, 0, 0, 8, 1)
    a = kritaapi.read_alpha(doc, kritaapi.layers(doc)[0], 8, 8)
    assert a[:8] == b"\xff" * 8 and a[8:] == bytes(56)
    f32 = krita.Document(8, 8, "RGBA", "F32")
    assert "Convert Image Color Space" in kritaapi.color_problem(f32)
    gray = krita.Document(8, 8, "GRAYA", "U8")
    assert kritaapi.color_problem(gray) == ""
    assert "RGB document" in kritaapi.color_problem(gray, writing=True)
    with pytest.raises(kritaapi.Unsupported):
        kritaapi.write_preview(gray, frame())


def test_composite_is_rgb_over_white_with_opacity():
    doc, bg = new_doc(4, 4)
    bg.setPixelData(bytes(4 * 16), 0, 0, 4, 4)  # fully transparent background
    red = add(doc, "Paint Layer 2")
    red.setPixelData(bgra(0, 0, 255, 255, 2), 0, 0, 2, 1)  # B,G,R,A: pure red
    layers = kritaapi.layers(doc)
    rgb = kritaapi.read_composite(doc, layers, {l.uid for l in layers}, 4, 4)
    assert rgb[:3] == b"\xff\x00\x00" and rgb[6:9] == b"\xff\xff\xff"
    red.setOpacity(128)
    layers = kritaapi.layers(doc)
    half = kritaapi.read_composite(doc, layers, {l.uid for l in layers}, 4, 4)
    assert abs(half[1] - 127) <= 1 and half[0] == 255, "half red over white"


def test_a_group_below_full_opacity_is_composited_as_a_whole():
    doc, bg = new_doc(4, 4)
    grp = add(doc, "characters", kind="grouplayer")
    grp.setOpacity(128)
    a = add(doc, "Paint Layer 2", parent=grp)
    b = add(doc, "Paint Layer 3", parent=grp)
    a.setPixelData(bgra(0, 0, 0, 255, 16), 0, 0, 4, 4)  # black, under
    b.setPixelData(bgra(0, 0, 0, 255, 16), 0, 0, 4, 4)  # black, over it
    layers = kritaapi.layers(doc)
    rgb = kritaapi.read_composite(doc, layers, {l.uid for l in layers}, 4, 4)
    # (black over black) at 50 % over white: mid grey; one by one it would be 25 % white.
    assert abs(rgb[0] - 127) <= 1, rgb[:3]
    only_bg = kritaapi.read_composite(doc, layers, {bg.uniqueId().toString()}, 4, 4)
    assert only_bg[:3] == b"\xff\xff\xff", "a group with nothing chosen in it adds nothing"


def test_preview_is_added_once_complete_locked_and_never_removed():
    doc, bg = new_doc(8, 8)
    app = krita.Krita.instance()
    add(doc, "a fox")
    doc.setModified(False)
    node, previous = kritaapi.write_preview(doc, frame(), opacity=0.5)
    assert previous == bg.uniqueId().toString(), "the caller gets the artist's layer to give back"
    assert not doc.modified()
    assert doc.rootNode().childNodes()[-1] is node
    kritaapi.set_preview_look(doc, True, 0.5)  # a moment later (a timer in Krita)
    assert node.locked() and node.opacity() == 128
    assert bytes(node.pixelData(0, 0, 8, 8)) == bgra(30, 20, 10, 255, 64)
    again, previous = kritaapi.write_preview(doc, frame((1, 2, 3)))
    assert again is node and previous is None
    assert [s[0] for s in app.undo_stack] == ["add"], "one undo step for the whole of Live"
    refreshes = doc.refreshes
    assert kritaapi.hide_preview(doc) and not node.visible()
    assert doc.refreshes == refreshes + 1, "the canvas is redrawn without it, not only where painted next"
    assert kritaapi.find_preview(doc) is node, "Live off hides: removing would be an undo step"
    assert [s[0] for s in app.undo_stack] == ["add"]
    kritaapi.set_preview_look(doc, True, 1.0)
    assert doc.refreshes == refreshes + 2, "a new look is redrawn at once"
    node.remove()
    assert kritaapi.write_preview(doc, frame(), create=False) == (None, None)


def test_the_preview_is_known_by_its_id_never_by_its_name():
    """A layer the artist named "SMD Preview" is theirs: never written, hidden or left out of the scene."""
    doc, bg = new_doc(8, 8)
    app = krita.Krita.instance()
    mine = add(doc, kritaapi.PREVIEW_NAME)
    mine.setPixelData(bgra(1, 2, 3, 255, 64), 0, 0, 8, 8)
    before = bytes(mine.pixelData(0, 0, 8, 8))
    assert kritaapi.find_preview(doc) is None
    assert not kritaapi.hide_preview(doc) and mine.visible()
    node, _ = kritaapi.write_preview(doc, frame())
    assert node is not mine and bytes(mine.pixelData(0, 0, 8, 8)) == before
    assert kritaapi.own_layer_uid(doc, "preview") == node.uniqueId().toString(), "kept in the document"
    kritaapi.write_preview(doc, frame((9, 9, 9)))
    kritaapi.hide_preview(doc)
    assert bytes(mine.pixelData(0, 0, 8, 8)) == before and mine.visible() and not mine.locked()
    assert [l.name for l in kritaapi.layers(doc)] == ["Background", kritaapi.PREVIEW_NAME], "the artist's is read"
    node.setName("renamed by the artist")
    assert kritaapi.find_preview(doc) is node, "the plugin's own, whatever its name"
    app.action("edit_undo").trigger()  # the preview's creation undone: its id finds nothing
    assert kritaapi.find_preview(doc) is None
    # Settings written later keep the record of the plugin's own layers.
    kritaapi.save_document_settings(doc, {"seed": 3})
    assert kritaapi.own_layer_uid(doc, "preview") == node.uniqueId().toString()
    assert kritaapi.load_document_settings(doc) == {"seed": 3}


def test_adding_a_layer_gives_the_artists_layer_back():
    doc, bg = new_doc(8, 8)
    fox = add(doc, "a fox")
    doc.setActiveNode(fox)
    keeper = kritaapi.ActiveKeeper()
    node, previous = kritaapi.write_preview(doc, frame())
    keeper.added(doc, node, previous)
    krita.Krita.instance().process_queued()  # Krita activates the new layer a moment later
    assert doc.activeNode() is node
    keeper.check()
    assert doc.activeNode() is fox


def test_apply_is_one_undo_step_numbered_from_one_below_the_preview():
    doc, bg = new_doc(4, 4)
    app = krita.Krita.instance()
    kritaapi.write_preview(doc, frame())
    app.undo_stack.clear()
    before = bytes(bg.pixelData(0, 0, 4, 4))
    node, _ = kritaapi.apply_frame(doc, frame((1, 2, 3)))
    assert node.name() == "SMD Result 1"
    assert bytes(node.pixelData(0, 0, 1, 1)) == bgra(3, 2, 1, 255, 1)
    names = [n.name() for n in doc.rootNode().childNodes()]
    assert names == ["Background", "SMD Result 1", kritaapi.PREVIEW_NAME]
    assert kritaapi.apply_frame(doc, frame())[0].name() == "SMD Result 2"
    app.action("edit_undo").trigger()
    app.action("edit_undo").trigger()
    assert [n.name() for n in doc.rootNode().childNodes()] == ["Background", kritaapi.PREVIEW_NAME]
    assert bytes(bg.pixelData(0, 0, 4, 4)) == before


def test_document_settings_round_trip_and_bad_values():
    doc, _ = new_doc()
    doc.setModified(False)
    kritaapi.save_document_settings(doc, {"preview_mode": "docker"}, edit=False)
    assert not doc.modified(), "how the document is looked at is no edit"
    kritaapi.save_document_settings(doc, {"seed": 7, "steps": 3})
    assert kritaapi.load_document_settings(doc) == {"seed": 7, "steps": 3}
    doc.setAnnotation(kritaapi.ANNOTATION, "", b"not json")
    assert kritaapi.load_document_settings(doc) == {}
    doc.setAnnotation(kritaapi.ANNOTATION, "", b"[1, 2]")
    assert kritaapi.load_document_settings(doc) == {}


def test_the_save_guard_hides_the_preview_while_a_dialog_of_the_main_window_exists():
    """Krita builds a wait dialog on its main window before it copies the image to save it."""
    from PyQt5.QtCore import QEvent
    from PyQt5.QtWidgets import QApplication, QDialog, QMainWindow, QWidget

    doc, bg = new_doc(8, 8)
    app = krita.Krita.instance()
    node, _ = kritaapi.write_preview(doc, frame())
    doc.setModified(False)
    app.qwindow = window = QMainWindow()
    guard = kritaapi.SaveGuard()
    try:
        guard.watch_windows()
        guard.watch_windows()  # again: watched once
        QWidget(window)  # Krita adds plain child widgets all the time: no save
        assert node.visible() and guard.holds == 0
        refreshes = doc.refreshes
        dialog = QDialog(window)
        assert not node.visible() and guard.holds == 1, "hidden before Krita copies the image"
        assert doc.refreshes == refreshes + 1, "the projection is made again without it"
        kritaapi.write_preview(doc, frame())  # a frame arrives meanwhile: it stays hidden
        assert not node.visible()
        dialog.deleteLater()
        QApplication.sendPostedEvents(None, QEvent.DeferredDelete)
        QApplication.processEvents()  # the next turn of the event loop
        assert node.visible() and not doc.modified()
    finally:
        app.qwindow = None
        window.deleteLater()
