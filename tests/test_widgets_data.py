"""The Data tab: pairing layers, channels, the new-object key, background brush, autosave, and
dropping a checkpoint onto napari."""

import numpy as np
import pytest
from test_widgets_support import messages, paint_objects, small_image

pytestmark = pytest.mark.gui


def press(viewer, qtbot, key):
    """Type ``key`` into the canvas, as a user painting in napari would."""
    from qtpy.QtCore import Qt

    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, getattr(Qt.Key, f"Key_{key.upper()}"))


def test_new_object_key_and_background_brush_while_painting(spoco, qtbot):
    viewer, widget = spoco
    image, truth = small_image()
    viewer.add_image(image, name="blobs")
    labels = widget.data.create_labels()
    assert labels.selected_label == 1 and labels.mode == "paint"
    labels.data_setitem(np.nonzero(truth == 1), 1)

    press(viewer, qtbot, "n")
    assert labels.selected_label == 2

    press(viewer, qtbot, "g")
    assert widget.data.background_check.isChecked()
    assert labels.selected_label == widget.data.background_id == 65535
    labels.data_setitem(np.nonzero(truth == 0), 65535)
    # The background id is the largest value but does not push object ids past it.
    press(viewer, qtbot, "n")
    assert labels.selected_label == 2
    assert widget.data.update_counts() == [1]  # background is not counted as an object


def test_channels_first_and_rgb_images_get_spatial_labels(spoco):
    viewer, widget = spoco
    data = widget.data
    viewer.add_image(np.zeros((2, 40, 30), np.float32), name="two channels")
    data.channel_combo.setCurrentText("first axis")
    assert data.create_labels().data.shape == (40, 30)
    viewer.add_image(np.zeros((20, 24, 3), np.uint8), name="photo", rgb=True)
    row = data.add_row("photo")
    assert data.channel_combo.currentText() == "first axis"  # set by the first image only
    data.rows.remove(data.rows[0])
    data._on_image_chosen(row)
    assert data.channel_combo.currentText() == "RGB (last axis)"
    assert data.create_labels(row).data.shape == (20, 24)


def test_renaming_layers_keeps_the_pair(spoco):
    viewer, widget = spoco
    image, truth = small_image()
    layer = viewer.add_image(image, name="blobs")
    labels = widget.data.create_labels()
    paint_objects(labels, truth, [1], widget.data)
    layer.name, labels.name = "renamed image", "renamed labels"
    row = widget.data.rows[0]
    assert row.image_layer() is layer and row.labels_layer() is labels
    assert row.image_combo.currentText() == "renamed image"
    assert len(widget.data.pairs()) == 1


def test_several_pairs_make_one_training_set(spoco):
    viewer, widget = spoco
    data = widget.data
    for seed in (0, 1):
        image, truth = small_image(seed)
        viewer.add_image(image, name=f"blobs {seed}")
    paint_objects(data.create_labels(data.rows[0]), small_image(0)[1], [1, 2], data)
    second = data.add_row()
    assert second.image_combo.currentText() == "blobs 1"
    paint_objects(data.create_labels(second), small_image(1)[1], [1, 2, 3], data)
    assert data.update_counts() == [2, 3]
    arrays, channel_axis, ndim, _ = data.training_pairs()
    assert len(arrays) == 2 and channel_axis is None and ndim == 2
    # Ids are unique over the training set: the second image continues at 3.
    assert sorted(np.unique(arrays[1][1]))[1:] == [3, 4, 5]
    # The arrays handed to training are copies: painting on does not race with training.
    assert not np.shares_memory(arrays[1][1], data.rows[1].labels_layer().data)


def test_autosave_follows_strokes_undo_and_restores(spoco, qtbot, tmp_path):
    import zarr

    viewer, widget = spoco
    image, truth = small_image()
    viewer.add_image(image, name="blobs")
    labels = widget.data.create_labels()
    store = tmp_path / "annotations.zarr"
    widget.data.autosave.set_store(store)
    paint_objects(labels, truth, [1, 2], widget.data)
    labels.paint((5, 5), 7)  # a brush stroke through napari's own painting code
    widget.data.autosave.autosave.wait()
    saved = zarr.open_group(str(store), mode="r")["blobs_annotations"]
    assert np.array_equal(saved[...], labels.data)
    assert saved.attrs["image"] == "blobs"

    labels.undo()
    widget.data.autosave.autosave.wait()
    assert np.array_equal(saved[...], labels.data)
    assert not (saved[...] == 7).any()

    restored = widget.data.autosave.restore(store)
    assert len(restored) == 1 and np.array_equal(restored[0].data, labels.data)


def test_dropping_a_checkpoint_loads_it_as_the_model(spoco, notes, tmp_path):
    from test_widgets_errors import write_2d_checkpoint

    viewer, widget = spoco
    path = write_2d_checkpoint(tmp_path / "dropped.pt")
    n_layers = len(viewer.layers)
    viewer.open(str(path), plugin="napari-spoco")
    assert len(viewer.layers) == n_layers  # a model is no layer
    assert widget.train.settings.source_path() == str(path)
    assert widget.segment.model_combo.currentData() == str(path)
    assert any("dropped.pt" in m for m in messages(notes, "info"))


def test_dropping_a_checkpoint_opens_the_dock(make_napari_viewer, notes, tmp_path):
    from test_widgets_errors import write_2d_checkpoint

    from napari_spoco.widgets import SpocoWidget

    viewer = make_napari_viewer()
    path = write_2d_checkpoint(tmp_path / "dropped.pt")
    viewer.open(str(path), plugin="napari-spoco")
    docked = [w for w in viewer.window.dock_widgets.values() if isinstance(w, SpocoWidget)]
    assert len(docked) == 1
    assert docked[0].train.settings.source_path() == str(path)
    docked[0].shutdown()


def test_painted_count_follows_undo_and_redo(spoco, qtbot):
    viewer, widget = spoco
    image, truth = small_image()
    viewer.add_image(image, name="blobs")
    labels = widget.data.create_labels()
    count = widget.data.rows[0].count_label
    for label in (1, 2):
        labels.paint(tuple(int(c) for c in np.argwhere(truth == label)[0]), label)
    qtbot.waitUntil(lambda: count.text() == "2 objects painted", timeout=3000)
    labels.undo()
    qtbot.waitUntil(lambda: count.text() == "1 object painted", timeout=3000)
    labels.redo()
    qtbot.waitUntil(lambda: count.text() == "2 objects painted", timeout=3000)


def test_an_ome_zarr_image_with_channels_is_read_channels_first(spoco, tmp_path):
    import zarr
    from ome_zarr.writer import write_image

    from napari_spoco.core.io import write_array
    from napari_spoco.widgets.layers import channel_mode_for, image_view

    viewer, widget = spoco
    data = widget.data
    image = np.random.default_rng(5).random((2, 40, 30), dtype=np.float32)
    path = tmp_path / "two.ome.zarr"
    write_image(image, zarr.open_group(str(path), mode="w"), axes="cyx", scale_factors=(2,))
    write_array(path / "labels" / "cells", np.zeros((40, 30), np.uint32))
    # a plain 3-axis image first: nothing says its first axis holds channels
    viewer.add_image(np.zeros((3, 40, 30), np.float32), name="stack")
    assert data.channel_combo.currentText() == "none"
    viewer.layers.clear()
    # through the manifest and the reader, as dropping the folder onto napari opens it
    layers = viewer.open(str(path), plugin="napari-spoco")
    layer = viewer.layers["two.ome.zarr"]
    assert [lyr.name for lyr in layers] == ["two.ome.zarr", "cells"]
    assert layer.metadata["channel_axis"] == 0 and layer.multiscale and not layer.rgb
    assert data.rows[0].image_layer() is layer
    assert data.channel_combo.currentText() == "first axis" == channel_mode_for(layer)
    view = image_view(layer, data.channel_combo.currentText())
    assert view.channel_axis == 0 and view.spatial_shape == (40, 30)
    np.testing.assert_array_equal(np.asarray(view.array[1]), image[1])
    # the label image beside it fits the image's spatial shape, so it is paired; it is one
    # level in memory (ome-zarr writes labels as a pyramid), so painting and autosave work
    labels = viewer.layers["cells"]
    assert data.rows[0].labels_layer() is labels and not labels.multiscale
    labels.data_setitem((np.array([3, 4]), np.array([5, 6])), 1)
    assert data.update_counts() == [1]
    arrays, channel_axis, ndim, _ = data.training_pairs()
    assert channel_axis == 0 and ndim == 2 and arrays[0][1][3, 5] == 1
    # an image to segment that is no training image gets the same mode in the Segment tab
    assert widget.segment._channel_mode(layer) == "first axis"
