"""The resolution a network works at: resampling images in and outputs back.

A pixel-embedding network learns objects of the size it was trained on. Applied to cells two or
three times larger in area (ovules → stem cells), its embeddings vary across a cell by more
than the push margin and the mutex watershed cuts the cell along straight lines. A network
therefore carries an *input scale*: images are resampled by it before the network (training
patches and prediction alike) and outputs are resampled back to the image's own grid, so
segmentation, metrics and layers never see the network's grid. The scale itself is decided
once, by :func:`napari_spoco.core.run_defaults.default_input_scale`, when a run starts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def input_scale_of(network) -> float:
    """The input scale a network was trained at (1.0 for networks that do not say)."""
    return float(getattr(network, "input_scale", None) or 1.0)


def scaled_shape(shape: Sequence[int], scale: float) -> tuple[int, ...]:
    """Spatial shape of an image resampled by ``scale`` (at least one pixel per axis).

    Examples
    --------
    >>> scaled_shape((512, 300), 0.62)
    (317, 186)
    """
    return tuple(max(1, round(int(s) * float(scale))) for s in shape)


def resample(array: np.ndarray, shape: Sequence[int], *, labels: bool = False,
             channel_axis: int | None = None) -> np.ndarray:
    """``array`` resampled to the spatial ``shape``: linear for intensities, nearest for labels.

    The same function resamples training images, training labels, prediction inputs and
    prediction outputs, so the network sees one grid in training and in prediction.

    Parameters
    ----------
    array : ndarray
        ``[Z,] Y, X`` with an optional channel axis.
    shape : sequence of int
        Wanted spatial shape.
    labels : bool
        Nearest neighbour (ids are kept exactly) instead of (bi/tri)linear interpolation.
    channel_axis : int or None
        Axis of ``array`` that holds channels (kept as it is).

    Returns
    -------
    ndarray
        Same dtype as ``array`` (float32 for intensities of integer type).

    Examples
    --------
    >>> labels = np.array([[1, 1, 2, 2]], np.uint32)
    >>> resample(labels, (1, 8), labels=True)
    array([[1, 1, 1, 1, 2, 2, 2, 2]], dtype=uint32)
    """
    array = np.asarray(array)
    shape = tuple(int(s) for s in shape)
    spatial_axes = [a for a in range(array.ndim) if a != channel_axis]
    if tuple(array.shape[a] for a in spatial_axes) == shape:
        return array
    moved = array if channel_axis is None else np.moveaxis(array, channel_axis, 0)
    tensor_dtype = torch.float64 if labels else torch.float32
    tensor = torch.from_numpy(np.ascontiguousarray(moved)).to(tensor_dtype)
    tensor = tensor[None, None] if channel_axis is None else tensor[None]
    if labels:
        # "nearest-exact" samples pixel centres, as the linear modes do with align_corners off
        result = F.interpolate(tensor, size=shape, mode="nearest-exact")
    else:
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
        result = F.interpolate(tensor, size=shape, mode=mode, align_corners=False)
    result = result[0, 0] if channel_axis is None else result[0]
    result = result.numpy()
    if channel_axis is not None:
        result = np.moveaxis(result, 0, channel_axis)
    if labels:
        return result.astype(array.dtype)
    return result.astype(array.dtype if np.issubdtype(array.dtype, np.floating) else np.float32)


def describe_input_scale(config, annotations: dict) -> str | None:
    """The line CLI and Train tab show when a run resamples its images; None at scale 1.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> describe_input_scale(SimpleNamespace(input_scale=0.62, object_size=333.0),
    ...                      {"median_object_size": 869.0})
    'images resampled by 0.62 for the network: painted objects of median 869 px become 333 px'
    """
    scale = float(getattr(config, "input_scale", None) or 1.0)
    if scale == 1.0:
        return None
    painted = float(annotations.get("median_object_size") or 0)
    return (f"images resampled by {scale:g} for the network: painted objects of median "
            f"{painted:.0f} px become {float(config.object_size or 0):.0f} px")
