"""The Data tab's "Suggest next": a clear message without a model, a centred view with one."""

import numpy as np
import pytest
from test_widgets_support import messages, paint_objects, small_image, wait_until

from training_support import tiny as tiny_config

pytestmark = pytest.mark.gui


def test_suggest_without_a_model_says_what_to_do(spoco, notes):
    viewer, widget = spoco
    image, truth = small_image()
    viewer.add_image(image, name="blobs")
    widget.data.create_labels()
    assert widget.data.suggest.suggest() is None
    assert any("train in the Train tab" in m for m in messages(notes, "error"))
    assert "Train tab" in widget.data.suggest.status.text()


def test_suggest_centres_on_an_unpainted_object_and_shows_the_map(spoco, qtbot):
    from napari_spoco.core.training import Trainer
    from napari_spoco.widgets.preview import ModelSnapshot
    from napari_spoco.widgets.suggest_panel import HIGHLIGHT_NAME, UNCERTAINTY_NAME

    viewer, widget = spoco
    image, truth = small_image()
    viewer.add_image(image, name="blobs")
    labels = widget.data.create_labels()
    paint_objects(labels, truth, [1, 2], widget.data)
    trainer = Trainer([(image, np.asarray(labels.data))],
                      tiny_config(iterations=3, autosave_seconds=None))
    for _ in trainer.steps():
        pass
    widget.session.snapshot = ModelSnapshot.of(trainer)
    widget.data.suggest.show_map.setChecked(True)
    assert widget.data.suggest.suggest() is not None
    wait_until(qtbot, lambda: widget.data.suggest.last is not None)
    result, suggestion, _ = widget.data.suggest.last
    assert UNCERTAINTY_NAME in viewer.layers
    if suggestion.segment_id is None:  # a 3-step model may find nothing: it must say why
        assert suggestion.reason
        pytest.skip(f"no suggestion from a 3-step model: {suggestion.reason}")
    centre = tuple(int(c) for c in suggestion.centre)
    assert result.segments[centre] == suggestion.segment_id
    assert np.asarray(labels.data)[centre] == 0  # never a painted object
    assert HIGHLIGHT_NAME in viewer.layers
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    assert np.allclose(camera.center[-2:], suggestion.centre, atol=1e-6)
    assert viewer.layers.selection.active is labels
