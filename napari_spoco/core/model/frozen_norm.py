"""Group norm with image-wide statistics, so that tiled prediction equals a whole-image pass.

``nn.GroupNorm`` normalises every input with that input's own per-group mean and variance. In
tiled prediction each tile is an input, so neighbouring tiles normalise differently and an
object cut by a tile border is embedded differently on each side. :func:`freeze_group_norm`
measures the statistics once on a batch of calibration tiles spread over the image and returns a
copy of the network in which every group norm is a :class:`FrozenGroupNorm`: a fixed
per-channel affine map. The copy is translation-equivariant up to its receptive field, so its
tiled prediction equals its whole-image prediction.

Calibration is sequential in a single forward pass: all calibration tiles go through the
network as one batch, and each layer, when reached, computes its statistics over the whole batch
(the pooled, pixel-count weighted mean and variance of all tiles) and applies them at once, so
every layer is calibrated on the output of already frozen earlier layers. A single calibration
tile covering the whole image therefore reproduces the live network on that image exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..inference.tiling import plan_tiles

#: Calibration tiles per image by default: a batch of at most this many tiles, one forward pass.
CALIBRATION_TILES = 8

#: Group-norm statistics are taken over tiles of this many training patches per axis
#: (:func:`statistics_tile`).
STATISTICS_TILE_FACTOR = 2


def statistics_tile(patch_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of the tiles a network's group-norm statistics are taken over in prediction.

    A network with group norm learns with each training patch normalised by its own
    statistics, and zero padding makes those statistics depend on the patch size: most of a
    small patch lies within the network's context of its border. Normalised over a whole large
    image instead, the same network over-segments membranes (the shipped ``ovules_2d``, trained
    on 128² patches, on held-out ovules-like images: SBD 0.87 at 256², 0.77 at 512², 0.64 at
    1024²). Prediction therefore freezes group norm to statistics pooled over tiles of a fixed
    shape, :data:`STATISTICS_TILE_FACTOR` training patches per axis, whatever the image size
    (docs/method.md, "Group-norm statistics"); a network without a recorded patch uses the
    default calibration tile of :mod:`..inference.prediction`.

    Parameters
    ----------
    patch_shape : sequence of int
        The training patch of the network (``TrainingConfig.patch_shape``).

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> statistics_tile((128, 128))
    (256, 256)
    >>> statistics_tile((16, 64, 64))
    (32, 128, 128)
    """
    return tuple(STATISTICS_TILE_FACTOR * int(p) for p in patch_shape)


class FrozenGroupNorm(nn.Module):
    """Group norm with fixed per-group statistics: ``(x − mean_g) / sqrt(var_g + eps)·w + b``.

    The fixed statistics make it one per-channel affine map (``x·scale + shift``). Built with
    :meth:`from_group_norm`; until its statistics are set, a module with ``calibrating = True``
    takes them from the first input it sees (pooled over the batch and all spatial positions).

    Attributes
    ----------
    mean, var : torch.Tensor
        Per-group statistics ``(num_groups,)``, float64.
    scale, shift : torch.Tensor
        The resulting per-channel affine map ``(num_channels,)``.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 weight: torch.Tensor | None = None, bias: torch.Tensor | None = None):
        super().__init__()
        self.num_groups = int(num_groups)
        self.num_channels = int(num_channels)
        self.eps = float(eps)
        ones, zeros = torch.ones(num_channels), torch.zeros(num_channels)
        self.register_buffer("weight", ones if weight is None else weight.detach().clone())
        self.register_buffer("bias", zeros if bias is None else bias.detach().clone())
        self.register_buffer("mean", torch.zeros(num_groups, dtype=torch.float64))
        self.register_buffer("var", torch.ones(num_groups, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(num_channels))
        self.register_buffer("shift", torch.zeros(num_channels))
        self.calibrated = False
        self.calibrating = False

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm) -> FrozenGroupNorm:
        """An uncalibrated frozen copy of ``norm`` (same groups, eps, affine weight and bias)."""
        frozen = cls(norm.num_groups, norm.num_channels, norm.eps,
                     norm.weight if norm.affine else None, norm.bias if norm.affine else None)
        return frozen.to(norm.weight.device if norm.affine else "cpu")

    def set_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Fix the per-group ``mean`` and ``var`` and derive the per-channel affine map."""
        device = self.weight.device
        self.mean = mean.detach().to(device, torch.float64).clone()
        self.var = var.detach().to(device, torch.float64).clone()
        per_group = self.num_channels // self.num_groups
        inv_std = torch.rsqrt(self.var + self.eps).repeat_interleave(per_group)
        scale = self.weight.double() * inv_std
        self.scale = scale.float()
        self.shift = (self.bias.double() - self.mean.repeat_interleave(per_group) * scale).float()
        self.calibrated = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.calibrated:
            if not self.calibrating:
                raise RuntimeError("FrozenGroupNorm has no statistics; calibrate it first.")
            self.set_statistics(*group_statistics(x, self.num_groups))
            self.calibrating = False
        shape = (1, self.num_channels) + (1,) * (x.ndim - 2)
        return x * self.scale.to(x.dtype).view(shape) + self.shift.to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


def group_statistics(x: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and (biased) variance of ``x`` pooled over batch and space, in float64.

    Pooling every pixel of every sample equally is the pixel-count weighted pooling of the
    samples' own statistics: ``var = E[var_i + mean_i²] − mean²``.

    The sums accumulate in float64 without a float64 copy of the activations (the old version
    made two): the deviations are taken in the input dtype from the rounded mean ``c`` and the
    exact shift correction ``var = E[(x − c)²] − (mean − c)²`` removes the rounding of ``c``.
    """
    grouped = x.detach().reshape(x.shape[0], num_groups, -1)
    count = grouped.shape[0] * grouped.shape[2]
    mean = grouped.sum(dim=(0, 2), dtype=torch.float64) / count
    centre = mean.to(grouped.dtype)
    deviation = (grouped - centre[None, :, None]).square_()
    var = (deviation.sum(dim=(0, 2), dtype=torch.float64) / count
           - (mean - centre.double()).square())
    return mean, var


def has_group_norm(model: nn.Module) -> bool:
    """Whether ``model`` contains an ``nn.GroupNorm`` (whose output then depends on the tile)."""
    return any(isinstance(module, nn.GroupNorm) for module in model.modules())


def _replace_group_norms(model: nn.Module) -> tuple[nn.Module, list[FrozenGroupNorm]]:
    if isinstance(model, nn.GroupNorm):
        root = FrozenGroupNorm.from_group_norm(model)
        return root, [root]
    frozen = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GroupNorm):
                replacement = FrozenGroupNorm.from_group_norm(child)
                setattr(parent, name, replacement)
                frozen.append(replacement)
    return model, frozen


def freeze_group_norm(model: nn.Module, calibration: torch.Tensor, *,
                      method: str = "sequential", forward=None) -> nn.Module:
    """An eval-mode copy of ``model`` with every GroupNorm frozen to statistics of ``calibration``.

    Parameters
    ----------
    model : torch.nn.Module
        The network; it is not modified (a deep copy is frozen).
    calibration : torch.Tensor
        ``(B, C, *spatial)``: calibration tiles, normalised like the prediction input, on the
        device ``model`` runs on.
    method : {"sequential", "live"}
        "sequential": each layer is calibrated on the output of already frozen earlier layers
        (one forward pass; exact). "live": every layer's statistics are pooled from a pass of the
        unmodified network, whose earlier layers normalise per tile (an approximation, kept for
        comparison).
    forward : callable, optional
        ``forward(network, calibration)`` for the sequential pass, e.g.
        ``inference.lean_forward.lean_forward`` (same statistics in less memory); default
        ``network(calibration)``.

    Returns
    -------
    torch.nn.Module
        The frozen copy, in eval mode; it holds no ``nn.GroupNorm``.
    """
    network = copy.deepcopy(model).eval()
    if method == "live":
        recorded: dict[nn.GroupNorm, tuple] = {}

        def record(module, args):  # returns None: the input passes on unchanged
            recorded.setdefault(module, group_statistics(args[0], module.num_groups))

        hooks = [module.register_forward_pre_hook(record)
                 for module in network.modules() if isinstance(module, nn.GroupNorm)]
        with torch.no_grad():
            network(calibration)
        for hook in hooks:
            hook.remove()
        norms = [m for m in network.modules() if isinstance(m, nn.GroupNorm)]
        network, frozen = _replace_group_norms(network)
        for norm, replacement in zip(norms, frozen):
            if norm in recorded:
                replacement.set_statistics(*recorded[norm])
    elif method == "sequential":
        network, frozen = _replace_group_norms(network)
        for module in frozen:
            module.calibrating = True
        with torch.no_grad():
            if forward is None:
                network(calibration)
            else:
                forward(network, calibration)
    else:
        raise ValueError(f"method must be 'sequential' or 'live', got {method!r}")
    unreached = sum(not module.calibrated for module in frozen)
    if unreached:
        raise RuntimeError(f"{unreached} group norm layer(s) were not reached by calibration.")
    return network


def calibration_regions(
    shape: Sequence[int],
    tile_shape: int | Sequence[int],
    multiple: int | Sequence[int] = 1,
    count: int = CALIBRATION_TILES,
) -> list[tuple[slice, ...]]:
    """Up to ``count`` equally shaped, evenly spread tiles for calibration.

    The image is cut into non-overlapping tiles of ``tile_shape`` (clipped to the image, starts
    on the pooling grid); when there are more than ``count``, ``count`` of them are taken evenly
    spaced in raster order. All regions have the same shape, so they form one batch.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the image.
    tile_shape : int or sequence of int
        Calibration tile shape.
    multiple : int or sequence of int
        Pooling factor of the network per axis.
    count : int
        Most regions returned.

    Returns
    -------
    list of tuple of slice
    """
    layout = plan_tiles(shape, tile_shape, 0, multiple)
    tiles = [spatial for spatial, _ in layout.tiles()]
    picks = np.unique(np.linspace(0, len(tiles) - 1, min(int(count), len(tiles))).round())
    # The last tile of an axis can be longer than the others: crop it to the common shape.
    return [
        tuple(slice(s.start, s.start + size) for s, size in zip(tiles[int(i)], layout.tile_shape))
        for i in picks
    ]


__all__ = [
    "CALIBRATION_TILES", "STATISTICS_TILE_FACTOR", "FrozenGroupNorm", "calibration_regions",
    "freeze_group_norm", "group_statistics", "has_group_norm", "statistics_tile",
]
