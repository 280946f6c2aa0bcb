"""Shared helpers of the GUI tests (tests/test_widgets*.py): tiny training settings, a small
image with its ground truth, painting, and waiting. Their fixtures (``spoco``: a viewer with the
SPOCO dock; ``notes``: the notifications the widgets show) are in conftest.py.

The GUI tests need a display: pytest-xvfb starts Xvfb for the whole session when there is no
DISPLAY, so plain ``python -m pytest`` runs them on a headless CI machine.
"""

import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


def messages(notes, level):
    return [message for lvl, message in notes if lvl == level]


def tiny(widget, save_path, iterations=4, preview=False):
    """Settings for a network that trains a step in well under a second on a CPU."""
    settings = widget.train.settings
    settings.features_edit.setText("8, 16")
    settings.embedding_spin.setValue(8)
    settings.iterations_spin.setValue(iterations)
    settings.patch_edit.setText("64, 64")
    settings.batch_spin.setValue(1)
    settings.device_combo.setCurrentText("cpu")
    settings.save_edit.setText(str(save_path))
    settings.preview_check.setChecked(preview)
    settings.preview_spin.setValue(0.5)
    widget.segment.device_combo.setCurrentText("cpu")


def small_image(seed=0, shape=(96, 96), n_blobs=8):
    """Bright discs on a dark background, and their dense ground truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth = np.zeros(shape, np.uint32)
    for label in range(1, n_blobs + 1):
        cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(25, 64)] = label
    image = (truth > 0).astype(np.float32) + 0.1 * rng.standard_normal(shape).astype(np.float32)
    return image, truth


def paint_objects(layer, truth, ids, data_widget):
    """Paint ground-truth objects ``ids`` as the user would: N for a new id, then the brush."""
    painted = []
    for object_id in ids:
        label = data_widget.new_object(layer)
        layer.data_setitem(np.nonzero(truth == object_id), label)
        painted.append(label)
    return painted


def wait_for_training(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: widget.train.worker is None, timeout=timeout)


def wait_until(qtbot, condition, timeout=60_000):
    qtbot.waitUntil(condition, timeout=timeout)


def idle(qtbot, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        qtbot.wait(20)


def wait_until_still(qtbot, value, quiet, timeout=60.0):
    """Wait until ``value()`` has not changed for ``quiet`` seconds; return it."""
    start = time.monotonic()
    last, since = value(), time.monotonic()
    while time.monotonic() - start < timeout:
        qtbot.wait(20)
        current = value()
        if current != last:
            last, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return current
    raise AssertionError(f"value kept changing for {timeout} s")
