"""Decisions the widgets make, as plain functions over numbers and arrays.

Nothing here imports Qt, napari or torch, so every rule (which label id is free, which part of
the image a preview covers, when the next preview is due, what "accept" writes) is unit-tested
without a viewer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# The run defaults (learning rate, patch and batch) are the core's, shared with the command
# line and the demo; re-exported here for code that imported them from the widgets.
from napari_spoco.core.run_defaults import (  # noqa: F401
    default_learning_rate,
    default_patch_and_batch,
    fit_patch_side,
)

#: A live preview predicts at most this many pixels, so it stays a small fraction of a step.
PREVIEW_MAX_PIXELS_2D = 384 * 384
PREVIEW_MAX_PIXELS_3D = 48 * 96 * 96


def spatial_axes(ndim: int, channel_axis: int | None) -> tuple[int, ...]:
    """Axes of a layer's data that are space (all but the channel axis)."""
    if channel_axis is None:
        return tuple(range(ndim))
    channel_axis %= ndim
    return tuple(a for a in range(ndim) if a != channel_axis)


def spatial_shape(shape: Sequence[int], channel_axis: int | None) -> tuple[int, ...]:
    """The shape a Labels layer needs to annotate an image of ``shape``."""
    return tuple(int(shape[a]) for a in spatial_axes(len(shape), channel_axis))


def guess_channel_axis(shape: Sequence[int], rgb: bool, model_ndim: int | None = None):
    """Channel axis of an image layer: the last for RGB, else none unless the data has more
    dimensions than the model's spatial dimensionality (then the first axis holds channels)."""
    if rgb:
        return len(shape) - 1
    if model_ndim is not None and len(shape) == model_ndim + 1:
        return 0
    return None


def next_free_label(arrays: Sequence[np.ndarray], background_id: int | None = None) -> int:
    """Smallest id above every id used in ``arrays`` that is not the background id.

    One counter over all annotation layers keeps ids unique across the training set, so an id
    names the same object wherever it is reported.
    """
    used = 0
    for array in arrays:
        if array is None or np.size(array) == 0:
            continue
        if background_id is None:
            top = int(np.max(array))
        else:
            # The background id may be the largest value; it must not push object ids up.
            masked = np.where(np.asarray(array) == background_id, 0, array)
            top = int(np.max(masked))
        used = max(used, top)
    candidate = used + 1
    if background_id is not None and candidate == background_id:
        candidate += 1
    return candidate


def count_objects(labels: np.ndarray, background_id: int | None = None) -> int:
    """Number of painted objects: distinct non-zero ids other than the background id."""
    ids = np.unique(np.asarray(labels))
    ids = ids[ids != 0]
    if background_id is not None:
        ids = ids[ids != background_id]
    return int(ids.size)


def eta_seconds(iteration: int, total: int, seconds_per_step: float) -> float:
    """Seconds left at the current speed (0 when done or the speed is unknown)."""
    if not seconds_per_step or not math.isfinite(seconds_per_step) or iteration >= total:
        return 0.0
    return (total - iteration) * float(seconds_per_step)


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"`` or ``"2 h 07 min"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_text(iteration: int, total: int, loss: float, seconds_per_step: float) -> str:
    """One line for the progress bar: iteration, loss and time left."""
    eta = format_duration(eta_seconds(iteration, total, seconds_per_step))
    return f"{iteration}/{total}  loss {loss:.4g}  ETA {eta}"


def preview_due(now: float, last: float | None, interval: float) -> bool:
    """Whether a preview is due: the first one at once, then every ``interval`` seconds."""
    return last is None or now - last >= interval


def visible_region(
    shape: Sequence[int],
    corners: np.ndarray,
    point: Sequence[float],
    displayed: Sequence[int],
    max_pixels: int,
    context: Sequence[int] | None = None,
):
    """The part of an image a live preview predicts, and where its shown slice lies in it.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the image.
    corners : array of shape (2, ndim)
        First and last visible pixel along each spatial axis (napari's ``corner_pixels``);
        used for the displayed axes only.
    point : sequence of float
        Current position in data coordinates; used for the axes not displayed.
    displayed : sequence of int
        The displayed spatial axes.
    max_pixels : int
        Budget for the displayed part: a larger view is cut to a centred window.
    context : sequence of int, optional
        Per axis, how many pixels around the current slice the network sees along axes not
        displayed (a 3D network previews a 2D slice from a slab of neighbouring slices).

    Returns
    -------
    read : tuple of slice
        What to read from the image (spatial axes).
    shown : tuple of slice
        What to keep of the prediction of ``read``: the displayed window, and along the other
        axes the single current slice (kept as a length-1 axis).
    offset : tuple of int
        Data coordinates of the first shown pixel (the preview layer's translate in pixels).
    """
    ndim = len(shape)
    corners = np.asarray(corners, dtype=float).reshape(2, ndim)
    displayed = [a % ndim for a in displayed]
    side = max(1, int(max_pixels ** (1.0 / max(len(displayed), 1))))
    read, shown, offset = [], [], []
    for axis in range(ndim):
        size = int(shape[axis])
        if axis in displayed:
            lo = int(np.clip(np.floor(min(corners[:, axis])), 0, size - 1))
            hi = int(np.clip(np.ceil(max(corners[:, axis])) + 1, lo + 1, size))
            if hi - lo > side:
                centre = (lo + hi) // 2
                lo = int(np.clip(centre - side // 2, 0, size - side))
                hi = lo + side
            read.append(slice(lo, hi))
            shown.append(slice(0, hi - lo))
            offset.append(lo)
            continue
        index = int(np.clip(round(float(point[axis])), 0, size - 1))
        depth = 1 if context is None else max(1, min(int(context[axis]), size))
        lo = int(np.clip(index - depth // 2, 0, size - depth))
        read.append(slice(lo, lo + depth))
        shown.append(slice(index - lo, index - lo + 1))
        offset.append(index)
    return tuple(read), tuple(shown), tuple(offset)


def accept_indices(
    predicted: np.ndarray, annotations: np.ndarray, object_id: int
) -> tuple[np.ndarray, ...]:
    """Pixels that "accept" writes: the predicted object where nothing is painted yet.

    Accepting never overwrites a painted pixel (object or background brush): the user's
    annotation always wins over the network's guess.
    """
    if predicted.shape != annotations.shape:
        raise ValueError(
            f"prediction {predicted.shape} and annotations {annotations.shape} differ in shape"
        )
    return np.nonzero((predicted == object_id) & (annotations == 0))


def object_at(labels: np.ndarray, position: Sequence[float]) -> int:
    """Label id at a data-coordinate position, 0 outside the array."""
    index = tuple(int(round(float(p))) for p in position[-labels.ndim :])
    if any(i < 0 or i >= s for i, s in zip(index, labels.shape)):
        return 0
    return int(labels[index])


def decimate(values: Sequence[float], max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` (x, y) points of a long curve: the mean of each equal bin.

    Bin means keep the trend of a noisy loss curve where plain striding would alias it.
    """
    y = np.asarray(values, dtype=float)
    n = y.size
    if n <= max_points:
        return np.arange(n, dtype=float), y
    edges = np.linspace(0, n, max_points + 1).astype(int)
    sums = np.add.reduceat(y, edges[:-1])
    counts = np.diff(edges)
    x = (edges[:-1] + edges[1:] - 1) / 2.0
    return x, sums / counts


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory failure of torch or numpy."""
    if isinstance(error, MemoryError):
        return True
    name = type(error).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(error).lower()


def safe_store_name(name: str, taken: Sequence[str] = ()) -> str:
    """A zarr array name derived from a layer name: letters, digits, ``-`` and ``_``, unique."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_") or "labels"
    candidate, n = cleaned, 1
    while candidate in taken:
        n += 1
        candidate = f"{cleaned}_{n}"
    return candidate


#: How a segmentation's instances are drawn over the image: outlines one pixel wide, so the
#: image stays visible inside every object (a filled layer hides it).
INSTANCES_CONTOUR = 1
INSTANCES_CONTOUR_OPACITY = 0.9


def result_layer_names(image_name: str, taken: Sequence[tuple[str, bool]] = ()) -> dict:
    """Names of the Segment tab's result layers of ``image_name``: one set per image.

    Parameters
    ----------
    image_name : str
        The segmented image layer's name.
    taken : sequence of (name, is_output)
        The viewer's layers, see :func:`output_layer_name`.

    Returns
    -------
    dict
        ``{"pca": ..., "instances": ...}``.
    """
    return {key: output_layer_name(f"{image_name} {suffix}", taken)
            for key, suffix in (("pca", "embeddings (PCA)"), ("instances", "instances"))}


def output_layer_name(wanted: str, taken: Sequence[tuple[str, bool]] = ()) -> str:
    """The name an output layer gets: ``wanted``, unless a layer of the user's has it.

    ``taken`` lists the viewer's layers as ``(name, is_output)``. An output layer called
    ``wanted`` is reused (updated in place); a user's layer is never overwritten, the output
    gets a ``" (spoco)"`` suffix instead.
    """
    users = {name for name, is_output in taken if not is_output}
    name = wanted
    while name in users:
        name += " (spoco)"
    return name


def segment_buttons(busy: bool, cached: bool, segmented: bool) -> dict:
    """Which Segment-tab buttons are enabled.

    Parameters
    ----------
    busy : bool
        A prediction or clustering is running.
    cached : bool
        Embeddings of a finished prediction are kept (re-clustering needs them).
    segmented : bool
        An instances layer to accept objects from is in the viewer.
    """
    return {"predict": not busy, "cancel": busy, "recluster": not busy and cached,
            "accept": segmented}
