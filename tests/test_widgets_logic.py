"""The widgets' Qt-free rules: label ids, regions, schedules, accept, patch defaults."""

import numpy as np
import pytest

from napari_spoco.widgets import _logic
from napari_spoco.widgets.preview import PreviewSchedule


def test_next_free_label_is_one_above_the_largest_id_over_all_layers():
    a = np.array([[0, 3], [7, 0]])
    b = np.array([[12, 0]])
    assert _logic.next_free_label([a, b]) == 13
    assert _logic.next_free_label([np.zeros((2, 2), int)]) == 1
    assert _logic.next_free_label([]) == 1


def test_next_free_label_ignores_a_large_background_id_and_skips_it():
    painted = np.array([[65535, 65535, 4, 0]])
    # napari's own "M" (max + 1) would give 65536; the background brush must not push ids up.
    assert _logic.next_free_label([painted], background_id=65535) == 5
    assert _logic.next_free_label([np.array([[2, 1]])], background_id=3) == 4


def test_count_objects_excludes_unlabeled_and_background():
    labels = np.array([[0, 5, 5], [9, 65535, 0], [9, 2, 2]])
    assert _logic.count_objects(labels) == 4
    assert _logic.count_objects(labels, background_id=65535) == 3
    assert _logic.count_objects(np.zeros((3, 3), np.uint32)) == 0


def test_spatial_shape_drops_the_channel_axis():
    assert _logic.spatial_shape((3, 64, 32), 0) == (64, 32)
    assert _logic.spatial_shape((64, 32, 3), -1) == (64, 32)
    assert _logic.spatial_shape((10, 64, 32), None) == (10, 64, 32)
    assert _logic.guess_channel_axis((64, 32, 3), rgb=True) == 2
    assert _logic.guess_channel_axis((2, 64, 32), rgb=False, model_ndim=2) == 0
    assert _logic.guess_channel_axis((10, 64, 32), rgb=False, model_ndim=3) is None


def test_default_learning_rate_is_ten_times_lower_when_fine_tuning():
    assert _logic.default_learning_rate(False) == pytest.approx(2e-4)
    assert _logic.default_learning_rate(True) == pytest.approx(_logic.default_learning_rate(False)
                                                               / 10)


@pytest.mark.parametrize(
    "shape, device, patch, batch",
    [
        ((512, 512), "cpu", (128, 128), 4),
        ((512, 512), "cuda", (256, 256), 8),
        ((100, 90), "cpu", (96, 88), 4),  # clipped to the image, rounded down to 8
        ((31, 61, 57), "cpu", (16, 56, 56), 1),
        ((5, 300, 300), "cuda", (5, 128, 128), 2),  # too thin for a multiple of 8: kept whole
    ],
)
def test_default_patch_and_batch_fit_image_and_device(shape, device, patch, batch):
    assert _logic.default_patch_and_batch(shape, device) == (patch, batch)


def test_eta_and_progress_text():
    assert _logic.eta_seconds(10, 110, 0.5) == pytest.approx(50.0)
    assert _logic.eta_seconds(110, 110, 0.5) == 0.0
    assert _logic.eta_seconds(3, 10, float("nan")) == 0.0
    assert _logic.format_duration(42) == "42 s"
    assert _logic.format_duration(185) == "3 min 05 s"
    assert _logic.format_duration(2 * 3600 + 7 * 60 + 10) == "2 h 07 min"
    assert _logic.progress_text(10, 110, 0.12345, 0.5) == "10/110  loss 0.1235  ETA 50 s"


def test_preview_due_first_at_once_then_every_interval():
    assert _logic.preview_due(100.0, None, 3.0)
    assert not _logic.preview_due(102.9, 100.0, 3.0)
    assert _logic.preview_due(103.0, 100.0, 3.0)


def test_preview_schedule_hands_out_the_newest_request_once_per_interval():
    schedule = PreviewSchedule(interval=2.0)
    assert schedule.take_due(0.0) is None  # nothing posted yet
    schedule.post("view A")
    schedule.post("view B")
    assert schedule.take_due(10.0) == "view B"
    assert schedule.take_due(11.0) is None
    assert schedule.take_due(12.0) == "view B"
    schedule.enabled = False
    assert schedule.take_due(100.0) is None
    schedule.enabled = True
    schedule.restart()
    assert schedule.take_due(100.5) == "view B"


def test_slow_previews_are_spaced_by_their_cost():
    schedule = PreviewSchedule(interval=2.0, cost_ratio=3.0)
    schedule.post("view")
    assert schedule.take_due(0.0) == "view"
    schedule.last_cost = 1.5  # a preview took 1.5 s: the next one waits 4.5 s, not 2 s
    assert schedule.take_due(4.4) is None
    assert schedule.take_due(4.5) == "view"
    schedule.last_cost = 0.1  # cheap again: back to the interval
    assert schedule.take_due(6.4) is None
    assert schedule.take_due(6.5) == "view"


def test_visible_region_of_a_2d_view_is_the_visible_window():
    corners = np.array([[10.2, 20.0], [49.7, 99.0]])
    read, shown, offset = _logic.visible_region((64, 128), corners, (0, 0), (0, 1), 10**6)
    assert read == (slice(10, 51), slice(20, 100))
    assert shown == (slice(0, 41), slice(0, 80))
    assert offset == (10, 20)


def test_visible_region_is_clipped_to_the_image_and_cut_to_the_budget():
    corners = np.array([[-50, -50], [500, 500]])
    read, _, offset = _logic.visible_region((100, 300), corners, (0, 0), (0, 1), 64 * 64)
    assert read == (slice(18, 82), slice(118, 182))  # 64 × 64 around the centre
    assert offset == (18, 118)


def test_visible_region_of_a_3d_stack_takes_a_slab_around_the_current_slice():
    corners = np.array([[0, 0, 0], [30, 40, 50]])
    point = (7.4, 0, 0)
    read, shown, offset = _logic.visible_region(
        (31, 41, 51), corners, point, displayed=(1, 2), max_pixels=10**6, context=(8, 1, 1)
    )
    assert read[0] == slice(3, 11)  # 8 slices with the current one (7) inside
    assert shown[0] == slice(4, 5)  # the current slice, kept as a length-1 axis
    assert offset == (7, 0, 0)
    # At the top of the stack the slab is shifted, not shortened.
    read, shown, _ = _logic.visible_region((31, 41, 51), corners, (30, 0, 0), (1, 2), 10**6,
                                           (8, 1, 1))
    assert read[0] == slice(23, 31) and shown[0] == slice(7, 8)


def test_accept_indices_never_touch_painted_pixels():
    predicted = np.array([[4, 4, 0], [4, 1, 4]])
    annotations = np.array([[0, 9, 0], [0, 0, 0]])
    rows, cols = _logic.accept_indices(predicted, annotations, 4)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 0), (1, 2)]
    with pytest.raises(ValueError):
        _logic.accept_indices(predicted, annotations[:1], 4)


def test_object_at_rounds_positions_and_is_zero_outside():
    labels = np.array([[1, 2], [3, 4]])
    assert _logic.object_at(labels, (0.6, 0.4)) == 3
    assert _logic.object_at(labels, (5.0, 12.0, 1.2, 1.4)) == 4  # leading world axes ignored
    assert _logic.object_at(labels, (-1, 0)) == 0
    assert _logic.object_at(labels, (0, 2)) == 0


def test_decimate_keeps_short_curves_and_averages_long_ones():
    x, y = _logic.decimate([1.0, 2.0, 3.0], 10)
    assert x.tolist() == [0, 1, 2] and y.tolist() == [1, 2, 3]
    values = np.arange(100, dtype=float)
    x, y = _logic.decimate(values, 10)
    assert len(y) == 10
    assert y[0] == pytest.approx(np.mean(values[:10]))
    assert x[0] == pytest.approx(4.5)
    assert y.mean() == pytest.approx(values.mean())


def test_out_of_memory_detection():
    assert _logic.is_out_of_memory(MemoryError())
    assert _logic.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not _logic.is_out_of_memory(RuntimeError("shape mismatch"))

    class OutOfMemoryError(RuntimeError):
        pass

    assert _logic.is_out_of_memory(OutOfMemoryError("anything"))


def test_safe_store_name():
    assert _logic.safe_store_name("tissue 2D painted/labels") == "tissue_2D_painted_labels"
    assert _logic.safe_store_name("a b", taken=["a_b"]) == "a_b_2"
    assert _logic.safe_store_name("***") == "labels"


def test_result_layers_are_one_set_per_image_and_never_a_users_layer():
    assert _logic.result_layer_names("blobs") == {"pca": "blobs embeddings (PCA)",
                                                   "instances": "blobs instances"}
    # an output layer of that name is reused (updated in place) ...
    taken = [("blobs", False), ("blobs instances", True), ("blobs embeddings (PCA)", True)]
    assert _logic.result_layer_names("blobs", taken)["instances"] == "blobs instances"
    # ... a layer of the user's is not: the result goes next to it
    taken = [("blobs", False), ("blobs instances", False)]
    names = _logic.result_layer_names("blobs", taken)
    assert names == {"pca": "blobs embeddings (PCA)", "instances": "blobs instances (spoco)"}
    assert _logic.output_layer_name("instances", [("instances", False),
                                                  ("instances (spoco)", False)]) \
        == "instances (spoco) (spoco)"
    assert _logic.output_layer_name("instances", [("instances", True)]) == "instances"


def test_preview_layers_keep_a_users_layer_of_the_same_name():
    from types import SimpleNamespace

    from napari_spoco.widgets.data_widget import OUTPUT_FLAG
    from napari_spoco.widgets.preview_layers import preview_layer_names

    def layer(name, output):
        return SimpleNamespace(name=name, metadata={OUTPUT_FLAG: True} if output else {})

    viewer = SimpleNamespace(layers=[layer("instances", False), layer("embeddings (PCA)", True)])
    assert preview_layer_names(viewer) == ("embeddings (PCA)", "instances (spoco)")
    assert preview_layer_names(SimpleNamespace(layers=[])) == ("embeddings (PCA)", "instances")


def test_accept_is_enabled_only_once_something_is_segmented():
    assert not _logic.segment_buttons(busy=False, cached=False, segmented=False)["accept"]
    assert _logic.segment_buttons(busy=False, cached=True, segmented=True)["accept"]
    running = _logic.segment_buttons(busy=True, cached=False, segmented=False)
    assert running == {"predict": False, "cancel": True, "recluster": False, "accept": False}
    done = _logic.segment_buttons(busy=False, cached=True, segmented=True)
    assert done == {"predict": True, "cancel": False, "recluster": True, "accept": True}


def test_instances_are_drawn_as_outlines():
    assert _logic.INSTANCES_CONTOUR > 0


def test_status_line_shows_the_whole_error():
    from napari_spoco.widgets.notifications import status_error_text

    long = "x" * 500
    assert status_error_text(long) == f"Error: {long}"


def test_clustering_form_fills_dropped_small_pieces_by_default(qtbot):
    # Mutex watershed leaves 1-4 pixel pieces on blurred boundaries; min_size alone turns them
    # into holes, so the form asks for them to be filled from their neighbours.
    from synthetic_embeddings import make_embeddings

    from napari_spoco.core.clustering import segment
    from napari_spoco.widgets.clustering_form import ClusteringForm

    form = ClusteringForm()
    qtbot.addWidget(form)
    form._fields[("mws", "min_size")].setValue(30)
    method, params = form.method_and_params()
    assert (method, params) == ("mws", {"min_size": 30, "merge": False, "fill": True})

    embeddings, _ = make_embeddings((96, 96), 12, boundary_blur=1.0, seed=3)
    holes = segment(embeddings, method, min_size=30, fill=False)
    filled = segment(embeddings, method, **params)
    assert (holes == 0).any()
    assert (filled > 0).all()

    form.fill_check.setChecked(False)
    assert form.method_and_params()[1] == {"min_size": 30, "merge": False, "fill": False}


def test_dock_and_cli_decide_the_same_clustering_for_one_checkpoint(qtbot, tmp_path):
    # The form's untouched defaults ("auto" size, fill, foreground on) must leave every
    # decision to core.segmentation, exactly as `napari-spoco segment` with no option does.
    import argparse

    from training_support import blobs, tiny

    from napari_spoco.cli.segment import add_parser, settings_from_args
    from napari_spoco.core.inference.segmentation import settings_for
    from napari_spoco.core.model.checkpoint import load_model
    from napari_spoco.core.training import Trainer
    from napari_spoco.widgets.clustering_form import ClusteringForm

    image, truth = blobs()
    truth[40:44, 40:46] = 99
    Trainer([(image, truth)], tiny(iterations=0, background_id=99)).save(tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    form = ClusteringForm()
    qtbot.addWidget(form)
    method, params = form.method_and_params()
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["segment", "--checkpoint", "m.pt", "--image", "x.tif", "--out",
                              "s.tif"])
    cli = settings_from_args(args, loaded, 2)
    assert settings_for(loaded, method=method, ndim=2, **params) == cli
    assert cli.use_foreground and cli.min_size == 28  # a fifth of the 144-pixel objects
