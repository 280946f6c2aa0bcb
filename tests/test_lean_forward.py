"""The memory-lean CPU pass (core/inference/lean_forward.py) computes the U-Net's function."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import zarr

from napari_spoco.core.inference import lean_forward as lean
from napari_spoco.core.inference import prediction
from napari_spoco.core.model import frozen_norm
from napari_spoco.core.model.unet import UNet

NETWORKS = {
    "2d": ({"ndim": 2}, (1, 1, 37, 50)),
    "2d_foreground_batch": ({"ndim": 2, "foreground": True}, (2, 1, 64, 40)),
    "2d_no_norm": ({"ndim": 2, "norm": None}, (1, 1, 33, 33)),
    "2d_wide_head": ({"ndim": 2, "out_channels": 12}, (1, 1, 40, 28)),  # E > features[0]
    "3d_anisotropic_foreground": ({"ndim": 3, "anisotropic_levels": 1, "foreground": True},
                                  (1, 1, 9, 20, 26)),
    "3d_batch": ({"ndim": 3}, (2, 1, 8, 16, 16)),
}


def _network(**kwargs):
    torch.manual_seed(0)
    options = {"in_channels": 1, "out_channels": 6, "features": (8, 16, 32), "num_groups": 4}
    options.update(kwargs)
    return UNet(**options).eval()


@pytest.mark.parametrize("slab", [2 ** 20, 3000, 300])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_lean_forward_matches_the_network(monkeypatch, name, slab):
    """Whole-tensor and many-slab passes (along z or y in 3D) give network(x) to round-off."""
    monkeypatch.setattr(lean, "SLAB_ELEMENTS", slab)
    kwargs, shape = NETWORKS[name]
    network = _network(**kwargs)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    assert lean.supports_lean_forward(network)
    with torch.inference_mode():
        expected = network(x)
        got = lean.lean_forward(network, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=2e-5)


def test_both_slab_axes_are_used_in_3d():
    """The 48-channel decoder input of a 32x256x256 volume is cut along y (fewer values)."""
    axis, slabs = lean._plan_slabs((1, 16, 32, 256, 256), 48, 16)
    assert axis == 3
    assert slabs[0][0] == 0 and slabs[-1][1] == 256
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slabs))
    # every slab keeps torch on oneDNN: B*C*Z*(rows + 2 halo rows) > 20480
    assert all(48 * 32 * (stop - start + 2) > lean._ONEDNN_SIZE for start, stop in slabs)
    axis, _ = lean._plan_slabs((1, 16, 2048, 1024), 48, 16)
    assert axis == 2


def test_calibration_through_the_lean_pass_gives_the_same_statistics():
    network = _network(ndim=2, foreground=True)
    batch = torch.randn(3, 1, 48, 40, generator=torch.Generator().manual_seed(2))
    plain = frozen_norm.freeze_group_norm(network, batch)
    streamed = frozen_norm.freeze_group_norm(network, batch, forward=lean.lean_forward)
    pairs = [(a, b) for a, b in zip(plain.modules(), streamed.modules())
             if isinstance(a, frozen_norm.FrozenGroupNorm)]
    assert len(pairs) == 10
    for a, b in pairs:
        np.testing.assert_allclose(b.mean.numpy(), a.mean.numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(b.var.numpy(), a.var.numpy(), rtol=1e-5, atol=1e-6)


def test_unsupported_networks_use_the_plain_forward():
    network = _network(ndim=2, norm="batch")
    assert not lean.supports_lean_forward(network)
    assert not lean.supports_lean_forward(_network(ndim=2).train())
    assert not lean.supports_lean_forward(torch.nn.Conv2d(1, 4, 3))


@pytest.mark.parametrize("shape", [(64, 80), (61, 75)])  # a multiple of 4, and padded
def test_whole_image_prediction_is_the_network_output(shape):
    """The one-tile path hands out the lean buffer itself: contiguous and exact."""
    network = _network(ndim=2, foreground=True)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    with torch.inference_mode():
        reference = network(torch.from_numpy(image)[None, None])[0].numpy()
    embeddings, foreground = prediction.predict_with_foreground(network, image, device="cpu")
    assert embeddings.shape == (6, *shape) and embeddings.flags.c_contiguous
    np.testing.assert_allclose(embeddings, reference[:6], atol=2e-5)
    np.testing.assert_allclose(foreground, 1 / (1 + np.exp(-reference[6])), atol=2e-6)


def test_contiguous_moves_a_crop_to_the_front_of_its_buffer():
    buffer = np.arange(3 * 7 * 9, dtype=np.float32).reshape(3, 7, 9)
    crop = buffer[:2, :5, :6]
    expected = crop.copy()
    compact = prediction._contiguous(crop)
    assert compact.flags.c_contiguous and np.shares_memory(compact, buffer)
    np.testing.assert_array_equal(compact, expected)


def test_tiled_prediction_into_zarr_matches_numpy(tmp_path):
    """Zarr outputs are accumulated slab by slab; the result is the numpy one."""
    network = _network(ndim=2, foreground=True)
    image = np.random.default_rng(3).random((70, 90), dtype=np.float32)
    options = {"device": "cpu", "tile_shape": 32, "overlap": 24}
    logits = np.zeros(image.shape, np.float32)
    expected = prediction.predict_embeddings(network, image, foreground_out=logits, **options)
    out = zarr.create_array(str(tmp_path / "e.zarr"), shape=(6, 70, 90), chunks=(6, 16, 16),
                            dtype="f4", fill_value=0.0)
    stored = zarr.create_array(str(tmp_path / "f.zarr"), shape=(70, 90), chunks=(16, 16),
                               dtype="f4", fill_value=0.0)
    prediction.predict_embeddings(network, image, out=out, foreground_out=stored, **options)
    np.testing.assert_array_equal(out[...], expected)
    np.testing.assert_array_equal(stored[...], logits)
