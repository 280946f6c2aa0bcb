"""Lazy (dask, zarr) and large images in the Segment tab: predicted block by block into zarr
stores and shown as dask-backed layers, never read whole into memory (issue 12)."""

import threading
import tracemalloc

import numpy as np
import pytest
import torch

from napari_spoco.core.inference.blockwise import needs_blockwise
from napari_spoco.core.model.normalization import Normalization
from napari_spoco.core.model.unet import UNet
from napari_spoco.widgets.workers import Progress, predict_and_segment


def tiny_loader(ndim=2):
    torch.manual_seed(0)
    model = UNet(1, 4, ndim, features=(4, 8), norm="group", num_groups=2).eval()
    normalization = Normalization(mean=(0.5,), std=(0.3,))

    class Source:  # what a checkpoint tells the clustering settings
        config = {"loss": {"delta_v": 0.5, "delta_d": 2.0}}
        architecture = model.config
        annotations = {"median_object_size": 100.0}

    return lambda: (model, normalization, Source())


def segment_lazily(side, store):
    """Segment a lazy ``side``² float64 dask image; the result and its numpy peak memory."""
    import dask.array as da

    image = da.random.RandomState(0).random((side, side), chunks=512)
    tracemalloc.start()
    try:
        result = predict_and_segment(tiny_loader(), image, None, "cpu", "mws", {}, Progress(),
                                     threading.Event(), blockwise_store=lambda: store,
                                     block_shape=256)  # a block's work stays far below it
        return image, result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_dask_image_larger_than_the_allowed_memory_is_segmented_block_by_block(tmp_path):
    da = pytest.importorskip("dask.array")
    allowed = 48 * 2**20  # of numpy memory (what tracemalloc sees; torch's is its own)
    _, _, small_peak = segment_lazily(1536, tmp_path / "small")
    image, result, peak = segment_lazily(3072, tmp_path / "large")
    # 72 MiB image, 144 MiB of embeddings: neither was ever held whole
    assert image.nbytes > allowed and peak < allowed, f"peak {peak / 2**20:.0f} MiB"
    assert peak < 1.3 * small_peak  # 4x the pixels, the same memory: it does not grow
    assert result["blocks"] == 144
    for name in ("embeddings", "instances", "pca"):
        assert isinstance(result[name], da.Array)
    assert result["instances"].shape == image.shape and result["pca"].shape == (*image.shape, 3)
    assert result["embeddings"].shape == (4, *image.shape)
    corner = np.asarray(result["instances"][:256, :256])
    assert corner.max() > 0 and result["segments"] > 1


def test_small_in_memory_images_stay_in_memory_and_lazy_ones_do_not():
    assert not needs_blockwise((512, 512), 16, lazy=False)
    assert needs_blockwise((512, 512), 16, lazy=True)
    assert needs_blockwise((512, 2048, 2048), 16, lazy=False)  # 32 GiB of embeddings
    image = np.random.default_rng(0).random((48, 40), dtype=np.float32)
    result = predict_and_segment(tiny_loader(), image, None, "cpu", "mws", {}, Progress(),
                                 threading.Event(), blockwise_store=lambda: 1 / 0)
    assert isinstance(result["instances"], np.ndarray) and "blocks" not in result


@pytest.mark.gui
def test_the_segment_tab_shows_a_dask_image_as_dask_layers(spoco, qtbot, notes, tmp_path):
    da = pytest.importorskip("dask.array")
    from test_widgets_errors import write_2d_checkpoint
    from test_widgets_support import messages, small_image, wait_until

    viewer, widget = spoco
    image = da.from_array(small_image()[0], chunks=32)
    viewer.add_image(image, name="lazy")
    widget.use_model(write_2d_checkpoint(tmp_path / "a.pt"))
    segment = widget.segment
    segment.image_combo.setCurrentText("lazy")
    assert segment.predict() is not None
    wait_until(qtbot, lambda: segment.worker is None)
    assert messages(notes, "error") == []
    instances = viewer.layers["lazy instances"]
    pca = viewer.layers["lazy embeddings (PCA)"]
    assert isinstance(instances.data, da.Array) and isinstance(pca.data, da.Array)
    assert "block by block" in segment.status.text()
    store = segment.cache and next(iter(__import__(
        "napari_spoco.widgets.segment_widget", fromlist=["_STORES"])._STORES.values()))
    assert (store / "labels.zarr").exists()
    # a second run replaces the store the layers read, and removes the first one
    assert segment.predict() is not None
    wait_until(qtbot, lambda: segment.worker is None)
    assert not store.exists() and isinstance(viewer.layers["lazy instances"].data, da.Array)
    assert np.asarray(viewer.layers["lazy instances"].data).max() > 0


def test_suggest_next_refuses_an_image_whose_embeddings_do_not_fit():
    from types import SimpleNamespace

    from napari_spoco.core.errors import SpocoInputError
    from napari_spoco.widgets.suggest_panel import _check_fits

    snapshot = SimpleNamespace(architecture={"out_channels": 16})
    layer = SimpleNamespace(name="stack")
    with pytest.raises(SpocoInputError, match="too large for Suggest next"):
        _check_fits(SimpleNamespace(spatial_shape=(128, 1024, 1024), layer=layer), snapshot)
    _check_fits(SimpleNamespace(spatial_shape=(512, 512), layer=layer), snapshot)
