"""Make the user guide's screenshots from a real napari window (under Xvfb when headless).

Run from the repository root: ``python docs/make_screenshots.py`` (starts a virtual display when
there is none). It opens the StarDist nuclei sample, paints a few objects, trains a small
network with the live preview on, segments the image, accepts an object, and saves one window
grab per step into ``docs/screenshots/``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "screenshots"


def ensure_display():
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(1600, 1000))
    display.start()
    return display


def spin(app, seconds=0.0, condition=None, timeout=600.0):
    """Run the event loop for ``seconds``, or until ``condition()`` (at most ``timeout``)."""
    end = time.monotonic() + (timeout if condition else seconds)
    while time.monotonic() < end:
        app.processEvents()
        if condition is not None and condition():
            return
        time.sleep(0.005)


def grab(viewer, app, name):
    spin(app, 0.5)
    path = OUT / name
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"wrote {path}")
    return path


def main():
    display = ensure_display()
    # A fresh dock: the developer's remembered dock settings must not show in the screenshots.
    os.environ["NAPARI_SPOCO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="napari-spoco-config-")
    import napari
    from qtpy.QtWidgets import QApplication

    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-spoco", show=True)
    viewer.window._qt_window.resize(1500, 950)
    app = QApplication.instance()
    viewer.open_sample("napari-spoco", "stardist_2d")
    _, widget = viewer.window.add_plugin_dock_widget("napari-spoco", "SPOCO")
    image = viewer.layers["StarDist nuclei 2D"]
    sample = viewer.layers["StarDist nuclei 2D painted labels"]
    data = widget.data

    # 1. Data: a fresh annotation layer with a few objects and the sample's background strokes
    # painted (copied from the sample), as the user guide asks a user to paint.
    labels = data.create_labels(data.rows[0])
    background_id = int(sample.data.max())
    for object_id in np.unique(sample.data)[1:11]:
        if object_id == background_id:
            continue
        label = data.new_object(labels)
        labels.data_setitem(np.nonzero(sample.data == object_id), label)
    data.background_check.setChecked(True)
    data.background_spin.setValue(background_id)
    labels.data_setitem(np.nonzero(sample.data == background_id), background_id)
    sample.visible = False
    data.update_counts()
    widget.tabs.setCurrentIndex(0)
    grab(viewer, app, "01_data.png")

    # 2. Train with the live preview.
    settings = widget.train.settings
    settings.iterations_spin.setValue(600)
    settings.features_edit.setText("16, 32, 64")
    settings.device_combo.setCurrentText("cpu")
    settings.preview_spin.setValue(2.0)
    settings.save_edit.setText(str(Path(tempfile.mkdtemp()) / "model.pt"))
    widget.tabs.setCurrentIndex(1)
    widget.train.start()
    spin(app, condition=lambda: widget.train.last_report is not None
         and widget.train.last_report.iteration >= 450)
    grab(viewer, app, "02_training_live_preview.png")
    spin(app, condition=lambda: widget.train.worker is None)

    # 3. Segment the whole image, then accept one predicted object.
    for name in ("embeddings (PCA)", "instances"):
        viewer.layers[name].visible = False
    segment = widget.segment
    widget.tabs.setCurrentIndex(2)
    segment.image_combo.setCurrentText(image.name)
    segment.predict()
    spin(app, condition=lambda: segment.worker is None)
    viewer.layers[f"{image.name} embeddings (PCA)"].visible = False
    # Accept a predicted nucleus nobody painted: the one closest in size to the painted ones.
    instances = segment.instances_layer.data
    sizes = np.bincount(instances.ravel())
    touched = np.unique(instances[labels.data > 0])
    painted_size = np.median(np.bincount(labels.data.ravel())[1:][np.bincount(
        labels.data.ravel())[1:] > 0])
    candidates = [i for i in range(1, sizes.size) if sizes[i] > 0 and i not in touched]
    chosen = int(min(candidates, key=lambda i: abs(sizes[i] - painted_size)))
    segment.object_spin.setValue(chosen)
    segment.accept(chosen)
    viewer.layers.selection.active = labels
    # Outlines let the image show through; zoom onto the accepted object.
    segment.instances_layer.contour = 2
    centre = np.argwhere(instances == chosen).mean(axis=0)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = tuple(float(c) for c in centre)
    camera.zoom *= 1.5
    grab(viewer, app, "03_segment_accept.png")

    widget.shutdown()
    viewer.close()
    if display is not None:
        display.stop()


if __name__ == "__main__":
    main()
