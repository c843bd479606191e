"""The docker's widgets, offscreen against the fake ``krita``: compact, every
layer explained in its row, choices shown only where the daemon has them."""

import krita  # the fake
import pytest
from plugin_unit import env  # noqa: F401  (Qt, the fake krita, the plugin on sys.path)
from plugin_unit.fakes import FakeClient, add, ignored, new_doc, scene_event
from PyQt5.QtCore import QPoint
from PyQt5.QtWidgets import QApplication, QHeaderView, QLabel, QPushButton, QTreeWidget
from smd_krita import docker, live


@pytest.fixture
def dock():
    krita.Krita.instance().settings.clear()
    doc, bg = new_doc(16, 16)
    add(doc, "bg: a very long background prompt about snowy pine forests at dawn | strenght: 2")
    live._controller = None
    ctl = live.controller()
    ctl.timer.stop()
    d = docker.SMDDocker()
    yield d, ctl, doc
    d.deleteLater()
    live._controller = None


def visible_in(widget, scroll) -> bool:
    """Whether the widget's top-left is inside the scroll area's visible part."""
    top_left = widget.mapTo(scroll.viewport(), QPoint(0, 0))
    return widget.isVisible() and 0 <= top_left.y() < scroll.viewport().height()


def test_usable_at_350_px_high(dock):
    d, ctl, doc = dock
    d.setFloating(True)
    d.resize(300, 350)
    d.show()
    QApplication.processEvents()
    scroll = d.widget()
    assert d.height() <= 350
    for name in ("smd_status", "smd_connect", "smd_live", "smd_generate", "smd_apply", "smd_layers"):
        w = d.findChild(QLabel, name) or d.findChild(QPushButton, name) or d.findChild(QTreeWidget, name)
        assert visible_in(w, scroll), f"{name} is not visible at 350 px"
    assert not d.findChild(QLabel, "smd_output_size").isVisible(), "scene settings fold away by default"


def connected(ctl, **client_kw) -> FakeClient:
    """The controller connected to a fake daemon, the document read once."""
    client = FakeClient(**client_kw)
    ctl.conn.client = client
    ctl.conn.set_state("connected", "", "connected")
    ctl._follow_document()
    ctl._scan()
    return client


def test_every_layer_in_its_row_with_warnings_and_the_full_name_on_hover(dock):
    d, ctl, doc = dock
    client = connected(ctl)
    long_name = doc.rootNode().childNodes()[-1].name()
    ctl._handle(
        scene_event(
            client.revision,
            ignored("Background", "automatic_name", "automatic name: rename it with a prompt"),
            {
                "name": long_name,
                "role": "background",
                "prompt": "a very long background prompt",
                "warnings": ["unknown option 'strenght' (ignored)"],
            },
        )
    )
    d.refresh()
    tree = d.findChild(QTreeWidget, "smd_layers")
    rows = [(tree.topLevelItem(i).text(0), tree.topLevelItem(i).text(1)) for i in range(tree.topLevelItemCount())]
    assert rows[0][0] == long_name
    assert "\u26a0" in rows[0][1] and "strenght" in rows[0][1], "the warning is in the row, not only a tooltip"
    assert rows[1] == ("Background", "ignored: automatic name: rename it with a prompt")
    assert long_name in tree.topLevelItem(0).toolTip(0)
    assert tree.header().sectionResizeMode(0) == QHeaderView.Interactive, "the name column can be widened"
    assert "connected" in d.findChild(QLabel, "smd_status").text()


def test_region_choice_only_where_the_daemon_offers_it(dock):
    d, ctl, doc = dock
    d.settings_section.set_open(True)
    d.show()
    client = FakeClient()
    ctl.conn.client = client
    ctl.conn.set_state("connected", "", "connected")
    d.refresh()
    assert not d.region_mode.isVisible()
    client.info["capabilities"]["region_modes"] = ["latent", "attention"]
    d.refresh()
    assert d.region_mode.isVisible()
    d.region_mode.setCurrentIndex(d.region_mode.findData("attention"))
    assert ctl.settings["region_mode"] == "attention"
    assert d.steps.maximum() == client.limits["max_steps"] and d.size.maximum() == client.limits["max_side"]
    assert d.steps.text() == "default" and "4" in d.steps.toolTip(), "unset: the daemon's default"
    d.steps.setValue(3)
    assert ctl.settings["steps"] == 3
    d.steps.setValue(0)
    assert ctl.settings["steps"] is None


DEFAULT_COLUMN = 260  # Krita's default dock column at first start (262 px measured, 1366x768 and 1920x1080)


def test_fits_krita_default_dock_column(dock):
    """Every button whole at Krita's default width, every section open (the real-Krita test takes screenshots)."""
    from PyQt5.QtWidgets import QAbstractButton

    d, ctl, doc = dock
    ctl.conn.client = FakeClient(capabilities={"region_modes": ["latent", "attention"]})
    ctl.conn.set_state("connected", "", "connected")
    for section in (d.preview_section, d.settings_section, d.daemon_section):
        section.set_open(True)
    d.refresh()
    d.resize(DEFAULT_COLUMN, 900)
    d.show()
    QApplication.processEvents()
    scroll = d.widget()
    assert scroll.widget().minimumSizeHint().width() <= scroll.viewport().width(), "nothing is squeezed"
    for b in d.findChildren(QAbstractButton):
        if b.isVisible() and scroll.widget().isAncestorOf(b):
            left = b.mapTo(scroll.viewport(), QPoint(0, 0)).x()
            assert 0 <= left and left + b.width() <= scroll.viewport().width(), b.objectName() or b.text()
            need = b.minimumWidth() or b.minimumSizeHint().width()  # compact buttons: their text's width
            assert b.width() >= need and b.width() >= b.fontMetrics().horizontalAdvance(b.text()), b.objectName()


def test_live_on_is_seen_at_a_glance(dock):
    d, ctl, doc = dock
    ctl.live = True
    d.refresh()
    assert d.live_btn.isChecked() and d.live_btn.text() == "Live \u25cf"
    assert "background-color" in d.live_btn.styleSheet() and ":checked" in d.live_btn.styleSheet()
    ctl.live = False
    d.refresh()
    assert d.live_btn.text() == "Live"


def test_warnings_are_shown_in_full_below_the_list(dock):
    d, ctl, doc = dock
    client = connected(ctl)
    name = doc.rootNode().childNodes()[-1].name()
    warning = "unknown option 'strenght' (ignored; did you mean 'strength'?)"
    ctl._handle(
        scene_event(
            client.revision,
            ignored("Background", "automatic_name"),
            {"name": name, "role": "background", "prompt": "x", "warnings": [warning]},
        )
    )
    d.resize(DEFAULT_COLUMN, 600)
    d.show()
    QApplication.processEvents()
    label = d.findChild(QLabel, "smd_warnings")
    assert label.isVisible() and warning in label.text().replace("\u200b", "")
    assert label.height() >= label.heightForWidth(label.width()), "every line of it shown"


def test_the_wheel_over_the_layer_list_scrolls_the_docker(dock):
    from PyQt5.QtCore import QPointF, Qt
    from PyQt5.QtGui import QWheelEvent

    d, ctl, doc = dock
    for section in (d.preview_section, d.settings_section, d.daemon_section):
        section.set_open(True)
    d.setFloating(True)
    d.resize(DEFAULT_COLUMN, 350)
    d.show()
    QApplication.processEvents()
    bar = d.widget().verticalScrollBar()
    assert bar.maximum() > 0, "the docker has more than it shows"
    tree = d.findChild(QTreeWidget, "smd_layers")
    at = QPointF(tree.viewport().width() / 2, 5)
    down = QWheelEvent(
        at,
        tree.viewport().mapToGlobal(at.toPoint()),
        QPoint(),
        QPoint(0, -120),
        Qt.NoButton,
        Qt.NoModifier,
        Qt.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(tree.viewport(), down)
    assert bar.value() > 0, "the list had nothing to scroll: the docker scrolled"


def test_preview_choices_reach_the_settings(dock):
    d, ctl, doc = dock
    d.preview_section.set_open(True)
    d.preview_mode.setCurrentIndex(d.preview_mode.findData("docker"))
    d.preview_opacity.setValue(40)
    assert ctl.settings["preview_mode"] == "docker"
    assert not d.preview_opacity.isEnabled(), "opacity is for the canvas layer"
    assert not d.show_choice.isEnabled(), "nothing to choose on the canvas"
    d.preview_mode.setCurrentIndex(d.preview_mode.findData("canvas"))
    d.preview_opacity.setValue(40)
    assert ctl.settings["preview_opacity"] == 0.4
    assert d.show_choice.buttons["both"].isChecked(), "the default shows painting and preview"
    d.show_choice.buttons["painting"].click()  # one click
    assert ctl.settings["preview_show"] == "painting"


def test_unsupported_krita_gets_a_docker_saying_so():
    import smd_krita

    assert smd_krita._problem("5.2.2") is None
    assert "this is Krita 6.0.0" in smd_krita._problem("6.0.0")
    app = krita.Krita.instance()
    app.dockers = []
    app.version = lambda: "6.0.0"
    try:
        smd_krita._register()
    finally:
        del app.version
    widget = app.dockers[-1].args[2]()
    assert "supports Krita 5.1 and 5.2" in widget.widget().text()


def test_the_local_daemon_is_offered_only_when_install_py_set_one_up(tmp_path):
    import json

    from smd_krita.managed import CONFIG, ManagedDaemon

    krita.Krita.instance().settings.clear()
    new_doc(16, 16)
    for configured in (False, True):
        if configured:
            (tmp_path / CONFIG).write_text(
                json.dumps(
                    {
                        "command": ["/bin/true"],
                        "address": "127.0.0.1:7555",
                        "log": str(tmp_path / "d.log"),
                        "venv": str(tmp_path),
                    }
                )
            )
        live._controller = live.Controller(managed=ManagedDaemon(folder=str(tmp_path)))
        live._controller.timer.stop()
        d = docker.SMDDocker()
        d.show()
        d._refresh_daemon()
        assert d.findChild(QPushButton, "smd_daemon_start").isVisible() == configured
        assert d.managed_label.isVisible() == configured
        if configured:
            assert d.findChild(QLabel, "smd_daemon_state").text() == "stopped"
        d.deleteLater()
    live._controller = None
