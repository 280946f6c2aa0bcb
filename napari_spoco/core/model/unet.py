"""The embedding network: a 2D or 3D U-Net as in the SPOCO paper's appendix A.1.

Encoder levels of two (conv 3 → norm → ReLU) blocks joined by 2× max pooling, a decoder of
nearest-neighbour upsampling, concatenation skips and the same blocks, and a final 1×1 conv to the
embedding channels. Any input size works: ``forward`` reflect-pads the input to the size the
poolings need and crops the output back.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpocoInputError

NORMS = ("group", "batch", None)


def _norm_layer(norm: str | None, channels: int, ndim: int, num_groups: int) -> nn.Module:
    if norm == "group":
        # gcd always divides the channel count, so any width works with any num_groups.
        return nn.GroupNorm(math.gcd(num_groups, channels), channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels) if ndim == 2 else nn.BatchNorm3d(channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two (3×3[×3] conv → norm → ReLU) layers: the paper's ConvBlock, ConvBlockBN, ConvBlockGN."""

    def __init__(self, in_channels, out_channels, ndim, norm, num_groups):
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        layers = []
        for channels_in in (in_channels, out_channels):
            # A bias before a normalisation layer is cancelled by its mean subtraction.
            layers += [
                conv(channels_in, out_channels, kernel_size=3, padding=1, bias=norm is None),
                _norm_layer(norm, out_channels, ndim, num_groups),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


ARCHITECTURE_KEYS = (
    "in_channels", "out_channels", "ndim", "features", "norm", "num_groups", "anisotropic_levels",
    "foreground", "affinity_channels",
)

#: Values of keys that older checkpoints do not store: they were written before the key existed,
#: so their networks are what the old default built (no foreground head).
LEGACY_ARCHITECTURE_DEFAULTS = {"foreground": False, "affinity_channels": 0}


def complete_architecture(config: dict) -> dict:
    """``config`` with the keys older checkpoints lack filled in with what they meant."""
    return {**LEGACY_ARCHITECTURE_DEFAULTS, **dict(config)}


def architecture_config(settings) -> dict:
    """The JSON-able :attr:`UNet.config` of any object with the architecture attributes.

    Used by :class:`UNet` itself and by ``TrainingConfig.architecture``, so the two can never
    disagree about what describes a network.
    """
    config = {key: getattr(settings, key) for key in ARCHITECTURE_KEYS}
    config["features"] = list(config["features"])
    return config


def parameter_count(in_channels: int, out_channels: int, ndim: int, features: Sequence[int],
                    foreground: bool = False) -> int:
    """Weights of a :class:`UNet` with these sizes, counted without building it.

    Convolution kernels and the 1×1 heads exactly; biases and normalisation parameters as
    four values per output channel of each convolution, an upper bound.
    """
    kernel = 3**ndim
    widths = [int(f) for f in features]
    convs = []  # (in, out) of every 3×3[×3] convolution
    channels = int(in_channels)
    for width in widths:
        convs += [(channels, width), (width, width)]
        channels = width
    for level in range(len(widths) - 1):
        convs += [(widths[level] + widths[level + 1], widths[level]),
                  (widths[level], widths[level])]
    heads = int(out_channels) + int(bool(foreground))
    count = sum(kernel * c_in * c_out + 4 * c_out for c_in, c_out in convs)
    return count + widths[0] * heads + heads


def available_memory() -> int | None:
    """Bytes of memory available to this process now, or None where it cannot be told."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not on this platform (Windows)
        return None


def check_network_size(in_channels, out_channels, ndim, features, foreground=False) -> None:
    """Refuse a network whose float32 weights alone would not fit in the available memory.

    Checked before any layer is allocated: torch would otherwise try (terabytes for a
    mistyped ``--features`` or a damaged checkpoint) and fail with an allocator error, or get
    the process killed.

    Raises
    ------
    SpocoInputError
        If ``parameter_count(...) * 4`` bytes exceed :func:`available_memory`.
    """
    count = parameter_count(in_channels, out_channels, ndim, features, foreground)
    available = available_memory()
    if available is None or count * 4 <= available:
        return
    raise SpocoInputError(
        f"A U-Net with features {list(features)} would have {count:.3g} weights "
        f"({count * 4 / 1e9:.3g} GB as float32), more than the {available / 1e9:.3g} GB of "
        "memory available, before training even needs more. Use fewer channels per level: "
        "--features (e.g. the default 16 32 64 128), or 'features' in the settings."
    )


class UNet(nn.Module):
    """U-Net that maps an image ``(B, C, [Z,] Y, X)`` to embeddings ``(B, E, [Z,] Y, X)``.

    Parameters
    ----------
    in_channels : int
        Image channels C.
    out_channels : int
        Embedding dimension E (the paper uses 16).
    ndim : {2, 3}
        Spatial dimensions.
    features : sequence of int
        Channels per level, shallowest first; ``len(features) - 1`` poolings. The paper's 2D
        networks use (16, 32, 64, 128, 256, 512), its 3D ones (64, 128, 256, 512).
    norm : {"group", "batch", None}
        Normalisation after each convolution. Group norm suits microscopy and small batches.
    num_groups : int
        Groups of GroupNorm; each layer uses ``gcd(num_groups, channels)`` groups.
    anisotropic_levels : int
        3D only: how many of the first poolings keep z (pool 1×2×2) for thin-slice stacks. The
        convolutions stay 3×3×3 at every level, as in the paper's 3D networks.
    foreground : bool
        Add a second 1×1 head with one channel: the foreground logit (object vs background),
        returned after the E embedding channels. Clustering then only runs where it says
        "object" (see ``core/loss/foreground.py``).
    affinity_channels : int
        CRAC: add a 1×1 head predicting one affinity logit per edge offset (0: none). It is not
        part of :meth:`forward`'s output (so embeddings and foreground keep their channels);
        :meth:`forward` returns it with ``with_affinities=True`` (see ``core/loss/crac.py``).

    Examples
    --------
    >>> net = UNet(out_channels=8, features=(8, 16), foreground=True)
    >>> net(torch.zeros(1, 1, 20, 20)).shape  # 8 embedding channels + 1 foreground logit
    torch.Size([1, 9, 20, 20])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 16,
        ndim: int = 2,
        features: Sequence[int] = (16, 32, 64, 128),
        norm: str | None = "group",
        num_groups: int = 8,
        anisotropic_levels: int = 0,
        foreground: bool = False,
        affinity_channels: int = 0,
    ):
        super().__init__()
        features = tuple(int(f) for f in features)
        if ndim not in (2, 3):
            raise SpocoInputError(f"UNet ndim must be 2 or 3, got {ndim!r}.")
        if not features or min(features) < 1:
            raise SpocoInputError(
                f"UNet features must be a non-empty list of positive channel counts, "
                f"got {list(features)}."
            )
        if norm not in NORMS:
            raise SpocoInputError(
                f"UNet norm must be 'group', 'batch' or None, got {norm!r}."
            )
        if min(in_channels, out_channels, num_groups) < 1:
            raise SpocoInputError(
                "UNet in_channels, out_channels and num_groups must be at least 1, got "
                f"{in_channels}, {out_channels}, {num_groups}."
            )
        max_anisotropic = len(features) - 1 if ndim == 3 else 0
        if not 0 <= anisotropic_levels <= max_anisotropic:
            raise SpocoInputError(
                f"UNet anisotropic_levels must be between 0 and {max_anisotropic} for a "
                f"{ndim}D network with {len(features)} levels, got {anisotropic_levels}."
            )
        check_network_size(in_channels, out_channels, ndim, features, foreground)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.ndim = int(ndim)
        self.features = features
        self.norm = norm
        self.num_groups = int(num_groups)
        self.anisotropic_levels = int(anisotropic_levels)
        if not isinstance(foreground, bool):
            raise SpocoInputError(f"UNet foreground must be True or False, got {foreground!r}.")
        self.foreground = foreground
        if isinstance(affinity_channels, bool) or int(affinity_channels) != affinity_channels \
                or affinity_channels < 0:
            raise SpocoInputError(
                f"UNet affinity_channels must be a whole number >= 0, got {affinity_channels!r}.")
        self.affinity_channels = int(affinity_channels)

        block = dict(ndim=ndim, norm=norm, num_groups=self.num_groups)
        self.encoders = nn.ModuleList()
        channels = self.in_channels
        for width in features:
            self.encoders.append(ConvBlock(channels, width, **block))
            channels = width
        self.decoders = nn.ModuleList(
            ConvBlock(features[level] + features[level + 1], features[level], **block)
            for level in reversed(range(len(features) - 1))
        )
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        self.head = conv(features[0], self.out_channels, kernel_size=1)
        # A separate module (not a wider head) so that a source network without it loads its
        # weights unchanged and only this head starts from scratch when fine-tuning.
        self.foreground_head = conv(features[0], 1, kernel_size=1) if foreground else None
        self.affinity_head = (conv(features[0], self.affinity_channels, kernel_size=1)
                              if self.affinity_channels else None)

    @property
    def output_channels(self) -> int:
        """Channels of :meth:`forward`'s output: E embeddings, plus 1 with the foreground head."""
        return self.out_channels + int(self.foreground)

    @property
    def config(self) -> dict:
        """Everything needed to rebuild this network, as a JSON-able dict."""
        return architecture_config(self)

    @classmethod
    def from_config(cls, config: dict) -> UNet:
        """Build a freshly initialised network from :attr:`config`.

        Raises
        ------
        SpocoInputError
            If ``config`` has keys this version does not know or invalid values.
        """
        known = set(ARCHITECTURE_KEYS)
        unknown = set(config) - known
        if unknown:
            raise SpocoInputError(
                f"UNet config has unknown keys {sorted(unknown)}; it was written by another "
                "version or for another network. Known keys: " + ", ".join(sorted(known)) + "."
            )
        return cls(**complete_architecture(config))

    @property
    def pool_kernels(self) -> tuple[tuple[int, ...], ...]:
        """Max-pooling kernel (= stride) per pooling, shallowest first."""
        if self.ndim == 2:
            return ((2, 2),) * (len(self.features) - 1)
        return tuple(
            (1, 2, 2) if level < self.anisotropic_levels else (2, 2, 2)
            for level in range(len(self.features) - 1)
        )

    @property
    def required_multiple(self) -> tuple[int, ...]:
        """Per-axis size divisibility the poolings need; ``forward`` pads to it by itself."""
        multiple = [1] * self.ndim
        for kernel in self.pool_kernels:
            multiple = [m * k for m, k in zip(multiple, kernel)]
        return tuple(multiple)

    @property
    def receptive_field(self) -> tuple[int, ...]:
        """Upper bound, per axis, of the input extent one output pixel depends on.

        Each 3-conv at a level whose pixels are ``jump`` input pixels apart widens the field by
        ``2·jump``; each pooling by ``(kernel − 1)·jump``. Nearest upsampling adds nothing.
        """
        fields = []
        for axis in range(self.ndim):
            field, jump = 1, 1
            kernels = [k[axis] for k in self.pool_kernels]
            jumps = []
            for kernel in kernels:
                jumps.append(jump)
                field += 4 * jump + (kernel - 1) * jump  # encoder block + pooling
                jump *= kernel
            field += 4 * jump  # bottleneck block
            field += sum(4 * j for j in jumps)  # decoder blocks
            fields.append(field)
        return tuple(fields)

    def pad_to_multiple(self, x: torch.Tensor) -> torch.Tensor:
        """Pad the spatial axes of ``x`` at their ends to :attr:`required_multiple`.

        Reflection keeps image statistics at the border; it needs the pad to be smaller than
        the axis, so tiny inputs fall back to edge replication.
        """
        spatial = x.shape[2:]
        pads = [(-size) % m for size, m in zip(spatial, self.required_multiple)]
        if not any(pads):
            return x
        # F.pad lists pads for the last axis first, as (before, after) pairs.
        flat = []
        for pad in reversed(pads):
            flat += [0, pad]
        reflectable = all(pad < size for pad, size in zip(pads, spatial))
        return F.pad(x, flat, mode="reflect" if reflectable else "replicate")

    def forward(self, x: torch.Tensor, with_affinities: bool = False):
        """Embed ``x`` of shape ``(B, in_channels, [Z,] Y, X)``, any spatial size ≥ 1.

        With ``with_affinities`` (a keyword, so DDP passes it through): the tuple
        ``(output, affinity logits or None)`` from the same pass through the trunk.
        """
        features, crop = self._decode(x)
        output = self._heads(features, crop)
        if not with_affinities:
            return output
        if self.affinity_head is None:
            return output, None
        return output, self.affinity_head(features)[crop]

    def _decode(self, x: torch.Tensor):
        """The last decoder's features (padded) and the crop back to ``x``'s spatial shape."""
        if x.ndim != self.ndim + 2 or x.shape[1] != self.in_channels:
            raise SpocoInputError(
                f"UNet expects input of shape (B, {self.in_channels}, "
                f"{'Z, ' if self.ndim == 3 else ''}Y, X), got {tuple(x.shape)}."
            )
        spatial = x.shape[2:]
        x = self.pad_to_multiple(x)
        pool = F.max_pool2d if self.ndim == 2 else F.max_pool3d
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if level < len(self.pool_kernels):
                skips.append(x)
                x = pool(x, self.pool_kernels[level])
        for decoder, skip, kernel in zip(self.decoders, reversed(skips),
                                          reversed(self.pool_kernels)):
            x = F.interpolate(x, scale_factor=kernel, mode="nearest")
            x = decoder(torch.cat([skip, x], dim=1))
        crop = (..., *(slice(0, size) for size in spatial))
        return x, crop

    def _heads(self, x: torch.Tensor, crop) -> torch.Tensor:
        if self.foreground_head is None:
            return self.head(x)[crop]
        return torch.cat([self.head(x), self.foreground_head(x)], dim=1)[crop]
