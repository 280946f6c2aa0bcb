"""The annotate → train → preview → segment → accept loop, through the real widgets."""

import numpy as np
import pytest
from test_widgets_support import (
    messages,
    paint_objects,
    small_image,
    tiny,
    wait_for_training,
    wait_until,
    wait_until_still,
)

from napari_spoco.core.model.checkpoint import load_model

pytestmark = pytest.mark.gui


@pytest.mark.slow
def test_train_with_live_preview_then_segment_accept_and_undo(spoco, qtbot, notes, tmp_path):
    viewer, widget = spoco
    viewer.open_sample("napari-spoco", "tissue_2d")
    image = viewer.layers["synthetic tissue 2D"]
    sample_labels = viewer.layers["synthetic tissue 2D painted labels"]
    data, row = widget.data, widget.data.rows[0]
    assert row.image_combo.currentText() == image.name
    assert row.labels_combo.currentText() == sample_labels.name  # paired by shape

    # Paint five of the sample's objects into a fresh layer, as a user would.
    labels = data.create_labels(row)
    assert labels.data.shape == image.data.shape and not labels.data.any()
    source_ids = np.unique(sample_labels.data)[1:6]
    painted = paint_objects(labels, sample_labels.data, source_ids, data)
    assert painted == [1, 2, 3, 4, 5]
    assert data.update_counts() == [5]

    save_path = tmp_path / "model.pt"
    tiny(widget, save_path, iterations=6, preview=True)
    widget.train.start()
    wait_for_training(qtbot, widget)
    assert messages(notes, "error") == []

    # The live preview wrote both layers in place, under the annotations.
    pca = viewer.layers["embeddings (PCA)"]
    instances = viewer.layers["instances"]
    assert pca.rgb and pca.data.ndim == 3 and pca.data.shape[-1] == 3
    assert pca.data.shape[:2] == instances.data.shape
    assert pca.data.dtype == np.uint8 and pca.data.std() > 0 and pca.opacity > 0
    assert len(np.unique(instances.data[instances.data > 0])) >= 2
    assert viewer.layers.index(instances) < viewer.layers.index(labels)
    assert widget.train.first_preview_seconds is not None
    assert widget.train.loss_plot.losses and len(widget.train.loss_plot.losses) == 6

    loaded = load_model(save_path)
    assert loaded.iteration == 6 and loaded.architecture["features"] == [8, 16]

    # Segment the whole image with the model just trained.
    segment = widget.segment
    segment.image_combo.setCurrentText(image.name)
    # unfilled, so the min-size check below sees the raw segment sizes
    segment.clustering.fill_check.setChecked(False)
    segment.predict()
    wait_until(qtbot, lambda: segment.worker is None)
    assert messages(notes, "error") == []
    result = viewer.layers[f"{image.name} instances"]
    assert result.data.shape == image.data.shape
    assert len(np.unique(result.data)) >= 3
    embeddings = segment.cache.embeddings
    assert embeddings.shape == (8, *image.data.shape)

    # Re-clustering reuses the cached embeddings: same array object, new labels.
    big = int(np.bincount(result.data.ravel())[1:].max())
    segment.clustering.set_method("mws")
    segment.clustering._fields[("mws", "min_size")].setValue(big)
    segment.recluster()
    wait_until(qtbot, lambda: segment.worker is None)
    assert segment.cache.embeddings is embeddings
    reclustered = viewer.layers[f"{image.name} instances"].data
    sizes = np.bincount(reclustered.ravel())[1:]
    assert sizes[sizes > 0].min() >= big

    # Accept the predicted object with most unpainted pixels: one undo step, nothing overwritten.
    before = labels.data.copy()
    unpainted = np.bincount(reclustered[before == 0].ravel())
    unpainted[0] = 0
    chosen = int(np.argmax(unpainted))
    segment.annotation_combo.setCurrentText(labels.name)
    new_id = segment.accept(chosen)
    assert new_id == 6
    changed = labels.data != before
    assert changed.sum() == unpainted[chosen]
    assert np.all(labels.data[changed] == new_id)
    assert np.array_equal(labels.data[before > 0], before[before > 0])
    labels.undo()
    assert np.array_equal(labels.data, before)

    # Accepting the object under the cursor works the same way.
    where = np.argwhere((reclustered == chosen) & (before == 0))[0]
    viewer.cursor.position = tuple(float(c) for c in where)
    assert segment.accept_under_cursor() == 6
    assert labels.data[tuple(where)] == 6


@pytest.mark.slow
def test_pause_resume_push_and_stop_keep_the_iteration_count(spoco, qtbot, notes, tmp_path):
    viewer, widget = spoco
    image, truth = small_image()
    viewer.add_image(image, name="blobs")
    labels = widget.data.create_labels()
    paint_objects(labels, truth, [1, 2], widget.data)
    save_path = tmp_path / "stopped.pt"
    tiny(widget, save_path, iterations=100_000)

    train = widget.train
    worker = train.start()
    iterations = []
    worker.yielded.connect(
        lambda item: iterations.append(item.iteration) if hasattr(item, "loss") else None)
    wait_until(qtbot, lambda: len(iterations) >= 2)

    train.pause()
    pressed_at = train.trainer.iteration
    assert train.pause_button.text() == "Resume"
    # The step running when Pause was pressed still finishes; after it nothing moves.
    paused_at = wait_until_still(qtbot, lambda: train.trainer.iteration,
                                 quiet=max(1.0, 3 * train.last_report.seconds_per_step))
    assert paused_at <= pressed_at + 1
    assert iterations[-1] == paused_at

    # Paint one more object and push it into the paused training.
    paint_objects(labels, truth, [3], widget.data)
    train.push_annotations()
    wait_until(qtbot, lambda: train.trainer.data.objects_per_pair() == [3])

    train.resume()
    wait_until(qtbot, lambda: iterations[-1] >= paused_at + 2)
    assert iterations == list(range(1, len(iterations) + 1))  # no step lost or repeated

    train.stop()
    wait_for_training(qtbot, widget)
    stopped_at = iterations[-1]
    assert stopped_at < 100_000
    loaded = load_model(save_path)
    assert loaded.iteration == stopped_at
    assert any("stopped" in m for m in messages(notes, "info"))
    assert messages(notes, "error") == []


@pytest.mark.slow
def test_live_preview_of_a_3d_stack_shows_the_current_slice(spoco, qtbot, notes, tmp_path):
    viewer, widget = spoco
    viewer.open_sample("napari-spoco", "stardist_3d")
    image = viewer.layers["StarDist nuclei 3D"]
    assert widget.data.rows[0].labels_layer() is not None  # the sample's painted labels
    tiny(widget, tmp_path / "model3d.pt", iterations=3, preview=True)
    widget.train.settings.patch_edit.setText("8, 32, 32")
    viewer.dims.set_current_step(0, 20)
    widget.train.start()
    wait_for_training(qtbot, widget)
    assert messages(notes, "error") == []
    pca = viewer.layers["embeddings (PCA)"]
    instances = viewer.layers["instances"]
    z, y, x = image.data.shape
    assert pca.data.shape == (1, y, x, 3) and instances.data.shape == (1, y, x)
    assert tuple(instances.translate) == (20.0 * image.scale[0], 0.0, 0.0)
    assert pca.data.dtype == np.uint8 and pca.data.std() > 0
    assert load_model(tmp_path / "model3d.pt").architecture["ndim"] == 3


def test_prediction_can_be_cancelled(spoco, qtbot, notes, tmp_path):
    from test_widgets_errors import write_2d_checkpoint

    viewer, widget = spoco
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((1400, 1400), dtype=np.float32), name="large")  # 9 tiles
    widget.use_model(write_2d_checkpoint(tmp_path / "model2d.pt"))
    segment = widget.segment
    segment.image_combo.setCurrentText("large")
    segment.predict()
    segment.cancel()
    wait_until(qtbot, lambda: segment.worker is None)
    assert messages(notes, "error") == []
    assert any("cancelled" in m for m in messages(notes, "info"))
    assert segment.cache is None and "large instances" not in viewer.layers
    assert segment.progress.value() < 9


def test_fine_tune_a_shipped_model(spoco, qtbot, notes, tmp_path):
    from napari_spoco.widgets.train_settings import shipped_models

    models = [m for m in shipped_models() if load_model(m[1]).architecture["ndim"] == 2]
    if not models:
        pytest.skip("no shipped 2D model installed")
    name, path, _ = models[0]
    viewer, widget = spoco
    image, truth = small_image()
    viewer.add_image(image, name="blobs")
    paint_objects(widget.data.create_labels(), truth, [1, 2], widget.data)
    tiny(widget, tmp_path / "tuned.pt", iterations=2)
    settings = widget.train.settings
    settings.source_combo.setCurrentText(f"shipped: {name}")
    assert settings.source_path() == str(path)
    # a tenth of the lr the source was trained with (shipped models: 1e-3), as the CLI does
    expected_lr = load_model(path).config["lr"] / 10
    assert settings.lr_spin.value() == pytest.approx(expected_lr)
    assert not settings.features_edit.isEnabled()  # the source's architecture is used
    widget.train.start()
    wait_for_training(qtbot, widget)
    assert messages(notes, "error") == []
    tuned, source = load_model(tmp_path / "tuned.pt"), load_model(path)
    # the source's network, plus a new foreground head (shipped models have none)
    assert tuned.architecture == {**source.architecture, "foreground": True}
    assert tuned.iteration == 2
    assert tuned.config["lr"] == pytest.approx(expected_lr)


@pytest.mark.gui
def test_the_dock_gives_the_viewer_keys_back_when_it_closes(make_napari_viewer, qtbot):
    from napari_spoco.widgets import SpocoWidget

    viewer = make_napari_viewer()
    users = lambda v: None  # noqa: E731 (a binding the user made before opening the dock)
    viewer.bind_key("n", users)
    from napari.utils.key_bindings import coerce_keybinding as key

    widget = SpocoWidget(viewer)
    assert viewer.keymap[key("n")] is not users and key("s") in viewer.keymap
    widget.shutdown()
    assert viewer.keymap[key("n")] is users  # the user's binding is back
    assert key("s") not in viewer.keymap and key("Shift-A") not in viewer.keymap  # ours gone
