"""A memory-lean inference pass of the U-Net: the same numbers with about a third of the memory.

``UNet.forward`` materialises, at full resolution, every intermediate of a level: each
convolution's output, each group norm's (not in place), the nearest-upsampled decoder input
and its concatenation with the skip (``features[0] + features[1]`` channels), and the two heads
before their concatenation. On the CPU an image of N pixels then peaks at about 180 float32
values per pixel (0.7 KB; ``benchmarks/bench_memory.py``). :func:`lean_forward` computes the
same function in eval mode:

* every 3×3[×3] convolution is streamed in slabs along y (2D) or z or y (3D), each slab
  assembled in one buffer with a one-pixel halo (zero padding only where the image ends), so
  the decoder's concatenated and upsampled input never exists beyond one slab;
* a convolution with as many output as input channels writes over its input (the decoder's
  first convolution over its skip), keeping back the one halo row the next slab still needs;
* normalisation and ReLU work in place (group norm one group at a time);
* the embedding head is written slab by slab over the last decoder's features (the
  foreground head into its own one-channel tensor).

The result agrees with ``UNet.forward`` to float32 round-off (the convolutions sum the same
products over slabs instead of the whole image; ``tests/test_lean_forward.py``). Networks that
are not a plain eval-mode ``UNet`` with group, frozen-group or no normalisation are run as
they are (:func:`supports_lean_forward`).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model.frozen_norm import FrozenGroupNorm, group_statistics

#: Most float32 values of one streamed slab, input and output channels together (4 MiB), but
#: at least one row (plane in 3D) of output. oneDNN copies both into its blocked layout, and
#: the allocator keeps such freed buffers for reuse (below glibc's 32 MiB mmap threshold), so
#: the slabs, not the image, set the overhead above the tensors a level needs.
SLAB_ELEMENTS = 2 ** 20

#: torch's size test for oneDNN convolutions (aten ``ConvParams::use_mkldnn``), see _slabs.
_ONEDNN_SIZE = 20480

_NORMS = (nn.GroupNorm, FrozenGroupNorm, nn.Identity)


def _plain_conv3(module) -> bool:
    ndim = module.weight.ndim - 2
    return (isinstance(module, (nn.Conv2d, nn.Conv3d))
            and tuple(module.kernel_size) == (3,) * ndim
            and tuple(module.padding) == (1,) * ndim and module.padding_mode == "zeros"
            and tuple(module.stride) == (1,) * ndim and tuple(module.dilation) == (1,) * ndim
            and module.groups == 1)


def supports_lean_forward(network) -> bool:
    """Whether ``network`` is an eval-mode ``UNet`` that :func:`lean_forward` reproduces."""
    from ..model.unet import UNet

    if not isinstance(network, UNet) or network.training:
        return False
    for block in [*network.encoders, *network.decoders]:
        layers = list(block)
        if len(layers) != 6:
            return False
        for conv, norm, relu in (layers[:3], layers[3:]):
            if not (_plain_conv3(conv) and isinstance(norm, _NORMS)
                    and isinstance(relu, nn.ReLU)):
                return False
    return True


def _take(tensor, axis: int, start: int, stop: int):
    return tensor.narrow(axis, start, stop - start)


def _conv_streamed(conv, parts, out, in_place: bool):
    """``out = conv(input)`` for an input given in channel parts, streamed in slabs.

    ``parts``: ``[(write, channels), ...]``, the input's channels in order, where
    ``write(dst, start, stop)`` copies rows of that part into ``dst`` (the decoder's skip and
    upsampled inputs: their concatenation never exists beyond one slab). Each slab is
    assembled in one buffer: its rows, a halo row on each side, zeros where the image ends
    (the convolution's zero padding on that axis), so it costs one copy and no padded or
    upsampled temporaries. ``in_place``: ``out`` is the storage the first part reads from
    (same channels); the original row before each slab, which the slab's halo needs after it
    was overwritten, is kept aside.
    """
    ndim = out.ndim - 2
    convolve = F.conv2d if ndim == 2 else F.conv3d
    channels_in = sum(channels for _, channels in parts)
    axis, slabs = _plan_slabs(tuple(out.shape), channels_in, conv.out_channels)
    length = out.shape[axis]
    padding = tuple(0 if a == axis - 2 else 1 for a in range(ndim))
    before = None  # in place: the original input row start - 1
    for start, stop in slabs:
        rows = stop - start + 2
        shape = [out.shape[0], channels_in, *out.shape[2:]]
        shape[axis] = rows
        slab = torch.empty(shape, dtype=conv.weight.dtype, device=conv.weight.device)
        if start == 0:
            _take(slab, axis, 0, 1).zero_()
        elif in_place:
            _take(slab, axis, 0, 1).copy_(before)
        _take(slab, axis, rows - 1, rows).zero_()  # overwritten below unless the image ends
        offset = 0
        for write, channels in parts:
            part = slab[:, offset:offset + channels]
            if start > 0 and not in_place:
                write(_take(part, axis, 0, 1), axis, start - 1, start)
            write(_take(part, axis, 1, rows - 1), axis, start, stop)
            if stop < length:
                write(_take(part, axis, rows - 1, rows), axis, stop, stop + 1)
            offset += channels
        result = convolve(slab, conv.weight, conv.bias, padding=padding)
        if in_place:
            before = _take(slab, axis, rows - 2, rows - 1).clone()
        del slab
        _take(out, axis, start, stop).copy_(result)
        del result
    return out


def _plan_slabs(shape, channels_in: int, channels_out: int):
    """``(axis, slabs)``: the axis whose :func:`_slabs` hold the fewest input values.

    In 2D always y (rows are contiguous). In 3D z or y: a z slab is at least one plane and
    three input planes, for the 48-channel decoder input of a 256² volume 38 MB, while y slabs
    of 12 rows (the fewest that keep oneDNN there) hold 40 % less.
    """
    candidates = [2] if len(shape) == 4 else [2, 3]
    best = None
    for axis in candidates:
        slabs = _slabs(shape, channels_in, channels_out, axis)
        longest = max(stop - start for start, stop in slabs)
        size = (longest + 2) * int(np.prod(shape[2:])) // shape[axis]
        if best is None or size < best[0]:
            best = (size, axis, slabs)
    return best[1], best[2]


def _slabs(shape, channels_in: int, channels_out: int, axis: int) -> list[tuple[int, int]]:
    """``(start, stop)`` rows of the slabs a 3×3[×3] convolution is cut into.

    ``shape``: its output's. About :data:`SLAB_ELEMENTS` input and output values each, in
    slabs of equal size (± 1 row).
    torch runs a 3×3 convolution through oneDNN only when the first four sizes of its input,
    ``B·C·rows·next``, exceed 20480 (``ConvParams::use_mkldnn``); below that its vol2col
    fallback needs ``3^d·C`` values per output pixel (more than 100 MB for a plane of a
    256² 3D volume) and is up to 10× slower. Slabs are kept above that size where the whole
    axis is; where not even it is, they are kept small, which bounds the vol2col buffer.
    """
    batch, length = shape[0], shape[axis]
    row = 1
    for a, size in enumerate(shape[2:], start=2):
        if a != axis:
            row *= size
    step = SLAB_ELEMENTS // max(1, batch * (channels_in + channels_out) * row)
    following = shape[3] if axis == 2 else shape[2]
    onednn = batch * channels_in * following  # times the slab's rows (with 2 halo rows)
    if onednn * (length + 2) > _ONEDNN_SIZE:
        step = max(step, _ONEDNN_SIZE // onednn + 1 - 2)
    else:
        taps = 3 ** (len(shape) - 2)
        step = min(step, SLAB_ELEMENTS // max(1, batch * taps * channels_in * row))
    count = max(1, length // max(1, step))
    bounds = [i * length // count for i in range(count + 1)]
    return list(itertools.pairwise(bounds))


def _norm_relu_(norm, x: torch.Tensor) -> torch.Tensor:
    """``relu(norm(x))`` written into ``x``."""
    if isinstance(norm, FrozenGroupNorm):
        if not norm.calibrated:
            if not norm.calibrating:
                raise RuntimeError("FrozenGroupNorm has no statistics; calibrate it first.")
            per_group = norm.num_channels // norm.num_groups
            # One group at a time: group_statistics' deviations stay the size of one group.
            moments = [group_statistics(x[:, g * per_group:(g + 1) * per_group], 1)
                       for g in range(norm.num_groups)]
            norm.set_statistics(torch.cat([m for m, _ in moments]),
                                torch.cat([v for _, v in moments]))
            norm.calibrating = False
        shape = (1, norm.num_channels) + (1,) * (x.ndim - 2)
        x.mul_(norm.scale.to(x.dtype).view(shape)).add_(norm.shift.to(x.dtype).view(shape))
    elif isinstance(norm, nn.GroupNorm):
        per_group = norm.num_channels // norm.num_groups
        for g in range(norm.num_groups):
            channels = slice(g * per_group, (g + 1) * per_group)
            weight = None if norm.weight is None else norm.weight[channels]
            bias = None if norm.bias is None else norm.bias[channels]
            x[:, channels] = F.group_norm(x[:, channels], 1, weight, bias, norm.eps)
    return x.relu_()


def _block(block, parts, shape, into=None) -> torch.Tensor:
    """A ``ConvBlock`` on the input ``parts`` give (see :func:`_conv_streamed`) of spatial
    ``shape[2:]``; ``into``: write its first convolution over that (the first part's source).
    """
    conv1, norm1, _, conv2, norm2, _ = list(block)
    channels = conv1.out_channels
    in_place = into is not None and into.shape[1] == channels
    if in_place:
        x = into
    else:
        x = torch.empty((shape[0], channels, *shape[2:]), dtype=conv1.weight.dtype,
                        device=conv1.weight.device)
    _conv_streamed(conv1, parts, x, in_place)
    del parts  # the sources are the caller's; the slabs are gone
    _norm_relu_(norm1, x)
    _conv_streamed(conv2, [(_rows_of(x), channels)], x, True)
    return _norm_relu_(norm2, x)


def _rows_of(source):
    """A ``write`` for :func:`_conv_streamed` copying rows of ``source``."""
    def write(dst, axis, start, stop):
        dst.copy_(_take(source, axis, start, stop))
    return write


def _upsampled_rows(low, kernel):
    """A ``write`` copying rows of ``F.interpolate(low, scale_factor=kernel, mode="nearest")``.

    Nearest upsampling by whole factors repeats ``low[i // k]``: written by broadcasting into
    the slab, the values ``F.interpolate`` gives, without the upsampled tensor.
    """
    def write(dst, axis, start, stop):
        index = torch.arange(start, stop, device=low.device) // kernel[axis - 2]
        rows = low.index_select(axis, index)  # the rows, at low resolution on the other axes
        split, source = list(dst.shape[:2]), list(dst.shape[:2])
        for a in range(2, dst.ndim):
            if a == axis:
                split.append(dst.shape[a])
                source.append(dst.shape[a])
            else:
                split += [rows.shape[a], kernel[a - 2]]
                source += [rows.shape[a], 1]
        dst.view(split).copy_(rows.reshape(source).expand(split))
    return write


def lean_forward(network, x: torch.Tensor) -> torch.Tensor:
    """``network(x)`` for an eval-mode ``UNet`` (:func:`supports_lean_forward`), lean in memory.

    Run it under ``torch.inference_mode`` (or ``no_grad``). FrozenGroupNorm layers that are
    calibrating take their statistics as in ``network(x)`` (``frozen_norm.freeze_group_norm``).

    Parameters
    ----------
    network : UNet
        In eval mode.
    x : torch.Tensor
        ``(B, in_channels, [Z,] Y, X)``.

    Returns
    -------
    torch.Tensor
        ``(B, E [+ 1], [Z,] Y, X)``, as ``network(x)``.

    Examples
    --------
    >>> from napari_spoco.core.model.unet import UNet
    >>> net = UNet(out_channels=4, features=(4, 8), num_groups=2, foreground=True).eval()
    >>> x = torch.randn(1, 1, 20, 24)
    >>> with torch.inference_mode():
    ...     bool(torch.allclose(lean_forward(net, x), net(x), atol=1e-5))
    True
    """
    embeddings, foreground = lean_embeddings(network, x)
    return embeddings if foreground is None else torch.cat([embeddings, foreground], dim=1)


def lean_embeddings(network, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`lean_forward` with the two heads apart: ``(embeddings, foreground logits)``.

    The embeddings are written over the last decoder's features, so nothing of the output's
    size is allocated for them: they are a view ``(B, E, *spatial)`` into that buffer (not
    contiguous when the input was padded to ``network.required_multiple``). The foreground
    logits ``(B, 1, *spatial)`` are None for a network without the head.
    """
    if x.ndim != network.ndim + 2 or x.shape[1] != network.in_channels:
        return network(x), None  # let the network raise its own error
    spatial = x.shape[2:]
    x = network.pad_to_multiple(x)
    pool = F.max_pool2d if network.ndim == 2 else F.max_pool3d
    kernels = network.pool_kernels
    skips = []
    for level, encoder in enumerate(network.encoders):
        source = x
        x = _block(encoder, [(_rows_of(source), source.shape[1])], tuple(source.shape))
        del source
        if level < len(kernels):
            skips.append(x)
            x = pool(x, kernels[level])
    for decoder, kernel in zip(network.decoders, reversed(kernels)):
        skip = skips.pop()
        shape_in = (skip.shape[0], skip.shape[1] + x.shape[1], *skip.shape[2:])
        parts = [(_rows_of(skip), skip.shape[1]), (_upsampled_rows(x, kernel), x.shape[1])]
        x = _block(decoder, parts, shape_in, into=skip)
        del parts
        del skip
    head, fg_head = network.head, network.foreground_head
    embedding_channels = head.out_channels
    if embedding_channels <= x.shape[1]:
        embeddings = x[:, :embedding_channels]  # each slab is read whole before it is written
    else:
        embeddings = torch.empty((x.shape[0], embedding_channels, *x.shape[2:]), dtype=x.dtype,
                                 device=x.device)
    foreground = None
    if fg_head is not None:
        foreground = torch.empty((x.shape[0], fg_head.out_channels, *x.shape[2:]),
                                 dtype=x.dtype, device=x.device)
    axis = 2  # the 1×1 heads: in slabs of whole rows (planes in 3D), contiguous
    row = x[0, 0].numel() // x.shape[axis]
    channels = x.shape[1] + embedding_channels + (fg_head is not None)
    step = max(1, SLAB_ELEMENTS // max(1, x.shape[0] * channels * row))
    convolve = F.conv2d if network.ndim == 2 else F.conv3d
    for start in range(0, x.shape[axis], step):
        stop = min(start + step, x.shape[axis])
        slab = _take(x, axis, start, stop)
        result = convolve(slab, head.weight, head.bias)
        if foreground is not None:
            _take(foreground, axis, start, stop).copy_(convolve(slab, fg_head.weight,
                                                                fg_head.bias))
        _take(embeddings, axis, start, stop).copy_(result)
        del slab, result
    del x
    crop = (..., *(slice(0, size) for size in spatial))
    return embeddings[crop], None if foreground is None else foreground[crop]


def limit_heap_retention(threshold: int = 4 * 2 ** 20) -> bool:
    """Make glibc's malloc hand buffers of ``threshold`` bytes or more back to the system at once.

    glibc raises its mmap threshold up to 32 MiB as large buffers are freed, so the slabs'
    temporaries then come from the heap, which keeps them after they are freed (fragmented by
    the level tensors between them): 100–160 MB above the tensors an 8 MiB prediction needs
    (``benchmarks/bench_memory.py``). A fixed threshold stops that, for the whole process, at
    the cost of a page fault per fresh page of each buffer (a few seconds of system time per
    8 MiB image). Meant for a process that only predicts, e.g. ``napari-spoco predict``; the
    napari plugin does not call it.

    Returns
    -------
    bool
        Whether the threshold was set (False off glibc, e.g. on macOS and Windows).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # musl and others without mallopt
        return False


def release_free_heap() -> bool:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``).

    Called after the group-norm calibration pass: the small buffers it freed stay in the heap,
    fragmented, and the prediction pass that follows would add its own peak on top of them
    (about 20 MB for an 8 MiB image). Harmless to other code: only memory already freed is
    returned.

    Returns
    -------
    bool
        Whether anything was released (False off glibc).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


__all__ = ["SLAB_ELEMENTS", "lean_embeddings", "lean_forward", "limit_heap_retention",
           "release_free_heap", "supports_lean_forward"]
