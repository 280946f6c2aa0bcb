"""Checks of one (image, labels) training pair, with messages that say how to fix the input.

``validate_pair`` is re-exported by :mod:`napari_spoco.core.training.data`, its documented home.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import SpocoInputError

#: Elements per block when streaming over an array, to bound the temporary memory of checks.
SLAB_ELEMENTS = 2**22


def slabs(array, max_elements: int = SLAB_ELEMENTS):
    """Yield ``(start, block)``: numpy blocks of ``array`` along its first axis.

    Numpy arrays give views; lazy arrays (zarr, dask) are read one block at a time.
    """
    shape = tuple(array.shape)
    if not shape:
        yield 0, np.asarray(array)
        return
    step = max(1, max_elements // max(1, math.prod(shape[1:])))
    for start in range(0, shape[0], step):
        yield start, np.asarray(array[start : start + step])


def _shape_names(ndim: int, with_channels: bool) -> str:
    axes = "Y, X" if ndim == 2 else "Z, Y, X"
    plain = f"({axes})"
    if not with_channels:
        return plain
    return f"({'C, ' + axes}) or ({axes + ', C'})"


def _check_dimensions(image_shape, ndim, channel_axis):
    expected = ndim + (channel_axis is not None)
    if len(image_shape) == expected:
        return
    message = (
        f"The image has shape {tuple(image_shape)} ({len(image_shape)} axes), but a {ndim}D "
        f"model needs {_shape_names(ndim, False)}, or {_shape_names(ndim, True)} with "
        "channel_axis set to the channel axis."
    )
    if channel_axis is None and len(image_shape) == ndim + 1:
        message += (
            " If one axis holds channels, pass its index as channel_axis"
            + ("; if the first axis is z, train a 3D model." if ndim == 2 else ".")
        )
    elif channel_axis is not None and len(image_shape) == ndim:
        message += " This image has no channel axis: use channel_axis=None."
    elif ndim == 3 and len(image_shape) == 2:
        message += " For a single 2D image train a 2D model."
    elif ndim == 2 and len(image_shape) == 4 - (channel_axis is None):
        message += " For a z stack train a 3D model."
    raise SpocoInputError(message)


def check_channel_axis(image_shape, channel_axis) -> None:
    """Raise ``SpocoInputError`` unless ``channel_axis`` is None or an axis of the image.

    Parameters
    ----------
    image_shape : tuple of int
        Shape of the image, channels included.
    channel_axis : int or None
        The axis said to hold channels (negative allowed).
    """
    if channel_axis is None:
        return
    ndim = len(image_shape)
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)) or not (
        -ndim <= channel_axis < ndim
    ):
        raise SpocoInputError(
            f"channel_axis={channel_axis!r} does not exist in an image of shape "
            f"{tuple(image_shape)} (its axes are 0 to {ndim - 1}, or -{ndim} to -1). Give the "
            "axis that holds the channels (--channel-axis on the command line), or none for a "
            "single-channel image."
        )


def _check_hidden_channels(image_shape, labels_shape) -> None:
    """Explain labels that fit the image once its first or last axis is taken as channels.

    Without this, an RGB ``(Y, X, 3)`` image with ``(Y, X)`` labels was reported as labels of
    the wrong shape, although the labels were right and the channel axis was missing.
    """
    if len(image_shape) != len(labels_shape) + 1:
        return
    for axis in (len(image_shape) - 1, 0):
        rest = tuple(size for index, size in enumerate(image_shape) if index != axis)
        if rest == tuple(labels_shape):
            raise SpocoInputError(
                f"The image has shape {tuple(image_shape)} and the labels {tuple(labels_shape)}:"
                f" the image seems to have a channel axis (axis {axis}, "
                f"{image_shape[axis]} channels). Give it: --channel-axis {axis} on the command "
                f"line, channel_axis={axis} in Python. (If that axis is z instead, give labels "
                "for the whole stack.)"
            )


def _checked_labels(labels, image_spatial):
    labels_shape = tuple(labels.shape)
    if labels_shape != tuple(image_spatial):
        raise SpocoInputError(
            f"The labels have shape {labels_shape} but the image's spatial shape is "
            f"{tuple(image_spatial)}; labels must cover the image pixel for pixel (create the "
            "Labels layer from this image, or pick the labels that belong to it)."
        )
    kind = labels.dtype.kind
    if kind == "b":
        raise SpocoInputError(
            "The labels are a boolean mask, not instance labels: give every painted object its "
            "own integer id (e.g. skimage.measure.label(mask)), 0 meaning unlabeled."
        )
    if kind not in "iuf":
        raise SpocoInputError(
            f"Labels must be integers (0 = unlabeled, > 0 = object id), got dtype {labels.dtype}."
        )
    low, high, integral = math.inf, -math.inf, True
    for _, block in slabs(labels):
        if block.size == 0:
            continue
        low, high = min(low, block.min()), max(high, block.max())
        if kind == "f":
            integral = integral and bool(np.all(np.isfinite(block) & (np.mod(block, 1) == 0)))
    if kind == "f" and not integral:
        raise SpocoInputError(
            f"The labels have dtype {labels.dtype} with non-integer (or NaN) values; labels "
            "must be integer object ids. Convert them, e.g. labels.astype(np.uint32)."
        )
    if low < 0:
        raise SpocoInputError(
            f"The labels contain negative ids (minimum {low}); use 0 for unlabeled and "
            "positive integers for objects."
        )
    if high > np.iinfo(np.int64).max:
        raise SpocoInputError(
            f"The labels contain ids up to {high}, beyond int64; relabel them with smaller ids "
            "(e.g. skimage.segmentation.relabel_sequential)."
        )
    if kind == "f":
        # Integral float labels (from tools that save float tiffs) are accepted as int64.
        return np.asarray(labels).astype(np.int64)
    return labels


def check_image_dtype(dtype) -> None:
    """Raise ``SpocoInputError`` unless ``dtype`` holds real numbers (bool, int, float).

    Checked before any conversion: ``astype(float)`` turns an object array holding ``None``
    into NaN, which was then reported as NaN pixels instead of the wrong dtype.
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError:  # e.g. a torch dtype: not numpy's to judge, torch checks it itself
        return
    if dtype.kind not in "biuf":
        what = "Python objects" if dtype.kind == "O" else "values that are not real numbers"
        raise SpocoInputError(
            f"The image holds {what} (dtype {dtype}); it must hold real numbers. Convert it "
            "(e.g. image.astype(np.float32)) or load a numeric image."
        )


def _check_image_values(image):
    check_image_dtype(image.dtype)
    low, high = math.inf, -math.inf
    for _, block in slabs(image):
        if block.size == 0:
            continue
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            raise SpocoInputError(
                "The image contains NaN or infinite values; replace them (e.g. "
                "np.nan_to_num(image)) or crop them away before training."
            )
        low, high = min(low, block.min()), max(high, block.max())
    if not low < high:
        raise SpocoInputError(
            f"The image is constant (every pixel is {low}); there is nothing to learn from it. "
            "Check that the right image layer or file is selected."
        )


def validate_pair(image, labels, ndim: int, channel_axis: int | None = None):
    """Check that ``image`` and ``labels`` can be a training pair of a ``ndim``-D model.

    Parameters
    ----------
    image : array-like
        ``[Z,] Y, X`` with, if ``channel_axis`` is given, one more axis holding channels.
    labels : array-like
        Integer ids of the image's spatial shape; 0 = unlabeled.
    ndim : {2, 3}
        Spatial dimensions of the model.
    channel_axis : int or None
        Index of the channel axis of ``image`` (negative allowed).

    Returns
    -------
    labels : array-like
        The labels themselves, or an int64 copy when they were given as integral floats.

    Raises
    ------
    SpocoInputError
        Wrong number of axes, labels of another spatial shape, labels that are not
        non-negative integers (booleans included), NaN/inf in the image, constant image.
        Whether any pixel is labeled is checked over all pairs by ``TrainingData``.
    """
    if ndim not in (2, 3):
        raise SpocoInputError(f"The model must be 2D or 3D (ndim 2 or 3), got ndim={ndim!r}.")
    image = image if hasattr(image, "shape") else np.asarray(image)
    labels = labels if hasattr(labels, "shape") else np.asarray(labels)
    image_shape = tuple(image.shape)
    check_channel_axis(image_shape, channel_axis)
    _check_dimensions(image_shape, ndim, channel_axis)
    if channel_axis is None:
        _check_hidden_channels(image_shape, tuple(labels.shape))
    spatial = list(image_shape)
    if channel_axis is not None:
        del spatial[channel_axis % len(image_shape)]
    labels = _checked_labels(labels, spatial)
    _check_image_values(image)
    return labels


# -- clustering parameters ------------------------------------------------------------------

#: Clustering parameters that are lengths in embedding space: finite and > 0.
_MARGINS = ("delta_v", "delta_d", "bandwidth")
#: Parameters that are probabilities or overlaps: finite and in [0, 1].
_FRACTIONS = ("foreground_threshold", "iou_threshold")
#: Parameters that count pixels or iterations: whole numbers of at least this.
_COUNTS = {"n_anchors": 1, "max_iter": 1, "min_samples": 1, "min_cluster_size": 2,
           "max_samples": 2}


def check_clustering_params(method: str, **params) -> None:
    """Raise ``SpocoInputError`` for a clustering parameter no clustering can use.

    Called by ``napari-spoco segment`` before any file is read and by
    :func:`napari_spoco.core.clustering.segment` itself, so NaN margins never reach the
    mutex watershed (which panics on NaN affinities) and a zero bandwidth never reaches
    mean-shift (which divides by it).

    Parameters
    ----------
    method : str
        The clustering method; named in the messages.
    **params
        Any of ``delta_v``, ``delta_d``, ``bandwidth``, ``foreground_threshold``,
        ``iou_threshold``, ``n_anchors``, ``max_iter``, ``min_samples``, ``min_cluster_size``,
        ``max_samples``, ``strides``. ``None`` values (defaults) and other keys are not checked
        here.
    """
    for name, value in params.items():
        if value is None:
            continue
        if name in _MARGINS and not (_is_real(value) and math.isfinite(value) and value > 0):
            raise SpocoInputError(
                f"{name}={value!r} for {method}: it must be a finite number > 0 (a distance in "
                "embedding space; the training margins are delta_v=0.5 and delta_d=2.0 by "
                "default, and the bandwidth defaults to delta_v)."
            )
        if name in _FRACTIONS and not (_is_real(value) and 0.0 <= value <= 1.0):
            raise SpocoInputError(
                f"{name}={value!r} for {method}: it must be a number from 0 to 1."
            )
        if name in _COUNTS and not _is_count(value, _COUNTS[name]):
            raise SpocoInputError(
                f"{name}={value!r} for {method}: it must be a whole number >= {_COUNTS[name]}."
            )
        if name == "strides":
            strides = value if isinstance(value, (tuple, list)) else (value,)
            if not all(_is_count(stride, 1) for stride in strides):
                raise SpocoInputError(
                    f"strides={value!r} for {method}: give positive whole numbers, e.g. 4,4."
                )


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))


def _is_count(value, minimum: int) -> bool:
    return _is_real(value) and math.isfinite(value) and float(value).is_integer() and (
        value >= minimum)
