"""Tiled prediction: equal to a whole-image pass, any size, lazy in and out, cancellable."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import zarr

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.inference.prediction import (
    PredictionCancelled,
    predict_embeddings,
    predict_from_checkpoint,
    predict_two_views,
)
from napari_spoco.core.inference.tiling import plan_tiles, window
from napari_spoco.core.model.checkpoint import LoadedModel, save_checkpoint
from napari_spoco.core.model.normalization import Normalization
from napari_spoco.core.model.unet import UNet


def small_unet(ndim=2, in_channels=1, norm=None, seed=0, features=(4, 8), **kwargs):
    torch.manual_seed(seed)
    return UNet(in_channels, 4, ndim, features=features, norm=norm, **kwargs)


def exact_overlap(model) -> tuple[int, ...]:
    """Overlap whose zero-weight margin (a quarter) covers half the receptive field."""
    return tuple(4 * -(-(field - 1) // 2) for field in model.receptive_field)


def direct(model, image_cf: np.ndarray) -> np.ndarray:
    """The network on the whole (channels-first) image at once: the reference."""
    with torch.no_grad():
        return model.eval()(torch.from_numpy(image_cf[None].astype(np.float32)))[0].numpy()


class RecordingArray:
    """A lazy array that records every region read and refuses to be converted whole."""

    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.read_sizes = []

    def __getitem__(self, index):
        part = self.array[index]
        self.read_sizes.append(part.size)
        return part

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole image was converted to an array")


def test_tile_windows_sum_to_one_and_starts_align_with_pooling():
    rng = np.random.default_rng(0)
    for _ in range(200):
        ndim = int(rng.integers(1, 4))
        shape = tuple(int(s) for s in rng.integers(1, 120, ndim))
        multiple = tuple(int(2 ** p) for p in rng.integers(0, 4, ndim))
        layout = plan_tiles(shape, tuple(rng.integers(1, 60, ndim)),
                            tuple(rng.integers(0, 40, ndim)), multiple)
        total = np.zeros(shape)
        for spatial, weights in layout.tiles():
            total[spatial] += window(weights)
            assert all(s.start % m == 0 for s, m in zip(spatial, multiple))
        np.testing.assert_allclose(total, 1.0, atol=1e-5)


def test_tile_window_is_zero_at_cut_edges_and_one_at_image_borders():
    layout = plan_tiles((100,), 48, 16, 1)
    assert layout.starts == ((0, 32, 52),) and layout.stops == ((48, 80, 100),)
    first, middle, last = layout.weights[0]
    margin = layout.overlap[0] // 4
    assert first[0] == 1 and last[-1] == 1  # image borders keep full weight
    assert np.all(first[-margin:] == 0) and np.all(middle[:margin] == 0)
    assert np.all(middle[-margin:] == 0) and np.all(last[:margin] == 0)


def test_whole_image_prediction_is_the_network_on_the_normalised_image():
    model = small_unet()
    image = np.random.default_rng(1).uniform(100, 300, (37, 45)).astype(np.uint16)
    norm = Normalization.fit([image])
    result = predict_embeddings(model, image, norm, tile_shape=512, device="cpu")
    expected = direct(model, norm.apply(image)[None])
    assert result.shape == (4, 37, 45) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_tiled_2d_equals_whole_image_for_odd_shapes(batch_size):
    model = small_unet()
    image = np.random.default_rng(2).normal(size=(157, 131)).astype(np.float32)
    overlap = exact_overlap(model)
    tiled = predict_embeddings(model, image, None, tile_shape=64, overlap=overlap,
                               batch_size=batch_size, device="cpu")
    whole = direct(model, image[None])
    assert tiled.shape == whole.shape
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_tiled_3d_anisotropic_equals_whole_image():
    model = small_unet(ndim=3, features=(2, 4), anisotropic_levels=1)
    image = np.random.default_rng(3).normal(size=(53, 77, 75)).astype(np.float32)
    overlap = exact_overlap(model)
    tile = tuple(2 * o for o in overlap)
    layout = plan_tiles(image.shape, tile, overlap, model.required_multiple)
    assert all(len(starts) == 2 for starts in layout.starts)  # really tiled along every axis
    tiled = predict_embeddings(model, image, None, tile_shape=tile, overlap=overlap,
                               device="cpu")
    np.testing.assert_allclose(tiled, direct(model, image[None]), atol=1e-4)


def test_too_small_overlap_shows_seams():
    # The counterpart of the equality tests: they would pass for any blending otherwise.
    model = small_unet()
    image = np.random.default_rng(2).normal(size=(130, 130)).astype(np.float32)
    tiled = predict_embeddings(model, image, None, tile_shape=64, overlap=4, device="cpu")
    assert np.abs(tiled - direct(model, image[None])).max() > 1e-3


def seam_distance(layout) -> np.ndarray:
    """Per pixel, the distance to the nearest tile cut (a tile start or stop inside the image)."""
    distance = np.full(layout.shape, np.inf)
    for axis, (starts, stops) in enumerate(zip(layout.starts, layout.stops)):
        cuts = np.array([c for c in starts[1:] + stops[:-1]])
        along = np.abs(np.arange(layout.shape[axis])[:, None] - cuts[None]).min(axis=1)
        view = [np.newaxis] * len(layout.shape)
        view[axis] = slice(None)
        distance = np.minimum(distance, along[tuple(view)])
    return distance


def test_default_tiles_of_the_shipped_model_are_exact_at_their_seams(monkeypatch):
    # The issue-11 seams: the old default margin (16 px) was a third of the shipped 2D model's
    # context (48 px). The default layout now keeps the context as its margin; a small budget
    # makes a 400² image need 2×2 tiles.
    from napari_spoco.core.inference import prediction
    from napari_spoco.core.model.checkpoint import load_model
    from napari_spoco.models import resolve_checkpoint

    loaded = load_model(resolve_checkpoint("ovules_2d"))
    monkeypatch.setattr(prediction, "TILE_VOXELS", 200 * 200)
    image = np.random.default_rng(5).normal(size=(400, 392)).astype(np.float32)
    tile, overlap, margin = prediction.default_tiling(loaded.model, image.shape)
    assert margin == (48, 48)
    layout = plan_tiles(image.shape, tile, overlap, loaded.model.required_multiple, margin)
    assert [len(s) for s in layout.starts] == [2, 2]
    tiled = predict_embeddings(loaded.model, image, loaded.normalization, device="cpu")
    # the reference: one pass over the whole image with the same frozen group norm
    network = prediction.frozen_network(loaded.model, image, loaded.normalization,
                                        device="cpu")
    normalised = loaded.normalization.apply(image, None).astype(np.float32)
    with torch.inference_mode():
        whole = network(torch.from_numpy(normalised)[None, None])[0, :tiled.shape[0]].numpy()
    difference = np.abs(tiled - whole).max(axis=0)
    near_seams = seam_distance(layout) < 8
    assert near_seams.sum() > 1000
    assert difference[near_seams].max() < 1e-4  # stated tolerance: float32 rounding
    assert difference.max() < 1e-4
    # The old default (overlap 64, margin 16) on the same tiles is far from exact at the seams.
    old = predict_embeddings(loaded.model, image, loaded.normalization, device="cpu",
                             tile_shape=tile, overlap=64)
    assert np.abs(old - whole).max(axis=0)[near_seams].max() > 1e-2


def test_default_tiling_is_one_pass_up_to_the_budget_and_exact_beyond():
    from napari_spoco.core.inference.prediction import TILE_VOXELS, default_tiling

    model = UNet(1, 16, 3, features=(16, 32, 64), anisotropic_levels=1)
    context = tuple(-(-f // 2) for f in model.receptive_field)
    assert default_tiling(model, (32, 160, 160)) == ((32, 160, 160), (32, 55, 55), context)
    for shape in [(64, 256, 256), (128, 1024, 1024), (20, 2048, 2048)]:
        tile, overlap, margin = default_tiling(model, shape)
        shortest = [min(s, -(-3 * o // m) * m)  # three overlaps, on the pooling grid
                    for s, o, m in zip(shape, overlap, model.required_multiple)]
        assert np.prod(tile) <= max(TILE_VOXELS, np.prod(shortest))
        assert margin == context and all(o >= 2 * m + 2 for o, m in zip(overlap, margin))
        assert all(t % m == 0 or t == s for t, m, s in zip(tile, model.required_multiple, shape))
        assert all(t >= low for t, low in zip(tile, shortest))


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (2, 9, 7)])
def test_images_smaller_than_tile_and_pooling_factor(shape):
    model = small_unet(ndim=len(shape))
    image = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    result = predict_embeddings(model, image, None, device="cpu")
    assert result.shape == (4, *shape) and np.isfinite(result).all()


def test_zarr_in_zarr_out_equals_numpy_and_reads_one_tile_at_a_time(tmp_path):
    model = small_unet()
    image = np.random.default_rng(5).normal(size=(150, 140)).astype(np.float32)
    overlap = exact_overlap(model)
    expected = predict_embeddings(model, image, None, tile_shape=64, overlap=overlap,
                                  device="cpu")
    stored = zarr.create_array(tmp_path / "in.zarr", shape=image.shape, chunks=(32, 32),
                               dtype="f4")
    stored[...] = image
    lazy = RecordingArray(stored)
    out = zarr.create_array(tmp_path / "out.zarr", shape=(4, *image.shape),
                            chunks=(4, 32, 32), dtype="f4", fill_value=7.0)
    result = predict_embeddings(model, lazy, None, tile_shape=64, overlap=overlap,
                                device="cpu", out=out)
    assert result is out
    np.testing.assert_allclose(out[...], expected, atol=1e-6)
    # One read per tile, each of a tile's size (the last of an axis may be 1 pixel longer).
    assert len(lazy.read_sizes) == len(plan_tiles(image.shape, 64, overlap, 2))
    assert max(lazy.read_sizes) <= 65 * 65


def test_channel_axis_last_equals_channels_first():
    model = small_unet(in_channels=2)
    rng = np.random.default_rng(6)
    image_last = np.stack([rng.normal(10, 2, (40, 50)), rng.normal(-3, 5, (40, 50))], axis=-1)
    norm = Normalization.fit([image_last], channel_axis=-1)
    from_last = predict_embeddings(model, image_last, norm, channel_axis=-1, tile_shape=32,
                                   overlap=16, device="cpu")
    image_first = np.moveaxis(image_last, -1, 0)
    norm_first = Normalization(norm.mean, norm.std)
    from_first = predict_embeddings(model, image_first, norm_first, channel_axis=0,
                                    tile_shape=32, overlap=16, device="cpu")
    np.testing.assert_allclose(from_last, from_first, atol=1e-6)
    whole = direct(model, norm_first.apply(image_first, 0))
    assert np.abs(from_first - whole).max() < 0.5  # sanity: same network, same input


@pytest.mark.parametrize(
    ("shape", "channel_axis", "message"),
    [((2, 30, 30), None, "channel_axis"), ((30, 30), None, "channel"), ((30,), None, "2D")],
)
def test_image_that_does_not_fit_the_model_is_refused(shape, channel_axis, message):
    model = small_unet(in_channels=3 if shape == (30, 30) else 1)
    with pytest.raises(SpocoInputError, match=message):
        predict_embeddings(model, np.zeros(shape, np.float32), None,
                           channel_axis=channel_axis, device="cpu")


def test_nan_in_image_is_refused():
    image = np.zeros((20, 20), np.float32)
    image[3, 4] = np.nan
    with pytest.raises(SpocoInputError, match="NaN"):
        predict_embeddings(small_unet(), image, None, device="cpu")


def test_progress_reports_every_tile_and_can_cancel():
    model = small_unet()
    image = np.zeros((100, 100), np.float32)
    calls = []
    predict_embeddings(model, image, None, tile_shape=48, overlap=16, batch_size=2,
                       device="cpu", progress=lambda done, total: calls.append((done, total)))
    total = calls[-1][1]
    assert total == 9 and calls[-1][0] == total
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)

    seen = []

    def stop_after_first(done, total):
        seen.append(done)
        return False

    with pytest.raises(PredictionCancelled):
        predict_embeddings(model, image, None, tile_shape=48, overlap=16, device="cpu",
                           progress=stop_after_first)
    assert seen == [1]

    cancel = threading.Event()
    cancel.set()
    for stop in (cancel, lambda: True):
        with pytest.raises(PredictionCancelled):
            predict_embeddings(model, image, None, tile_shape=48, device="cpu", cancel=stop,
                               progress=lambda *a: pytest.fail("no tile may run once cancelled"))
    checks = []
    predict_embeddings(model, image, None, tile_shape=48, overlap=16, device="cpu",
                       cancel=lambda: checks.append(1) or False)
    assert len(checks) == total  # asked before every batch, and a False lets it run


def test_batch_norm_network_predicts_in_eval_mode_and_keeps_its_mode():
    model = small_unet(norm="batch")
    with torch.no_grad():  # non-trivial running statistics
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    model.train()
    image = np.random.default_rng(7).normal(size=(150, 150)).astype(np.float32)
    tiled = predict_embeddings(model, image, None, tile_shape=80, overlap=exact_overlap(model),
                               device="cpu")
    assert model.training
    np.testing.assert_allclose(tiled, direct(model, image[None]), atol=1e-4)


def _loaded(model, momentum, norm):
    return LoadedModel(model=model, momentum_model=momentum, normalization=norm, config={},
                       architecture=model.config, iteration=0, path=None)


def test_two_views_f_on_image_g_on_augmented_copy_reproducible_by_seed():
    model, momentum = small_unet(seed=0), small_unet(seed=1)
    image = np.random.default_rng(8).normal(5, 2, (40, 40)).astype(np.float32)
    norm = Normalization.fit([image])
    loaded = _loaded(model, momentum, norm)
    emb_f, emb_g = predict_two_views(loaded, image, seed=3, device="cpu")
    np.testing.assert_allclose(emb_f, predict_embeddings(model, image, norm, device="cpu"))
    clean_g = predict_embeddings(momentum, image, norm, device="cpu")
    assert np.abs(emb_g - clean_g).max() > 1e-3  # g saw an augmented copy
    np.testing.assert_array_equal(emb_g, predict_two_views(loaded, image, seed=3,
                                                           device="cpu")[1])
    with pytest.raises(SpocoInputError, match="momentum"):
        predict_two_views(_loaded(model, None, norm), image, device="cpu")


def test_predict_from_checkpoint_uses_the_stored_network_and_statistics(tmp_path):
    model = small_unet(norm="group")
    image = np.random.default_rng(9).normal(50, 10, (30, 30)).astype(np.float32)
    norm = Normalization.fit([image])
    path = save_checkpoint(tmp_path / "m.pt", {
        "architecture": model.config, "model_state": model.state_dict(),
        "momentum_state": model.state_dict(), "normalization": norm.to_dict(),
    })
    result = predict_from_checkpoint(path, image, device="cpu")
    np.testing.assert_allclose(result, direct(model, norm.apply(image)[None]), atol=1e-5)
