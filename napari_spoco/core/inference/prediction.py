"""Embedding prediction for images of any size: tiled, blended, memory bounded by the tile.

Only one tile's region of the input is read at a time (numpy, zarr or any array that supports
slicing), normalised with the checkpoint's global statistics, and run through the network in
batches. Tile outputs are weighted by normalised separable windows (see :mod:`.tiling`) and
added into the output, which may be a zarr array: then nothing of image size is ever held in
memory. Blending makes the result independent of the tiling once the overlap covers the
network's context. Group norm, which normalises each input with its own statistics, is first
frozen to image-wide statistics (:mod:`.frozen_norm`) so that tiles agree (docs/method.md,
"Prediction").
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import SpocoInputError
from ..model.frozen_norm import (
    CALIBRATION_TILES,
    calibration_regions,
    freeze_group_norm,
    has_group_norm,
)
from ..model.input_scale import input_scale_of, resample, scaled_shape
from ..training.distributed import amp_dtype, autocast
from ..validation import check_image_dtype
from .lean_forward import (
    lean_embeddings,
    lean_forward,
    release_free_heap,
    supports_lean_forward,
)
from .tiling import TileLayout, _per_axis, plan_tiles, window

#: Tile and overlap for a network that does not state its receptive field, and the shape of
#: the group-norm calibration tiles. Networks that do (``UNet``) get :func:`default_tiling`.
DEFAULT_TILE = {2: (512, 512), 3: (32, 128, 128)}
DEFAULT_OVERLAP = {2: (64, 64), 3: (8, 32, 32)}

#: Most voxels of one default prediction tile (2D and 3D). A forward pass of the default U-Net
#: peaks at about 0.7 KB of memory per voxel on the CPU (1024² in 2D: 0.7 GB above the start,
#: 64×256×256 in 3D: 2.7 GB; ``benchmarks/bench_prediction.py``), so a tile stays near 1.5 GB,
#: and most images a user paints are predicted in one pass: no seam, no calibration.
TILE_VOXELS = 2 ** 21

#: Share of an image its group-norm calibration tiles hold (:func:`default_calibration_regions`).
CALIBRATION_FRACTION = 0.25

#: Fewest group-norm calibration tiles of an image (:func:`default_calibration_regions`): at
#: 512² two of the four 256² tiles cost the demo's nuclei 0.018 SBD against all four.
MIN_CALIBRATION_TILES = 4

#: Tiles per forward pass on accelerators; on the CPU a bigger batch only costs memory.
ACCELERATOR_BATCH = {2: 4, 3: 2}

ProgressCallback = Callable[[int, int], Any]


class PredictionCancelled(RuntimeError):
    """Raised when a prediction is stopped through ``cancel`` or a ``progress`` returning False.

    An ``out`` array passed in is then only partly written.
    """


def network_context(network, ndim: int) -> tuple[int, ...]:
    """Pixels, per axis, beyond which the network's output no longer depends on the input.

    Half the receptive field (``UNet.receptive_field``), rounded up; a network that does not say
    uses the default prediction overlap. A tile or block whose cut edges lie at least this far
    from the pixels it keeps predicts them exactly as a pass over the whole image would.

    Examples
    --------
    >>> from napari_spoco.core.model.unet import UNet
    >>> network_context(UNet(1, 4, 2, features=(4, 8)), 2)
    (9, 9)
    """
    field = getattr(network, "receptive_field", None)
    if field is None:
        return tuple(DEFAULT_OVERLAP[ndim])
    return tuple(-(-int(f) // 2) for f in field)


def default_tiling(network, spatial_shape) -> tuple[tuple[int, ...], ...]:
    """Tile shape, overlap and zero-weight margin of a default prediction: the one decision.

    The margin is the network's context (:func:`network_context`), so tiles are exact; the
    overlap adds a short ramp (half the context) between the two margins. The tile is the whole
    image when it has at most :data:`TILE_VOXELS` voxels. Larger images get the tiles of at most
    that size that recompute the fewest voxels: every split of the axes into tile counts is
    tried (tiles never shorter than three overlaps, which a deep 3D network can make exceed the
    budget), each with the shortest tile that covers its axis, and the split whose tiles cover
    the fewest voxels in all wins (2048² in 2D: three tiles of 768 × 2048, 1.13× the image).

    Parameters
    ----------
    network : torch.nn.Module
        The network; its ``receptive_field`` and ``required_multiple`` are used when present.
    spatial_shape : sequence of int
        Spatial shape of the image.

    Returns
    -------
    tile_shape, overlap, margin : tuple of int
        Per spatial axis, for :func:`~.tiling.plan_tiles`.

    Examples
    --------
    >>> from napari_spoco.core.model.unet import UNet
    >>> network = UNet(1, 4, 2, features=(16, 32, 64, 128))
    >>> default_tiling(network, (512, 512))  # one pass
    ((512, 512), (120, 120), (48, 48))
    >>> default_tiling(network, (2048, 2048))[0]
    (768, 2048)
    """
    shape = tuple(int(s) for s in spatial_shape)
    ndim = len(shape)
    field = getattr(network, "receptive_field", None)
    if field is None:
        overlap = tuple(DEFAULT_OVERLAP[ndim])
        return tuple(min(t, s) for t, s in zip(DEFAULT_TILE[ndim], shape)), overlap, tuple(
            o // 4 for o in overlap)
    margin = network_context(network, ndim)
    overlap = tuple(2 * m + max(2, m // 2) for m in margin)
    multiple = tuple(getattr(network, "required_multiple", (1,) * ndim))
    if int(np.prod(shape)) <= TILE_VOXELS:
        return shape, overlap, margin
    shortest = tuple(min(s, -(-3 * o // m) * m) for s, o, m in zip(shape, overlap, multiple))
    per_axis = [_axis_tiles(s, o, m, low) for s, o, m, low in zip(shape, overlap, multiple,
                                                                    shortest)]
    best = None
    for split in itertools.product(*per_axis):  # (tile, covered length) per axis
        tile = tuple(t for t, _ in split)
        voxels = int(np.prod(tile, dtype=np.int64))
        fits = voxels <= TILE_VOXELS or tile == shortest
        covered = int(np.prod([c for _, c in split], dtype=np.int64))
        key = (not fits, covered if fits else voxels)
        if best is None or key < best[0]:
            best = (key, tile)
    return best[1], overlap, margin


def _axis_tiles(size: int, overlap: int, multiple: int, shortest: int) -> list[tuple[int, int]]:
    """Per tile count along one axis: the shortest tile that covers it, and the length covered.

    Tiles are laid out by :func:`~.tiling.plan_tiles`, so the count and the covered length are
    those the prediction will run (a tile rounded to the pooling multiple can save one).
    """
    options = {}
    for count in range(1, max(1, -(-size // max(1, shortest - overlap))) + 1):
        tile = size if count == 1 else -(-(size + (count - 1) * overlap) // count)
        tile = min(size, max(shortest, -(-tile // multiple) * multiple))
        layout = plan_tiles((size,), tile, overlap, multiple)
        covered = sum(stop - start for start, stop in zip(layout.starts[0], layout.stops[0]))
        options.setdefault(tile, covered)
    return sorted(options.items())


def statistics_tile_of(network, ndim: int) -> tuple[int, ...]:
    """The tiles ``network``'s group-norm statistics are taken over in prediction.

    Its ``statistics_tile`` (set from the training patch by :func:`~..model.checkpoint.load_model`
    and the ``Trainer``, see :func:`~..model.frozen_norm.statistics_tile`), else the default
    calibration tile :data:`DEFAULT_TILE`.
    """
    tile = getattr(network, "statistics_tile", None)
    return tuple(int(t) for t in tile) if tile else tuple(DEFAULT_TILE[ndim])


def freezes_statistics(network, spatial_shape, n_tiles: int) -> bool:
    """Whether predicting an image freezes group norm to statistics of the network's tiles.

    Always with several prediction tiles (they must agree); with one, when the image holds more
    than twice the voxels of :func:`statistics_tile_of`: its own statistics would then differ
    from those the network learned with (:func:`~..model.frozen_norm.statistics_tile`). Up to
    that size the image's own statistics are close to them and no calibration pass is paid.

    Examples
    --------
    >>> from napari_spoco.core.model.unet import UNet
    >>> network = UNet(1, 4, 2, features=(4, 8), num_groups=2)
    >>> network.statistics_tile = (256, 256)
    >>> freezes_statistics(network, (300, 400), 1), freezes_statistics(network, (512, 512), 1)
    (False, True)
    """
    if n_tiles > 1:
        return True
    tile = statistics_tile_of(network, len(spatial_shape))
    limit = 2 * float(np.prod([min(int(t), int(s)) for t, s in zip(tile, spatial_shape)],
                              dtype=np.float64))
    return bool(float(np.prod(spatial_shape, dtype=np.float64)) > limit)


def model_ndim(model: torch.nn.Module, image_ndim: int, channel_axis: int | None) -> int:
    """Spatial dimensionality the network works in (its ``ndim``, else the image's)."""
    ndim = getattr(model, "ndim", None)
    if ndim is None:
        ndim = image_ndim - (channel_axis is not None)
    return int(ndim)


def _check_layout(shape: tuple[int, ...], ndim: int, channel_axis: int | None) -> int | None:
    if channel_axis is not None:
        if not -len(shape) <= channel_axis < len(shape):
            raise SpocoInputError(
                f"channel_axis {channel_axis} is out of range for an image of shape {shape}; "
                f"use an axis between {-len(shape)} and {len(shape) - 1}, or None."
            )
        channel_axis %= len(shape)
    spatial = len(shape) - (channel_axis is not None)
    if spatial != ndim:
        hint = (
            "set channel_axis to the channel axis"
            if spatial == ndim + 1
            else "use a model trained for this dimensionality or fix channel_axis"
        )
        raise SpocoInputError(
            f"The model is {ndim}D but the image of shape {shape} has {spatial} spatial axes "
            f"(channel_axis={channel_axis}); {hint}."
        )
    if min(shape) < 1:
        raise SpocoInputError(f"The image of shape {shape} is empty; give a non-empty image.")
    return channel_axis


def _read_tile(image, spatial: tuple[slice, ...], channel_axis, normalization) -> np.ndarray:
    """Read one tile, normalise it and return it channels-first as float32."""
    index = list(spatial)
    if channel_axis is not None:
        index.insert(channel_axis, slice(None))
    tile = np.asarray(image[tuple(index)])
    if normalization is not None:
        tile = normalization.apply(tile, channel_axis)
    tile = tile.astype(np.float32, copy=False)
    if channel_axis is None:
        tile = tile[np.newaxis]
    else:
        tile = np.moveaxis(tile, channel_axis, 0)
    if not np.isfinite(tile).all():
        where = ", ".join(f"{s.start}:{s.stop}" for s in spatial)
        raise SpocoInputError(
            f"The image holds NaN or infinite values (in the region [{where}]); replace them, "
            "e.g. with numpy.nan_to_num, before predicting."
        )
    return np.ascontiguousarray(tile)


def _cancelled(cancel) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    return bool(is_set() if is_set is not None else cancel())


def _prepare_out(out, n_channels: int, spatial: tuple[int, ...], dtype):
    expected = (n_channels, *spatial)
    if out is None:
        return np.zeros(expected, dtype=dtype)
    if tuple(out.shape) != expected:
        raise SpocoInputError(
            f"The output array has shape {tuple(out.shape)} but the embeddings have shape "
            f"{expected}; create it with that shape (embedding channels first)."
        )
    out[...] = 0
    return out


def _accumulate(target, region, values) -> None:
    """``target[region] += values``: in place for numpy, read-add-write for zarr and others.

    In place, a numpy output needs no temporary of the tile's size. On zarr ``+=`` on a slice
    would not write back, so it is read, added and written one chunk at a time (blocks of the
    target's chunk grid; rows of 256 for arrays without ``chunks``): two tile-sized copies
    would cost more than the tile's pass.
    """
    if isinstance(target, np.ndarray):
        view = target[region]
        view += values
        return
    first = 1 if region[0] == slice(None) else 0  # (channels, *spatial) or spatial regions
    chunks = getattr(target, "chunks", None)
    cuts = []
    for axis in range(first, len(region)):
        rows = region[axis]
        if chunks is not None:
            step = int(chunks[axis])
        elif axis == first:
            step = 256
        else:
            cuts.append([(rows.start, rows.stop)])
            continue
        bounds = sorted({rows.start, rows.stop,
                         *range((rows.start // step + 1) * step, rows.stop, step)})
        cuts.append(list(itertools.pairwise(bounds)))
    for block in itertools.product(*cuts):
        part = list(region)
        local = [slice(None)] * values.ndim
        for axis, (low, high) in enumerate(block, start=first):
            part[axis] = slice(low, high)
            local[axis - len(region) + values.ndim] = slice(low - region[axis].start,
                                                            high - region[axis].start)
        part = tuple(part)
        target[part] = target[part] + values[tuple(local)]


def _contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` made C-contiguous in its own buffer, for a crop view ``buffer[:E, :Y, :X]``.

    A lean pass's embeddings are such a view when the tile was padded to the pooling multiple.
    Channel by channel, the crop is moved to the front of the buffer: each channel lands at or
    before its own position and after every earlier one, so no value is overwritten before it
    is read (``np.copyto`` buffers an overlapping channel), and no second output-sized array is
    made. The result is a view of the same buffer.
    """
    if array.flags.c_contiguous:
        return array
    plane = int(np.prod(array.shape[1:]))
    if array.strides[-1] != array.itemsize or any(
            array.strides[a] < array.strides[a + 1] * array.shape[a + 1]
            for a in range(array.ndim - 1)):
        return np.ascontiguousarray(array)  # not a crop of a C-ordered buffer
    # The buffer reaches at least to the view's last value, which lies beyond E·plane values.
    last = sum((n - 1) * st for n, st in zip(array.shape, array.strides)) + array.itemsize
    flat = np.lib.stride_tricks.as_strided(array, shape=(last // array.itemsize,),
                                           strides=(array.itemsize,))
    for channel in range(array.shape[0]):
        np.copyto(flat[channel * plane:(channel + 1) * plane].reshape(array.shape[1:]),
                  array[channel])
    return flat[:array.shape[0] * plane].reshape(array.shape)


def _batches(layout: TileLayout, batch_size: int):
    """Group tiles of equal shape (the last tile of an axis can be longer) into batches."""
    groups: dict[tuple[int, ...], list] = {}
    for spatial, weights in layout.tiles():
        shape = tuple(s.stop - s.start for s in spatial)
        groups.setdefault(shape, []).append((spatial, weights))
    for tiles in groups.values():
        for start in range(0, len(tiles), batch_size):
            yield tiles[start:start + batch_size]


def predict_embeddings(
    model: torch.nn.Module,
    image,
    normalization=None,
    *,
    channel_axis: int | None = None,
    tile_shape=None,
    overlap=None,
    batch_size: int | None = None,
    device: str | torch.device | None = "auto",
    out=None,
    progress: ProgressCallback | None = None,
    cancel=None,
    dtype=np.float32,
    groupnorm: str = "image",
    calibration_tile_shape=None,
    calibration_tiles: int = CALIBRATION_TILES,
    foreground_out=None,
    input_scale: float | None = None,
):
    """Predict pixel embeddings ``(E, *spatial)`` for a 2D or 3D image of any size.

    Parameters
    ----------
    model : torch.nn.Module
        The embedding network (e.g. ``UNet``), run in eval mode under ``torch.inference_mode``.
        It is left untouched: one in training mode or on another device is copied first.
    image : array-like
        ``(C,) [Z,] Y, X``: numpy, zarr or any array supporting slicing; only one tile's
        region is read at a time.
    normalization : Normalization or None
        The statistics the network was trained with (``LoadedModel.normalization``); None if
        ``image`` is already normalised.
    channel_axis : int or None
        Axis of ``image`` holding channels; None for single-channel images.
    tile_shape, overlap : int or sequence of int, optional
        Tile shape and overlap of neighbouring tiles, per spatial axis. Defaults:
        :func:`default_tiling` (the whole image up to :data:`TILE_VOXELS` voxels, exact
        tiles beyond), or 512² / 64 in 2D and (32, 128, 128) / (8, 32, 32) in 3D for a network
        that does not state its receptive field.
        Tiles agree exactly with a whole-image prediction when a quarter of the overlap is at
        least half the network's receptive field (group norm frozen, see ``groupnorm``).
    batch_size : int, optional
        Tiles per forward pass; default 1 on the CPU, 4 (2D) or 2 (3D) on accelerators.
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``...
    out : array-like, optional
        Array of shape ``(E, *spatial)`` to write into (numpy or zarr; it is zeroed first).
        With a zarr array memory stays bounded by the tile and batch size.
    progress : callable, optional
        ``progress(done, total)`` after each batch of tiles; returning ``False`` cancels.
    cancel : threading.Event or callable, optional
        Checked before each batch (``cancel.is_set()``, or ``cancel()`` for a callable such
        as ``lambda: worker.abort_requested``); when true, prediction stops.
    dtype : numpy dtype
        Dtype of the output when ``out`` is None.
    groupnorm : {"image", "tile"}
        For a network with group norm: "image" freezes its statistics first
        (:func:`frozen_network`), pooled over tiles of the network's statistics tile spread
        over the image, so that the result depends neither on the tiling nor on the image size
        (:func:`freezes_statistics` says when); "tile" normalises each tile with its own
        statistics (tiles disagree, and large images get statistics the network never saw).
    calibration_tile_shape, calibration_tiles : optional
        With ``groupnorm="image"``: shape (default: the network's statistics tile,
        :func:`statistics_tile_of`) and most number of the calibration tiles, run as one batch
        (see :func:`frozen_network`).
    foreground_out : array-like, optional
        For a network with a foreground head: an array of the spatial shape that receives the
        blended foreground **logits** (see :func:`predict_with_foreground` for probabilities).
        Without it the head's output is dropped.
    input_scale : float, optional
        Resample the image by this factor for the network and the outputs back (the image is
        then read whole into memory); default the network's ``input_scale`` (see
        :mod:`napari_spoco.core.model.input_scale`), 1 for networks without one. The result
        always has the image's spatial shape.

    Returns
    -------
    numpy.ndarray or the ``out`` array
        Embeddings ``(E, *spatial)``.

    Raises
    ------
    SpocoInputError
        If the image does not fit the model (dimensionality, channels) or holds NaN/inf.
    PredictionCancelled
        If cancelled through ``cancel`` or ``progress``.

    Examples
    --------
    An untrained tiny network, predicted in four overlapping 32² tiles:

    >>> from napari_spoco.core.model.unet import UNet
    >>> model = UNet(in_channels=1, out_channels=4, ndim=2, features=(4, 8), num_groups=2)
    >>> image = np.random.default_rng(0).random((40, 48), dtype=np.float32)
    >>> embeddings = predict_embeddings(model, image, device="cpu", tile_shape=32, overlap=8)
    >>> embeddings.shape, embeddings.dtype
    ((4, 40, 48), dtype('float32'))
    """
    shape = tuple(int(s) for s in image.shape)
    check_image_dtype(getattr(image, "dtype", np.float32))
    ndim = model_ndim(model, len(shape), channel_axis)
    channel_axis = _check_layout(shape, ndim, channel_axis)
    spatial_shape = tuple(s for a, s in enumerate(shape) if a != channel_axis)
    has_foreground = bool(getattr(model, "foreground", False))
    if foreground_out is not None:
        if not has_foreground:
            raise SpocoInputError(
                "foreground_out was given but the network has no foreground head; train with "
                "foreground=True or leave foreground_out out."
            )
        if tuple(foreground_out.shape) != spatial_shape:
            raise SpocoInputError(
                f"foreground_out has shape {tuple(foreground_out.shape)} but the image's "
                f"spatial shape is {spatial_shape}."
            )
    scale = input_scale_of(model) if input_scale is None else float(input_scale)
    if scale != 1.0:
        return _predict_resampled(
            model, image, normalization, scale, channel_axis=channel_axis, out=out,
            dtype=dtype, foreground_out=foreground_out, tile_shape=tile_shape, overlap=overlap,
            batch_size=batch_size, device=device, progress=progress, cancel=cancel,
            groupnorm=groupnorm, calibration_tile_shape=calibration_tile_shape,
            calibration_tiles=calibration_tiles)
    n_channels = 1 if channel_axis is None else shape[channel_axis]
    in_channels = getattr(model, "in_channels", n_channels)
    if n_channels != in_channels:
        raise SpocoInputError(
            f"The model takes {in_channels} channel(s) but the image of shape {shape} has "
            f"{n_channels} (channel_axis={channel_axis}); give an image with the channels the "
            "model was trained on, or fix channel_axis."
        )
    if ndim not in DEFAULT_TILE:
        raise SpocoInputError(f"Only 2D and 3D images can be predicted, not {ndim}D.")
    device = resolve_device(device)
    if batch_size is None:
        batch_size = 1 if device.type == "cpu" else ACCELERATOR_BATCH[ndim]
    if int(batch_size) < 1:
        raise SpocoInputError(f"batch_size must be at least 1, got {batch_size}.")
    if groupnorm not in ("image", "tile"):
        raise SpocoInputError(f"groupnorm must be 'image' or 'tile', got {groupnorm!r}.")
    multiple = getattr(model, "required_multiple", (1,) * ndim)
    default_tile, default_overlap, context = default_tiling(model, spatial_shape)
    overlap = default_overlap if overlap is None else _per_axis(overlap, ndim, "overlap")
    # A given overlap keeps the exact margin when it has room for it (and a 2-pixel ramp).
    margin = tuple(c if o >= 2 * c + 2 else o // 4 for c, o in zip(context, overlap))
    layout = plan_tiles(
        spatial_shape,
        default_tile if tile_shape is None else tile_shape,
        overlap,
        multiple,
        margin,
    )
    total = len(layout)
    # One tile into an array of our own: the lean pass's buffer becomes the output itself.
    adopt = out is None and total == 1 and np.dtype(dtype) == np.float32
    out_channels = getattr(model, "out_channels", None)
    if out_channels is not None and not adopt:
        out = _prepare_out(out, int(out_channels), spatial_shape, dtype)
    if foreground_out is not None:
        foreground_out[...] = 0

    if (groupnorm == "image" and has_group_norm(model)
            and freezes_statistics(model, spatial_shape, total)):
        network = frozen_network(model, image, normalization, channel_axis=channel_axis,
                                 device=device, calibration_tile_shape=calibration_tile_shape,
                                 calibration_tiles=calibration_tiles, input_scale=1.0)
    else:
        network = _network_for_inference(model, device)
    # On the CPU the U-Net runs streamed and in place (:mod:`.lean_forward`): the same numbers
    # to round-off in about a third of the memory. Accelerators keep the plain forward, with
    # autocast and batches.
    lean = device.type == "cpu" and supports_lean_forward(network)
    done = 0
    with torch.inference_mode():
        for batch in _batches(layout, int(batch_size)):
            if _cancelled(cancel):
                raise PredictionCancelled(f"Prediction cancelled after {done}/{total} tiles.")
            tiles = np.stack([
                _read_tile(image, spatial, channel_axis, normalization)
                for spatial, _ in batch
            ])
            # bf16/fp16 autocast on CUDA only (distributed.amp_dtype); blending stays float32
            with autocast(device, amp_dtype(device)):
                if lean:  # handed over, so that the pass frees the input after its first level
                    inputs = [torch.from_numpy(tiles)]
                    del tiles
                    result, logits = lean_embeddings(network, inputs.pop())
                else:
                    result, logits = network(torch.from_numpy(tiles).to(device)), None
                    del tiles
                    if has_foreground:
                        result, logits = result[:, :-1], result[:, -1:]
            if out is None and not (lean and adopt):  # a network without out_channels
                out_channels = result.shape[1]
                out = _prepare_out(out, int(out_channels), spatial_shape, dtype)
            for index, (spatial, weights) in enumerate(batch):
                weight = torch.from_numpy(window(weights)).to(device)
                # The lean pass's output is ours to overwrite: no second tile-sized copy.
                embedding = result[index].float()
                embedding = embedding.mul_(weight) if lean else embedding * weight
                if logits is not None and foreground_out is not None:
                    _accumulate(foreground_out, spatial,
                                (logits[index, 0].float() * weight).cpu().numpy())
                if lean and adopt:  # out is zero: 0 + embedding is the embedding exactly
                    out = _contiguous(embedding.cpu().numpy())
                else:
                    _accumulate(out, (slice(None), *spatial),
                                embedding.cpu().numpy().astype(out.dtype, copy=False))
                del embedding
            del result, logits  # before the next batch's forward pass, not after it
            done += len(batch)
            if progress is not None and progress(done, total) is False:
                raise PredictionCancelled(f"Prediction cancelled after {done}/{total} tiles.")
    return out


def _predict_resampled(model, image, normalization, scale, *, channel_axis, out, dtype,
                       foreground_out, **kwargs):
    """:func:`predict_embeddings` for a network with an input scale ≠ 1.

    The image is resampled to the network's grid (in memory), predicted there with the usual
    tiles, and the embeddings and foreground logits are resampled back to the image's grid by
    the same linear interpolation (``core.model.input_scale.resample``) that training used.
    """
    array = np.asarray(image)
    spatial = tuple(s for a, s in enumerate(array.shape) if a != channel_axis)
    small = resample(array, scaled_shape(spatial, scale), channel_axis=channel_axis)
    small_foreground = None
    if foreground_out is not None:
        small_foreground = np.zeros(scaled_shape(spatial, scale), np.float32)
    embeddings = predict_embeddings(model, small, normalization, channel_axis=channel_axis,
                                    foreground_out=small_foreground, input_scale=1.0, **kwargs)
    embeddings = resample(np.asarray(embeddings), spatial, channel_axis=0)
    if foreground_out is not None:
        foreground_out[...] = resample(small_foreground, spatial)
    if out is None:
        return embeddings.astype(dtype, copy=False)
    out = _prepare_out(out, embeddings.shape[0], spatial, dtype)
    out[...] = embeddings.astype(out.dtype, copy=False)
    return out


def predict_with_foreground(model: torch.nn.Module, image, normalization=None, **kwargs):
    """Embeddings and foreground probability in one tiled pass.

    Parameters
    ----------
    model, image, normalization, **kwargs
        As for :func:`predict_embeddings` (without ``foreground_out``).

    Returns
    -------
    embeddings : numpy.ndarray or the ``out`` array
        ``(E, *spatial)``.
    foreground : numpy.ndarray or None
        float32 probability of the spatial shape; None for a network without the head.

    Examples
    --------
    >>> from napari_spoco.core.model.unet import UNet
    >>> model = UNet(in_channels=1, out_channels=4, ndim=2, features=(4, 8), num_groups=2,
    ...              foreground=True)
    >>> image = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    >>> embeddings, foreground = predict_with_foreground(model, image, device="cpu")
    >>> embeddings.shape, foreground.shape, foreground.dtype
    ((4, 32, 32), (32, 32), dtype('float32'))
    >>> bool(((foreground >= 0) & (foreground <= 1)).all())
    True
    """
    from ..loss.foreground import foreground_probability

    if not getattr(model, "foreground", False):
        return predict_embeddings(model, image, normalization, **kwargs), None
    shape = tuple(int(s) for s in image.shape)
    requested_axis = kwargs.get("channel_axis")
    channel_axis = _check_layout(shape, model_ndim(model, len(shape), requested_axis),
                                 requested_axis)
    logits = np.zeros([s for a, s in enumerate(shape) if a != channel_axis], np.float32)
    embeddings = predict_embeddings(model, image, normalization, foreground_out=logits, **kwargs)
    return embeddings, foreground_probability(logits)


def _network_for_inference(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` itself if it is in eval mode on ``device``, else an eval-mode copy there.

    The caller's network is never moved or switched to eval mode: a widget may predict with
    the network a training thread is updating, on another device.
    """
    on_device = all(
        p.device.type == device.type and (device.index is None or p.device.index == device.index)
        for p in itertools.chain(model.parameters(), model.buffers())
    )
    if on_device and not model.training:
        return model
    return copy.deepcopy(model).to(device).eval()


def default_calibration_regions(model, spatial_shape, calibration_tile_shape=None,
                                calibration_tiles: int = CALIBRATION_TILES,
                                image_fraction: float | None = CALIBRATION_FRACTION):
    """The regions :func:`frozen_network` takes group-norm statistics from.

    Tiles of the network's statistics tile (:func:`statistics_tile_of`, or
    ``calibration_tile_shape``), clipped to the image and spread evenly over it
    (:func:`.frozen_norm.calibration_regions`): as many as hold ``image_fraction`` of the image
    (:data:`CALIBRATION_FRACTION`, a quarter), at least :data:`MIN_CALIBRATION_TILES` and at
    most ``calibration_tiles``, and fewer when they would hold more than :data:`TILE_VOXELS`
    voxels, since they run as one batch. A quarter keeps the pass cheap next to the prediction
    (0.25× at 1024²) and, spread over the image, gave the same segmentations as twice as many
    tiles (method.md). ``image_fraction=None`` takes ``calibration_tiles`` whatever the image
    size (blockwise: the batch, and so the memory, stays the same as the volume grows).

    Examples
    --------
    >>> from napari_spoco.core.model.unet import UNet
    >>> network = UNet(1, 4, 2, features=(4, 8), num_groups=2)
    >>> network.statistics_tile = (256, 256)
    >>> [len(default_calibration_regions(network, (s, s))) for s in (512, 1024, 2048)]
    [4, 4, 8]
    >>> default_calibration_regions(network, (1024, 1024))[0]
    (slice(0, 256, None), slice(0, 256, None))
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    ndim = len(spatial_shape)
    tile = (statistics_tile_of(model, ndim) if calibration_tile_shape is None
            else _per_axis(calibration_tile_shape, ndim, "calibration_tile_shape"))
    tile_voxels = int(np.prod([min(t, s) for t, s in zip(tile, spatial_shape)]))
    count = min(int(calibration_tiles), max(1, TILE_VOXELS // tile_voxels))
    if image_fraction is not None:
        share = int(float(image_fraction) * np.prod(spatial_shape, dtype=np.float64)
                    // tile_voxels)
        count = min(count, max(MIN_CALIBRATION_TILES, share))
    return calibration_regions(spatial_shape, tile,
                               getattr(model, "required_multiple", (1,) * ndim), count)


def frozen_network(
    model: torch.nn.Module,
    image,
    normalization=None,
    *,
    channel_axis: int | None = None,
    device: str | torch.device | None = "auto",
    calibration_tile_shape=None,
    calibration_tiles: int = CALIBRATION_TILES,
    method: str = "sequential",
    input_scale: float | None = None,
    image_fraction: float | None = CALIBRATION_FRACTION,
) -> torch.nn.Module:
    """The network ``predict_embeddings(groupnorm="image")`` tiles with: group norm frozen.

    Up to ``calibration_tiles`` tiles spread over ``image`` (see
    :func:`.frozen_norm.calibration_regions`) are read and normalised like prediction tiles and
    run as one batch; each group norm is replaced by a ``FrozenGroupNorm`` holding the pooled
    statistics (:func:`.frozen_norm.freeze_group_norm`). ``model`` is not modified.

    Parameters
    ----------
    model, image, normalization, channel_axis, device
        As for :func:`predict_embeddings`.
    calibration_tile_shape : int or sequence of int, optional
        Calibration tile shape; default the network's statistics tile
        (:func:`statistics_tile_of`), clipped to the image (so an image that fits in it
        calibrates on itself and the frozen network reproduces the live network on the whole
        image).
    calibration_tiles : int
        Most calibration tiles (:func:`default_calibration_regions` decides how many: about a
        quarter of the image, within :data:`TILE_VOXELS` voxels since they form one batch).
    method : {"sequential", "live"}
        Passed to :func:`.frozen_norm.freeze_group_norm`.
    input_scale : float, optional
        The grid the calibration tiles are resampled to, as in :func:`predict_embeddings`;
        default the network's ``input_scale`` (1 when ``image`` is on that grid already).
    image_fraction : float or None
        Passed to :func:`default_calibration_regions`.

    Returns
    -------
    torch.nn.Module
        An eval-mode copy on ``device`` without ``nn.GroupNorm``.
    """
    shape = tuple(int(s) for s in image.shape)
    ndim = model_ndim(model, len(shape), channel_axis)
    channel_axis = _check_layout(shape, ndim, channel_axis)
    spatial_shape = tuple(s for a, s in enumerate(shape) if a != channel_axis)
    device = resolve_device(device)
    if int(calibration_tiles) < 1:
        raise SpocoInputError(f"calibration_tiles must be at least 1, got {calibration_tiles}.")
    regions = default_calibration_regions(model, spatial_shape, calibration_tile_shape,
                                          calibration_tiles, image_fraction)
    tiles = [_read_tile(image, spatial, channel_axis, normalization) for spatial in regions]
    scale = input_scale_of(model) if input_scale is None else float(input_scale)
    if scale != 1.0:  # calibrate on the grid the network will predict on (blockwise blocks)
        tiles = [resample(tile, scaled_shape(tile.shape[1:], scale), channel_axis=0)
                 for tile in tiles]
    batch = np.stack(tiles)
    del tiles
    network = _network_for_inference(model, device)
    # The calibration batch is as large as a whole-image pass: on the CPU run it lean too
    # (same statistics to round-off). "live" records through module hooks: plain forward.
    forward = None
    if device.type == "cpu" and method == "sequential" and supports_lean_forward(network):
        forward = lean_forward
    frozen = freeze_group_norm(network, torch.from_numpy(batch).to(device), method=method,
                               forward=forward)
    if device.type == "cpu":
        release_free_heap()  # the pass's freed buffers, before the prediction's own peak
    return frozen


def predict_from_checkpoint(path, image, *, device="auto", momentum=False, **kwargs):
    """Load a checkpoint and predict embeddings of ``image`` with its network.

    Parameters
    ----------
    path : str or PathLike
        A napari-spoco checkpoint.
    image : array-like
        ``(C,) [Z,] Y, X`` raw image (normalised with the checkpoint's statistics).
    device : str or torch.device
        Where to run.
    momentum : bool
        Use the momentum network g instead of f.
    **kwargs
        Passed to :func:`predict_embeddings` (``channel_axis``, ``tile_shape``, ``out``,
        ``groupnorm``...).

    Returns
    -------
    numpy.ndarray or the ``out`` array
    """
    from ..model.checkpoint import load_model

    loaded = load_model(path, device)
    model = select_network(loaded, momentum)
    return predict_embeddings(model, image, loaded.normalization, device=device, **kwargs)


def select_network(loaded, momentum: bool = False) -> torch.nn.Module:
    """f of a ``LoadedModel``, or g (its momentum copy) with ``momentum=True``."""
    if not momentum:
        return loaded.model
    if loaded.momentum_model is None:
        raise SpocoInputError(
            f"Checkpoint {str(loaded.path)!r} holds no momentum network g; consistency "
            "clustering needs one. Use a checkpoint written by napari-spoco training."
        )
    return loaded.momentum_model


def predict_augmented_view(
    loaded_model,
    image,
    *,
    channel_axis: int | None = None,
    seed: int = 0,
    anisotropic: bool = False,
    **kwargs,
) -> np.ndarray:
    """Embeddings of the momentum network g on a photometrically augmented copy of ``image``.

    The copy is the normalised image jittered by ``augment.random_photometric`` (contrast,
    brightness, gamma, blur, noise: the training's photometric draw), seeded by ``seed``. It is
    made of the whole image at once (blur and per-channel contrast need it), so ``image`` is
    read whole.

    Parameters
    ----------
    loaded_model : LoadedModel
        From :func:`napari_spoco.core.model.checkpoint.load_model`; needs ``momentum_model``.
    image : array-like
        ``(C,) [Z,] Y, X`` raw image.
    channel_axis : int or None
        Channel axis of ``image``.
    seed : int
        Seeds the augmentation.
    anisotropic : bool
        3D only: blur in-plane only.
    **kwargs
        Passed to :func:`predict_embeddings` (``tile_shape``, ``device``, ``groupnorm``...).

    Returns
    -------
    numpy.ndarray
        ``(E, *spatial)`` float32.
    """
    from ..model.normalization import channels_first
    from ..training.augment import random_photometric

    if kwargs.get("out") is not None:
        raise SpocoInputError("The augmented view is returned in memory; do not pass out.")
    kwargs.pop("out", None)
    momentum_model = select_network(loaded_model, True)
    raw = np.asarray(image[...])
    ndim = model_ndim(momentum_model, raw.ndim, channel_axis)
    channel_axis = _check_layout(raw.shape, ndim, channel_axis)
    normalised = channels_first(loaded_model.normalization.apply(raw, channel_axis), channel_axis)
    augmented = random_photometric(normalised, np.random.default_rng(seed), anisotropic=anisotropic)
    return predict_embeddings(momentum_model, augmented, None, channel_axis=0, **kwargs)


def predict_two_views(
    loaded_model,
    image,
    *,
    channel_axis: int | None = None,
    seed: int = 0,
    anisotropic: bool = False,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of f on the image and of g on a photometrically augmented copy.

    Consistency clustering (the paper's Algorithm 1) compares the two: clusters of f whose
    members g does not keep together are dropped. Parameters are those of
    :func:`predict_augmented_view`; ``kwargs`` go to both predictions.

    Returns
    -------
    emb_f, emb_g : numpy.ndarray
        ``(E, *spatial)`` float32 each.
    """
    select_network(loaded_model, True)  # fail before the first, long prediction
    if kwargs.get("out") is not None:
        raise SpocoInputError("predict_two_views returns in-memory arrays; do not pass out.")
    kwargs.pop("out", None)
    emb_f = predict_embeddings(
        loaded_model.model, image, loaded_model.normalization, channel_axis=channel_axis, **kwargs
    )
    emb_g = predict_augmented_view(loaded_model, image, channel_axis=channel_axis, seed=seed,
                                   anisotropic=anisotropic, **kwargs)
    return emb_f, emb_g
