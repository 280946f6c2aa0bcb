"""Global intensity normalisation: zero mean, unit standard deviation per channel.

The statistics are pooled over every pixel of every training image (the paper normalises
globally, not per patch) and stored in checkpoints so prediction normalises the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SpocoInputError

#: Pixels per image read when fitting; larger images are read on a regular strided grid, which
#: is deterministic and lets zarr arrays be read without loading them whole.
MAX_FIT_PIXELS = 2**22

#: Divisor floor: a channel that was constant in the training images maps to 0, not NaN/inf.
STD_FLOOR = 1e-6


def channels_first(array, channel_axis: int | None):
    """Return ``array`` as ``(C, *spatial)`` (a view for numpy; adds C = 1 without channel axis)."""
    array = np.asarray(array)
    if channel_axis is None:
        return array[np.newaxis]
    return np.moveaxis(array, channel_axis, 0)


def strided_subsample(array, channel_axis: int | None, max_pixels: int = MAX_FIT_PIXELS):
    """Read at most about ``max_pixels`` pixels of every channel on a regular grid, float64.

    Works on numpy and on lazy arrays (zarr, dask) because it only uses strided slicing.
    """
    ndim = len(array.shape)
    channel_axis = None if channel_axis is None else channel_axis % ndim
    spatial_axes = [a for a in range(ndim) if a != channel_axis]
    n_pixels = math.prod(array.shape[a] for a in spatial_axes)
    step = 1
    if n_pixels > max_pixels:
        step = math.ceil((n_pixels / max_pixels) ** (1 / len(spatial_axes)))
    index = tuple(
        slice(None) if a == channel_axis else slice(None, None, step) for a in range(ndim)
    )
    sample = np.asarray(array[index] if step > 1 else array[...], dtype=np.float64)
    return channels_first(sample, channel_axis)


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``mean`` and ``std``: ``apply`` returns ``(image − mean) / std`` as float32."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        mean = tuple(float(m) for m in np.atleast_1d(self.mean))
        std = tuple(float(s) for s in np.atleast_1d(self.std))
        if len(mean) != len(std) or not mean:
            raise SpocoInputError(
                f"Normalization needs one mean and one std per channel, got {len(mean)} means "
                f"and {len(std)} stds."
            )
        if not all(map(math.isfinite, mean + std)) or min(std) < 0:
            raise SpocoInputError(
                f"Normalization statistics must be finite with std ≥ 0, got mean={mean}, "
                f"std={std}; refit them on images without NaN or inf."
            )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        """Number of channels the statistics describe."""
        return len(self.mean)

    @classmethod
    def fit(
        cls,
        images: Sequence,
        channel_axis: int | None = None,
        max_pixels: int = MAX_FIT_PIXELS,
    ) -> Normalization:
        """Fit per-channel mean and std over all pixels of all ``images``.

        Parameters
        ----------
        images : sequence of array-like
            Numpy or lazy (zarr) arrays with the same number of channels.
        channel_axis : int or None
            The channel axis of every image, or None for single-channel images.
        max_pixels : int
            Images with more pixels than this are read on a regular strided grid of about
            this many pixels (deterministic, float64 accumulation).

        Returns
        -------
        Normalization
            Statistics pooled over the images, each image weighted by its pixel count.
        """
        if isinstance(images, np.ndarray) or hasattr(images, "shape"):
            images = [images]
        if len(images) == 0:
            raise SpocoInputError("Cannot fit a normalisation on no images; give at least one.")
        count = 0.0
        mean = None
        m2 = None
        for index, image in enumerate(images):
            sample = strided_subsample(image, channel_axis, max_pixels)
            if mean is not None and sample.shape[0] != mean.shape[0]:
                raise SpocoInputError(
                    f"Image {index} has {sample.shape[0]} channels but earlier images have "
                    f"{mean.shape[0]}; all training images need the same channels."
                )
            flat = sample.reshape(sample.shape[0], -1)
            # Weight each image by its full pixel count, not by its subsample size.
            weight = float(math.prod(image.shape)) / sample.shape[0]
            image_mean = flat.mean(axis=1)
            image_m2 = flat.var(axis=1) * weight
            if mean is None:
                count, mean, m2 = weight, image_mean, image_m2
                continue
            # Chan et al.'s pairwise update: stable when the mean is far from zero.
            delta = image_mean - mean
            total = count + weight
            mean = mean + delta * weight / total
            m2 = m2 + image_m2 + delta**2 * count * weight / total
            count = total
        std = np.sqrt(m2 / count)
        return cls(tuple(mean), tuple(std))

    def apply(self, image, channel_axis: int | None = None) -> np.ndarray:
        """Normalise ``image`` (same layout as ``fit`` saw) and return it as float32.

        Raises
        ------
        SpocoInputError
            If the image's channel count differs from the fitted one.
        """
        image = np.asarray(image)
        n_channels = 1 if channel_axis is None else image.shape[channel_axis]
        if n_channels != self.channels:
            raise SpocoInputError(
                f"The image has {n_channels} channel(s) (shape {image.shape}, channel axis "
                f"{channel_axis}) but the normalisation was fitted on {self.channels} channel(s); "
                "use images with the channels the model was trained on."
            )
        shape = [1] * image.ndim
        if channel_axis is not None:
            shape[channel_axis] = self.channels
        mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        scale = 1.0 / np.maximum(np.asarray(self.std, dtype=np.float32), STD_FLOOR)
        out = image.astype(np.float32, copy=True)
        out -= mean
        out *= scale.reshape(shape)
        return out

    def to_dict(self) -> dict:
        """JSON-able form for checkpoints."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(tuple(data["mean"]), tuple(data["std"]))
        except (KeyError, TypeError) as err:
            raise SpocoInputError(
                f"Normalization data must be a dict with 'mean' and 'std' lists, got {data!r}."
            ) from err
