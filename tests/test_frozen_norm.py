"""Group norm frozen to image-wide statistics: exact tiling for the default (group norm) network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.inference.prediction import (
    frozen_network,
    predict_embeddings,
    predict_two_views,
)
from napari_spoco.core.model.checkpoint import LoadedModel
from napari_spoco.core.model.frozen_norm import (
    FrozenGroupNorm,
    calibration_regions,
    freeze_group_norm,
    has_group_norm,
)
from napari_spoco.core.model.normalization import Normalization
from napari_spoco.core.model.unet import UNet


def group_norm_unet(ndim=2, seed=0, features=(4, 8), **kwargs):
    """A small group-norm U-Net whose norm affines are random, so the statistics matter."""
    torch.manual_seed(seed)
    model = UNet(1, 4, ndim, features=features, norm="group", num_groups=2, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-1.0, 1.0)
    return model


def gradient_image(shape, seed=0) -> np.ndarray:
    """Noise whose level and contrast change strongly across the image: per-tile stats differ."""
    rng = np.random.default_rng(seed)
    ramps = np.meshgrid(*(np.linspace(0, 1, s) for s in shape), indexing="ij")
    return (rng.normal(size=shape) * (0.2 + 3 * ramps[-1]) + 5 * ramps[-2]).astype(np.float32)


def exact_overlap(model) -> tuple[int, ...]:
    return tuple(4 * -(-(field - 1) // 2) for field in model.receptive_field)


def direct(model, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(image[None, None]))[0].numpy()


def test_frozen_group_norm_on_its_calibration_batch_is_group_norm_of_the_pooled_input():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(3, 6, eps=1e-4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    single = torch.randn(1, 6, 7, 9) * 3 + 2
    frozen = freeze_group_norm(norm, single)
    assert isinstance(frozen, FrozenGroupNorm)
    torch.testing.assert_close(frozen(single), norm(single), atol=1e-5, rtol=1e-5)
    # Several tiles: their pooled statistics are those of all tiles side by side in one input.
    tiles = torch.randn(3, 6, 5, 8) * torch.tensor([1.0, 4.0, 0.5]).view(3, 1, 1, 1)
    side_by_side = torch.cat(list(tiles), dim=-1)[None]
    frozen = freeze_group_norm(norm, tiles)
    torch.testing.assert_close(torch.cat(list(frozen(tiles)), dim=-1)[None],
                               norm(side_by_side), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["sequential", "live"])
def test_network_calibrated_on_the_whole_image_reproduces_the_live_network(method):
    model = group_norm_unet()
    image = gradient_image((70, 90))
    frozen = frozen_network(model, image, device="cpu", method=method)
    assert not has_group_norm(frozen) and has_group_norm(model)
    np.testing.assert_allclose(direct(frozen, image), direct(model, image), atol=1e-4)


def test_tiled_prediction_is_tile_invariant_with_image_statistics_only():
    model = group_norm_unet()
    image = gradient_image((160, 144))
    overlap = exact_overlap(model)
    settings = dict(overlap=overlap, calibration_tile_shape=48, device="cpu")
    image_a = predict_embeddings(model, image, tile_shape=64, **settings)
    image_b = predict_embeddings(model, image, tile_shape=(96, 80), batch_size=2, **settings)
    tile_a = predict_embeddings(model, image, tile_shape=64, groupnorm="tile", **settings)
    tile_b = predict_embeddings(model, image, tile_shape=(96, 80), groupnorm="tile", **settings)
    frozen = frozen_network(model, image, calibration_tile_shape=48, device="cpu")
    np.testing.assert_allclose(image_a, direct(frozen, image), atol=1e-4)
    np.testing.assert_allclose(image_a, image_b, atol=1e-4)
    # Per-tile statistics: the same network gives a tiling-dependent answer.
    assert np.abs(tile_a - tile_b).max() > 0.1


def test_frozen_network_stays_close_to_the_live_network_on_the_whole_image():
    model = group_norm_unet()
    image = gradient_image((160, 144))
    live = direct(model, image)
    frozen = direct(frozen_network(model, image, calibration_tile_shape=48, device="cpu"), image)
    spread = live.std(axis=(1, 2)).mean()
    # Measured 0.05 for a spread of 0.48 (8 of 12 tiles of 48², docs/method.md "Prediction").
    assert np.abs(frozen - live).mean() < 0.25 * spread


def test_anisotropic_3d_tiling_with_frozen_group_norm_equals_whole_pass():
    model = group_norm_unet(ndim=3, features=(2, 4), anisotropic_levels=1)
    image = gradient_image((56, 80, 78), seed=1)
    overlap = exact_overlap(model)
    tile = tuple(2 * o for o in overlap)  # smaller than the image along every axis
    tiled = predict_embeddings(model, image, tile_shape=tile, overlap=overlap,
                               calibration_tile_shape=(28, 40, 40), device="cpu")
    frozen = frozen_network(model, image, calibration_tile_shape=(28, 40, 40), device="cpu")
    np.testing.assert_allclose(tiled, direct(frozen, image), atol=1e-4)


def test_callers_model_is_left_untouched():
    model = group_norm_unet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    image = gradient_image((100, 100))
    predict_embeddings(model, image, tile_shape=48, overlap=16, calibration_tile_shape=40,
                       device="cpu")
    assert model.training and [type(m) for m in model.modules()] == types
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)


def test_zarr_output_uses_the_same_frozen_network(tmp_path):
    model = group_norm_unet()
    image = gradient_image((120, 110))
    settings = dict(tile_shape=64, overlap=exact_overlap(model), calibration_tile_shape=48,
                    device="cpu")
    expected = predict_embeddings(model, image, **settings)
    out = zarr.create_array(tmp_path / "out.zarr", shape=(4, *image.shape), chunks=(4, 32, 32),
                            dtype="f4")
    predict_embeddings(model, image, out=out, **settings)
    np.testing.assert_allclose(out[...], expected, atol=1e-6)


def test_one_tile_keeps_per_image_group_norm_and_bad_mode_is_refused():
    model = group_norm_unet()
    image = gradient_image((50, 60))
    whole = predict_embeddings(model, image, device="cpu")
    np.testing.assert_allclose(whole, direct(model, image), atol=1e-5)
    with pytest.raises(SpocoInputError, match="groupnorm"):
        predict_embeddings(model, image, device="cpu", groupnorm="batch")


def test_two_views_pass_groupnorm_through():
    model, momentum = group_norm_unet(seed=0), group_norm_unet(seed=1)
    image = gradient_image((100, 100)) + 10
    norm = Normalization.fit([image])
    loaded = LoadedModel(model=model, momentum_model=momentum, normalization=norm, config={},
                         architecture=model.config, iteration=0, path=None)
    settings = dict(tile_shape=48, overlap=16, calibration_tile_shape=40, device="cpu")
    for mode in ("image", "tile"):
        emb_f, _ = predict_two_views(loaded, image, groupnorm=mode, **settings)
        np.testing.assert_allclose(
            emb_f, predict_embeddings(model, image, norm, groupnorm=mode, **settings), atol=1e-6)


def test_calibration_regions_are_equal_tiles_on_the_pooling_grid_spread_over_the_image():
    shape, tile, multiple = (300, 257), (64, 48), (4, 8)
    regions = calibration_regions(shape, tile, multiple, count=8)
    assert len(regions) == 8
    for region in regions:
        assert tuple(s.stop - s.start for s in region) == tile
        assert all(s.start % m == 0 and s.stop <= size
                   for s, m, size in zip(region, multiple, shape))
    assert regions[0] == (slice(0, 64), slice(0, 48))
    assert all(size - s.stop < m for s, m, size in zip(regions[-1], multiple, shape))
    assert len({tuple((s.start, s.stop) for s in region) for region in regions}) == 8
    assert calibration_regions((30, 20), 64) == [(slice(0, 30), slice(0, 20))]
