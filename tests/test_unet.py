import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.model.unet import UNet


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # Tiny convolutions gain nothing from threads, and on a busy CI machine OpenMP's spinning
    # threads make them many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("spatial", [(37, 21), (1, 3), (8, 8), (64, 50)])
def test_2d_output_has_input_size_and_embedding_channels(spatial):
    model = UNet(in_channels=2, out_channels=5, features=(4, 8, 16)).eval()
    out = model(torch.randn(2, 2, *spatial))
    assert out.shape == (2, 5, *spatial)
    assert torch.isfinite(out).all()


def test_3d_anisotropic_pooling_keeps_z_at_first_levels():
    model = UNet(ndim=3, features=(4, 8, 16), anisotropic_levels=1).eval()
    assert model.pool_kernels == ((1, 2, 2), (2, 2, 2))
    assert model.required_multiple == (2, 4, 4)
    seen = {}
    model.encoders[-1].register_forward_hook(lambda mod, inp, out: seen.setdefault("x", out))
    out = model(torch.randn(1, 1, 5, 13, 11))
    assert out.shape == (1, 16, 5, 13, 11)
    # Padded to (6, 16, 12), then pooled (1,2,2) and (2,2,2): z halves once, y and x twice.
    assert seen["x"].shape[2:] == (3, 4, 3)


def test_3d_isotropic_output_shape():
    model = UNet(ndim=3, out_channels=3, features=(2, 4)).eval()
    assert model.required_multiple == (2, 2, 2)
    assert model(torch.randn(1, 1, 3, 5, 7)).shape == (1, 3, 3, 5, 7)


def test_odd_input_equals_reflect_padded_input_cropped():
    model = UNet(features=(4, 8, 16)).eval()
    x = torch.randn(1, 1, 29, 18)
    padded = F.pad(x, (0, 2, 0, 3), mode="reflect")  # to (32, 20), multiples of 4
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[..., :29, :18], atol=1e-6)


def test_config_round_trip_through_json_gives_identical_outputs():
    model = UNet(in_channels=3, out_channels=7, ndim=3, features=(4, 8, 12), norm="group",
                 num_groups=4, anisotropic_levels=2).eval()
    config = json.loads(json.dumps(model.config))
    rebuilt = UNet.from_config(config).eval()
    rebuilt.load_state_dict(model.state_dict())  # strict: same parameter names and shapes
    x = torch.randn(1, 3, 4, 16, 12)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    assert rebuilt.config == model.config


def test_from_config_rejects_unknown_keys():
    config = dict(UNet(features=(4,)).config, depth=3)
    with pytest.raises(SpocoInputError, match="depth"):
        UNet.from_config(config)


@pytest.mark.parametrize(
    "kwargs",
    [dict(ndim=4), dict(norm="layer"), dict(features=()), dict(anisotropic_levels=1),
     dict(ndim=3, features=(4, 8), anisotropic_levels=2)],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(SpocoInputError):
        UNet(**kwargs)


def test_group_norm_groups_divide_channels():
    model = UNet(features=(6, 12, 20), num_groups=8)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms
    for norm in norms:
        assert norm.num_channels % norm.num_groups == 0
        assert norm.num_groups == np.gcd(8, norm.num_channels)


@pytest.mark.parametrize(
    "norm, layer", [("group", nn.GroupNorm), ("batch", nn.BatchNorm2d), (None, None)]
)
def test_norm_variants_train(norm, layer):
    model = UNet(features=(4, 8), norm=norm)
    kinds = {type(m) for m in model.modules()}
    norm_layers = {nn.GroupNorm, nn.BatchNorm2d, nn.BatchNorm3d}
    assert kinds & norm_layers == ({layer} if layer else set())
    # Convolutions carry a bias only where no normalisation follows to cancel it.
    first_conv = model.encoders[0][0]
    assert (first_conv.bias is None) == (norm is not None)
    out = model(torch.randn(2, 1, 12, 10))
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_default_2d_network_is_small_and_paper_network_matches_table():
    assert 3e5 < sum(p.numel() for p in UNet().parameters()) < 8e5
    paper = UNet(features=(16, 32, 64, 128, 256, 512), norm="batch")
    assert paper.required_multiple == (32, 32)
    # Appendix A.1: the receptive field about matches the 448x448 CVPPP patches.
    assert 380 <= paper.receptive_field[0] <= 460


@pytest.mark.parametrize(
    "features, levels, shape",
    [((4, 8, 16), 0, (1, 1, 64, 72)), ((4, 8), 1, (1, 1, 24, 30, 30))],
)
def test_receptive_field_matches_gradient_extent(features, levels, shape):
    ndim = len(shape) - 2
    model = UNet(ndim=ndim, features=features, norm=None, anisotropic_levels=levels).eval()
    centre = tuple(s // 2 for s in shape[2:])
    reach = torch.zeros(shape)
    # Max pooling routes the gradient through one input per window; a few random inputs
    # together reach every pixel the output can depend on.
    for _ in range(4):
        x = torch.randn(shape, requires_grad=True)
        model(x)[(0, slice(None), *centre)].sum().backward()
        reach += x.grad.abs()
    extent = [int(a.max() - a.min() + 1) for a in np.nonzero(reach[0, 0].numpy())]
    assert tuple(extent) == model.receptive_field


def test_forward_rejects_wrong_channel_count():
    with pytest.raises(SpocoInputError, match="expects input of shape"):
        UNet(in_channels=2, features=(4,))(torch.randn(1, 1, 8, 8))
