"""The dock fits napari's default dock width on a 1280×800 screen: nothing is cut on the right.

Each tab is a scroll area without a horizontal scrollbar, so a widget wider than the viewport
would simply be clipped (as Cancel, the combo boxes, the clustering checkboxes and the status
line of the Segment tab were). These tests show the napari window at 1280×800 with the dock at
the width napari gives it and check the geometry of every visible widget of every tab.
"""

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

SCREEN = (1280, 800)
#: A layer name and a checkpoint file name longer than the dock is wide.
LONG_NAME = "a_rather_long_image_name_from_the_microscope_export_" * 2


def _show(viewer, qtbot):
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    window.show()
    qtbot.waitExposed(window)
    qtbot.wait(50)
    return window


def _tabs(widget, qtbot):
    """Yield ``(tab name, scroll area)`` for each tab, made current and laid out."""
    for index in range(widget.tabs.count()):
        widget.tabs.setCurrentIndex(index)
        qtbot.wait(50)
        yield widget.tabs.tabText(index), widget.tabs.widget(index)


def _cut(area) -> list[str]:
    """The visible widgets of scroll area ``area`` that reach outside its viewport's width."""
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QWidget

    viewport = area.viewport()
    cut = []
    for child in area.widget().findChildren(QWidget):
        if not child.isVisible():
            continue
        left = child.mapTo(viewport, QPoint(0, 0)).x()
        right = left + child.width()
        if left < 0 or right > viewport.width():
            text = child.text() if hasattr(child, "text") else ""
            cut.append(f"{type(child).__name__} {text!r}: x {left}..{right} "
                       f"(viewport {viewport.width()})")
    return cut


def _assert_fits(widget, qtbot):
    from qtpy.QtCore import Qt

    for name, area in _tabs(widget, qtbot):
        viewport = area.viewport()
        assert area.horizontalScrollBarPolicy() == Qt.ScrollBarPolicy.ScrollBarAlwaysOff
        # no horizontal scrolling needed: the content is no wider than the viewport
        assert area.widget().minimumSizeHint().width() <= viewport.width(), name
        assert area.widget().width() <= viewport.width(), name
        assert _cut(area) == [], name


def test_every_tab_fits_the_default_dock_width(spoco, qtbot):
    viewer, widget = spoco
    window = _show(viewer, qtbot)
    # The default dock: napari's width for it, a narrow column of the 1280 px window.
    assert window.width() == SCREEN[0]
    assert 0 < widget.width() <= 0.4 * SCREEN[0]
    widget.train.settings.advanced.expand(animate=False)
    _assert_fits(widget, qtbot)


def test_long_layer_and_model_names_do_not_widen_the_dock(spoco, qtbot, tmp_path):
    viewer, widget = spoco
    _show(viewer, qtbot)
    width = widget.width()
    image = viewer.add_image(np.zeros((32, 32), np.float32), name=LONG_NAME)
    viewer.add_labels(np.zeros((32, 32), np.uint16), name=LONG_NAME + " labels")
    widget.data.add_row()
    checkpoint = tmp_path / f"{LONG_NAME}.pt"
    widget.train.settings.add_model(checkpoint)
    widget.segment.add_model(checkpoint)
    widget.segment.image_combo.setCurrentText(image.name)
    qtbot.wait(50)
    assert widget.width() == width
    _assert_fits(widget, qtbot)


def test_status_line_wraps_instead_of_being_cut(spoco, qtbot, tmp_path):
    viewer, widget = spoco
    _show(viewer, qtbot)
    long_path = str(tmp_path / LONG_NAME / "model.pt")
    message = ("Error: could not read the checkpoint " + long_path + ": it was written by a "
               "newer napari-spoco; update the plugin or choose another checkpoint as the model")
    for status, tab in ((widget.segment.status, 2), (widget.train.status, 1)):
        status.setText(message)
        widget.tabs.setCurrentIndex(tab)
        qtbot.wait(50)
        area = widget.tabs.widget(tab)
        assert status.text() == message  # the text as set, whole
        assert _cut(area) == []
        lines = status.height() / status.fontMetrics().lineSpacing()
        assert lines >= 3, f"{lines:.1f} lines: the message is not wrapped"
        # all of it shown: the label got the height its wrapped text needs at its width
        assert status.height() >= status.heightForWidth(status.width())
