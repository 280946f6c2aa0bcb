"""Every problem a user can cause gives a notification saying what to do; the viewer works on."""

import numpy as np
import pytest
import torch
from test_widgets_support import (
    messages,
    paint_objects,
    small_image,
    tiny,
    wait_for_training,
    wait_until,
)

from napari_spoco.core.model.checkpoint import save_checkpoint
from napari_spoco.core.model.normalization import Normalization
from napari_spoco.core.model.unet import UNet

pytestmark = pytest.mark.gui


def blobs_with_labels(viewer, widget, painted=(1, 2)):
    image, truth = small_image()
    viewer.add_image(image, name="blobs")
    labels = widget.data.create_labels()
    paint_objects(labels, truth, painted, widget.data)
    return labels


def write_2d_checkpoint(path):
    network = UNet(in_channels=1, out_channels=8, ndim=2, features=(8, 16))
    save_checkpoint(path, {
        "architecture": network.config,
        "model_state": network.state_dict(),
        "normalization": Normalization((0.0,), (1.0,)).to_dict(),
        "config": {"lr": 2e-4},
    })
    return path


def assert_still_usable(viewer, widget):
    """The failure left no worker behind and the viewer still takes new layers."""
    assert widget.train.worker is None and widget.segment.worker is None
    layer = viewer.add_image(np.zeros((4, 4)), name="still works")
    viewer.layers.remove(layer)


def test_nothing_painted(spoco, notes):
    viewer, widget = spoco
    viewer.add_image(small_image()[0], name="blobs")
    widget.data.create_labels()
    widget.train.start()
    errors = messages(notes, "error")
    assert len(errors) == 1 and "Nothing is painted" in errors[0] and "press N" in errors[0]
    assert_still_usable(viewer, widget)


def test_no_annotation_layer(spoco, notes):
    viewer, widget = spoco
    viewer.add_image(small_image()[0], name="blobs")
    widget.train.start()
    errors = messages(notes, "error")
    assert len(errors) == 1 and "press 'New'" in errors[0]


def test_labels_of_another_shape(spoco, notes):
    viewer, widget = spoco
    viewer.add_image(small_image()[0], name="blobs")
    wrong = viewer.add_labels(np.ones((50, 60), np.uint32), name="other labels")
    widget.data.rows[0].labels_combo.setCurrentText(wrong.name)
    widget.train.start()
    errors = messages(notes, "error")
    assert len(errors) == 1
    assert "(50, 60)" in errors[0] and "(96, 96)" in errors[0] and "press 'New'" in errors[0]
    assert_still_usable(viewer, widget)


def test_pressing_train_twice(spoco, qtbot, notes):
    viewer, widget = spoco
    blobs_with_labels(viewer, widget)
    tiny(widget, widget.train.settings.save_path(), iterations=100_000)
    first = widget.train.start()
    assert widget.train.start() is None
    # the first start warns that no background was painted (blobs_with_labels paints none)
    warnings = [w for w in messages(notes, "warning") if "No background was painted" not in w]
    assert len(warnings) == 1 and "already running" in warnings[0] and "Stop" in warnings[0]
    assert widget.train.worker is first
    widget.train.stop()
    wait_for_training(qtbot, widget)
    assert_still_usable(viewer, widget)


def test_2d_model_on_a_3d_stack(spoco, qtbot, notes, tmp_path):
    viewer, widget = spoco
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((12, 40, 40), dtype=np.float32), name="stack")
    labels = widget.data.create_labels()
    labels.data_setitem(np.nonzero(np.ones((2, 5, 5))), 1)
    checkpoint = write_2d_checkpoint(tmp_path / "model2d.pt")
    widget.use_model(checkpoint)
    assert widget.train.settings.source_path() == str(checkpoint)
    assert widget.train.settings.lr_spin.value() == pytest.approx(2e-5)  # fine-tuning default
    tiny(widget, tmp_path / "out.pt")
    widget.train.settings.patch_edit.setText("8, 32, 32")
    widget.train.start()
    wait_for_training(qtbot, widget)
    errors = messages(notes, "error")
    assert len(errors) == 1 and "2D network" in errors[0] and "3D" in errors[0]

    widget.segment.image_combo.setCurrentText("stack")
    widget.segment.predict()
    wait_until(qtbot, lambda: widget.segment.worker is None)
    errors = messages(notes, "error")
    assert len(errors) == 2 and "2D" in errors[1] and "3 spatial axes" in errors[1]
    assert_still_usable(viewer, widget)


def test_bad_checkpoint(spoco, qtbot, notes, tmp_path):
    from napari_spoco._reader import read_checkpoint

    viewer, widget = spoco
    blobs_with_labels(viewer, widget)
    # A checkpoint cut short, as a crash during a copy would leave it.
    whole = write_2d_checkpoint(tmp_path / "whole.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole[: len(whole) // 2])
    widget.train.settings.add_model(truncated)
    widget.train.start()
    wait_for_training(qtbot, widget)
    errors = messages(notes, "error")
    assert len(errors) == 1 and "truncated or corrupt" in errors[0]

    # Dropping foreign files onto napari: a notification each, no layer, nothing else happens.
    foreign = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    n_layers = len(viewer.layers)
    assert read_checkpoint(str(foreign)) == [(None,)]
    assert read_checkpoint(str(garbage)) == [(None,)]
    assert len(viewer.layers) == n_layers
    errors = messages(notes, "error")
    assert len(errors) == 3
    assert "not a napari-spoco checkpoint" in errors[1]
    assert "corrupt" in errors[2]  # arbitrary bytes: damaged file, said so by the core
    assert_still_usable(viewer, widget)


def test_out_of_memory(spoco, qtbot, notes, monkeypatch):
    from napari_spoco.core.training import Trainer

    def exhausted(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Trainer, "_step", exhausted)
    viewer, widget = spoco
    blobs_with_labels(viewer, widget)
    widget.train.start()
    wait_for_training(qtbot, widget)
    errors = messages(notes, "error")
    assert len(errors) == 1
    assert "Out of memory" in errors[0] and "smaller patch or batch" in errors[0]
    assert_still_usable(viewer, widget)


def test_segment_without_a_model(spoco, notes):
    viewer, widget = spoco
    viewer.add_image(small_image()[0], name="blobs")
    widget.segment.predict()
    errors = messages(notes, "error")
    assert len(errors) == 1 and "no trained model yet" in errors[0]
    widget.segment.accept(3)
    assert "Predict and segment" in messages(notes, "error")[1]
