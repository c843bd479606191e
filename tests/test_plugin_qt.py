"""The plugin's Qt layer (smd_krita/qt.py): the binding Krita runs on, chosen by asking Krita,
never by trying PyQt5 first. tests/run.sh runs the plugin's unit tests under PyQt5 and again
under PyQt6 (``SMD_QT_API=pyqt6``), where the fake Krita refuses PyQt5 as Krita 6 does."""

import importlib.util
import sys
import types

import krita  # the fake
import pykrita  # the fake
import pytest
from plugin_unit import env  # noqa: F401  (Qt, the fake krita, the plugin on sys.path)
from smd_krita import qt


def test_the_plugin_runs_on_the_binding_its_krita_runs_on():
    assert qt.MAJOR == pykrita.qt_major_version() == krita.QT_MAJOR
    assert qt.BINDING == f"PyQt{qt.MAJOR}" and qt.QT_VERSION.startswith(f"{qt.MAJOR}.")
    assert type(qt.QApplication.instance()).__module__ == f"{qt.BINDING}.QtWidgets"
    other = "PyQt5" if qt.MAJOR == 6 else "PyQt6"
    assert not [m for m in sys.modules if m.split(".")[0] == other], f"{other} was loaded beside {qt.BINDING}"


def test_nothing_tried_pyqt5_on_qt6_where_every_import_of_it_fails():
    """Run after the other plugin tests (files run in order): the whole plugin has been imported
    and exercised by then. On Qt 6 not one import of PyQt5 was even tried."""
    assert krita.REFUSED_IMPORTS == [], "the plugin tried PyQt5 on a Krita running Qt 6"
    if qt.MAJOR != 6:
        return
    with pytest.raises(ModuleNotFoundError, match="not compatible with PyQt5"):
        import PyQt5.QtCore  # noqa: F401
    with pytest.raises(ModuleNotFoundError, match="not compatible with PyQt5"):
        __import__("PyQt5", fromlist=["QtWidgets"])
    krita.REFUSED_IMPORTS.clear()


def _fake_pykrita(monkeypatch, **attrs):
    monkeypatch.setitem(sys.modules, "pykrita", types.SimpleNamespace(**attrs))


def test_krita_is_asked_which_qt_it_runs_on(monkeypatch):
    _fake_pykrita(monkeypatch, qt_major_version=lambda: 6)
    assert qt._krita_qt_major() == 6
    _fake_pykrita(monkeypatch, qt_major_version=lambda: 5)
    assert qt._krita_qt_major() == 5
    # Krita before 5.3 has no qt_major_version: its version says
    _fake_pykrita(monkeypatch)
    app = krita.Krita.instance()
    for version, major in (("5.1.5", 5), ("5.2.2", 5), ("6.0.0", 6), ("6.1.0-beta1", 6)):
        monkeypatch.setattr(app, "version", lambda v=version: v)
        assert qt._krita_qt_major() == major, version
    monkeypatch.setitem(sys.modules, "pykrita", None)  # outside Krita: no pykrita at all
    assert qt._krita_qt_major() is None


def test_outside_krita_an_environment_variable_chooses_else_pyqt5():
    assert qt._outside_krita_major({"SMD_QT_API": "pyqt6"}) == 6
    assert qt._outside_krita_major({"SMD_QT_API": "PyQt5"}) == 5
    assert qt._outside_krita_major({}) == (5 if importlib.util.find_spec("PyQt5") else 6)
    with pytest.raises(ImportError, match="pyqt5 or pyqt6"):
        qt._outside_krita_major({"SMD_QT_API": "pyside6"})


def test_a_qt_neither_5_nor_6_is_named_and_no_binding_is_imported(monkeypatch):
    _fake_pykrita(monkeypatch, qt_major_version=lambda: 7)
    spec = importlib.util.spec_from_file_location("qt_on_qt7", qt.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match="Qt 5 or Qt 6 .* runs on Qt 7"):
        spec.loader.exec_module(module)


def test_a_krita_without_a_known_qt_says_so_in_one_line_and_adds_no_docker(monkeypatch, capsys):
    import smd_krita

    monkeypatch.setitem(sys.modules, "smd_krita.qt", None)  # the layer cannot be imported
    monkeypatch.delattr(smd_krita, "qt")
    assert smd_krita._problem("6.0.0").startswith("SMD Live cannot use this Krita's Qt:")
    app = krita.Krita.instance()
    monkeypatch.setattr(app, "dockers", [], raising=False)
    monkeypatch.setattr(app, "version", lambda: "7.0.0")
    smd_krita._register()
    assert app.dockers == []
    assert capsys.readouterr().err == "SMD Live supports Krita 5.1, 5.2, 5.3 and 6.x; this is Krita 7.0.0.\n"


def test_qaction_comes_from_where_each_qt_keeps_it():
    action = qt.QAction("SMD Live: toggle live preview")
    assert type(action).__module__ == f"{qt.BINDING}.{'QtGui' if qt.MAJOR == 6 else 'QtWidgets'}"
    assert action.text() == "SMD Live: toggle live preview"


def test_pixels_through_the_layer_in_both_bindings():
    data = qt.QByteArray(bytes([10, 20, 30, 255, 40, 50, 60, 128]))  # B,G,R,A: two pixels
    img = qt.image_over(data, 2, 1, 8, qt.QImage.Format.Format_ARGB32)
    assert img.pixelColor(0, 0).getRgb() == (30, 20, 10, 255)
    assert img.pixelColor(1, 0).getRgb() == (60, 50, 40, 128)
    copy = qt.byte_array_over(qt.image_bits(img))
    assert copy.data() == data.data()
    with pytest.raises(ValueError, match="null image"):
        qt.image_bits(qt.QImage())
