"""Visible results (issue 11): outputs never hide the image, one set of result layers per image
updated in place, accepted objects shown as annotations, Accept only once something is
segmented, and errors in the dock's status line as well as in a toast."""

import numpy as np
import pytest
import torch
from test_widgets_errors import write_2d_checkpoint
from test_widgets_support import messages, paint_objects, small_image, wait_until

pytestmark = pytest.mark.gui


def output_layers(viewer, kind=None):
    from napari_spoco.widgets.data_widget import is_output

    return [lyr for lyr in viewer.layers if is_output(lyr)
            and (kind is None or type(lyr).__name__ == kind)]


def segment_with(qtbot, widget, checkpoint, image="blobs"):
    segment = widget.segment
    widget.use_model(checkpoint)
    segment.image_combo.setCurrentText(image)
    assert segment.predict() is not None
    wait_until(qtbot, lambda: segment.worker is None)
    return segment


def test_results_show_the_image_and_are_updated_in_place(spoco, qtbot, notes, tmp_path):
    viewer, widget = spoco
    viewer.add_image(small_image()[0], name="blobs")
    segment = widget.segment
    assert not segment.accept_button.isEnabled()
    assert not segment.accept_cursor_button.isEnabled()

    torch.manual_seed(0)
    segment_with(qtbot, widget, write_2d_checkpoint(tmp_path / "a.pt"))
    assert messages(notes, "error") == []
    instances = viewer.layers["blobs instances"]
    pca = viewer.layers["blobs embeddings (PCA)"]
    # outlines (or a faint fill) over the image; the opaque PCA starts hidden
    assert instances.contour > 0 or instances.opacity <= 0.5
    assert not pca.visible
    assert segment.accept_button.isEnabled() and segment.accept_cursor_button.isEnabled()
    assert "segmented 'blobs'" in segment.status.text()
    first = instances.data.copy()
    n_layers = len(viewer.layers)

    # Segmenting again (another model) updates the same layers instead of adding new ones.
    pca.visible = True  # the user's choice is kept
    torch.manual_seed(1)
    segment_with(qtbot, widget, write_2d_checkpoint(tmp_path / "b.pt"))
    assert messages(notes, "error") == []
    assert len(viewer.layers) == n_layers
    assert [lyr.name for lyr in output_layers(viewer, "Labels")] == ["blobs instances"]
    assert viewer.layers["blobs instances"] is instances and viewer.layers[pca.name] is pca
    assert pca.visible
    assert not np.array_equal(instances.data, first)

    # Removing the result disables Accept again.
    viewer.layers.remove(instances)
    assert not segment.accept_button.isEnabled()


def test_a_users_layer_named_like_a_result_is_kept(spoco, qtbot, notes, tmp_path):
    viewer, widget = spoco
    viewer.add_image(small_image()[0], name="blobs")
    mine = viewer.add_labels(np.full((96, 96), 7, np.uint32), name="blobs instances")
    segment_with(qtbot, widget, write_2d_checkpoint(tmp_path / "a.pt"))
    assert messages(notes, "error") == []
    assert viewer.layers["blobs instances"] is mine and np.all(mine.data == 7)
    assert widget.segment.instances_layer.name == "blobs instances (spoco)"


def test_accepted_objects_are_visible_as_annotations(spoco, qtbot, notes, tmp_path):
    viewer, widget = spoco
    image, truth = small_image()
    viewer.add_image(image, name="blobs")
    labels = widget.data.create_labels()
    paint_objects(labels, truth, (1,), widget.data)
    segment = segment_with(qtbot, widget, write_2d_checkpoint(tmp_path / "a.pt"))
    instances = segment.instances_layer
    ids, sizes = np.unique(instances.data[labels.data == 0], return_counts=True)
    sizes[ids == 0] = 0
    chosen = int(ids[np.argmax(sizes)])
    assert chosen != 0
    # the user hid the annotations and put them under the result
    labels.visible = False
    viewer.layers.move(viewer.layers.index(labels), 0)
    segment.annotation_combo.setCurrentText(labels.name)
    new_id = segment.accept(chosen)
    assert new_id == 2
    assert np.any(labels.data == new_id)
    assert labels.visible
    assert viewer.layers.index(labels) > viewer.layers.index(instances)
    assert "accepted object" in segment.status.text()


def test_errors_are_shown_in_the_status_line(spoco, notes):
    viewer, widget = spoco
    viewer.add_image(small_image()[0], name="blobs")
    segment = widget.segment
    segment.predict()
    errors = messages(notes, "error")
    assert len(errors) == 1 and "no trained model yet" in errors[0]
    assert errors[0] in segment.status.text()

    segment.accept(3)
    assert "Predict and segment" in segment.status.text()
    segment.recluster()
    assert "Nothing to re-cluster yet" in segment.status.text()

    widget.data.create_labels()
    widget.train.start()
    errors = messages(notes, "error")
    assert "Nothing is painted" in errors[-1]
    assert errors[-1] in widget.train.status.text()
