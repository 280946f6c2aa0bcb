"""Augmentation: one geometric transform per sample, two independent photometric ones.

The geometric transform (window choice = crop, scaling, optional elastic deformation, quarter
turns in the (Y, X) plane, flips) is drawn once and applied identically to the image and to its
labels; labels are resampled nearest-neighbour, so no label value is ever invented. The
photometric transforms (contrast, brightness, gamma, blur, noise) are drawn twice, once for the
input of f and once for the input of g.

Everything here is numpy/scipy on ``(C, [Z,] Y, X)`` images and ``([Z,] Y, X)`` labels, driven by
an explicit ``numpy.random.Generator`` so a seed reproduces a batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from ..errors import SpocoInputError


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths and probabilities of every augmentation (intensities in normalised units).

    Each photometric transform is applied with ``photometric_probability``; factors drawn from
    ``[1/(1+x), 1+x]`` are log-uniform so that shrinking and growing are equally likely.
    """

    flip: bool = True
    rotate90: bool = True
    scale_probability: float = 0.5
    scale_range: tuple[float, float] = (0.8, 1.25)
    elastic_probability: float = 0.0
    elastic_spacing: int = 32
    elastic_sigma: float = 2.0
    photometric_probability: float = 0.5
    contrast: float = 0.25
    brightness: float = 0.2
    gamma: float = 0.3
    blur_sigma: float = 1.0
    noise_std: float = 0.1

    def __post_init__(self):
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise SpocoInputError(
                f"scale_range must be (low, high) with 0 < low ≤ high, got {self.scale_range}."
            )
        object.__setattr__(self, "scale_range", (float(lo), float(hi)))

    def to_dict(self) -> dict:
        """JSON-able form (for the training configuration)."""
        data = asdict(self)
        data["scale_range"] = list(self.scale_range)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> AugmentConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SpocoInputError(
                f"Unknown augmentation settings {sorted(unknown)}; known: {sorted(known)}."
            )
        data = dict(data)
        if "scale_range" in data:
            data["scale_range"] = tuple(data["scale_range"])
        return cls(**data)


@dataclass(frozen=True)
class Geometry:
    """One drawn geometric transform.

    ``window_shape`` is the region read from the image; it is resampled to the pre-rotation
    shape (``output_shape`` with Y and X swapped for odd ``rot90``), turned ``rot90`` quarter
    turns in the (Y, X) plane and flipped along ``flip_axes``. ``displacement`` is a coarse
    elastic field ``(ndim, *grid)`` in pixels, or None.
    """

    output_shape: tuple[int, ...]
    window_shape: tuple[int, ...]
    rot90: int = 0
    flip_axes: tuple[int, ...] = ()
    displacement: np.ndarray | None = None

    @property
    def resampled_shape(self) -> tuple[int, ...]:
        shape = list(self.output_shape)
        if self.rot90 % 2:
            shape[-2], shape[-1] = shape[-1], shape[-2]
        return tuple(shape)


def _log_uniform(rng: np.random.Generator, spread: float, size=None):
    bound = math.log1p(spread)
    return np.exp(rng.uniform(-bound, bound, size))


def draw_geometry(
    rng: np.random.Generator,
    patch_shape,
    image_shape,
    anisotropic: bool = False,
    config: AugmentConfig | None = None,
) -> Geometry:
    """Draw a geometric transform producing ``patch_shape`` from an image of ``image_shape``.

    Quarter turns stay in the (Y, X) plane. In 2D and in anisotropic 3D, scaling and flips are
    in-plane; isotropic 3D also scales and flips z. Zooming out reads a window larger than the
    patch, so the scale is limited to what the image can provide (patch ≤ image is required).
    """
    config = config or AugmentConfig()
    patch_shape = tuple(int(s) for s in patch_shape)
    image_shape = tuple(int(s) for s in image_shape)
    ndim = len(patch_shape)
    if any(p > s for p, s in zip(patch_shape, image_shape)):
        raise SpocoInputError(
            f"Patch {patch_shape} is larger than the image {image_shape}; use a smaller patch."
        )
    rot90 = int(rng.integers(4)) if config.rotate90 else 0
    pre = list(patch_shape)
    if rot90 % 2:
        pre[-2], pre[-1] = pre[-1], pre[-2]
        if pre[-2] > image_shape[-2] or pre[-1] > image_shape[-1]:
            # A non-square patch turned sideways would not fit this image: half turns only.
            rot90 -= 1
            pre = list(patch_shape)
    moving_axes = range(ndim) if ndim == 3 and not anisotropic else range(ndim - 2, ndim)
    window = list(pre)
    if rng.random() < config.scale_probability:
        low, high = config.scale_range
        scale = math.exp(rng.uniform(math.log(low), math.log(high)))
        scale = max(scale, max(pre[a] / image_shape[a] for a in moving_axes))
        for axis in moving_axes:
            window[axis] = int(min(max(round(pre[axis] / scale), 1), image_shape[axis]))
    flips = ()
    if config.flip:
        flips = tuple(a for a in moving_axes if rng.random() < 0.5)
    displacement = None
    if rng.random() < config.elastic_probability:
        grid = [math.ceil(s / config.elastic_spacing) + 1 for s in pre]
        displacement = rng.normal(0.0, config.elastic_sigma, (ndim, *grid))
        if ndim == 3 and anisotropic:
            displacement[0] = 0.0  # slices stay slices
    return Geometry(tuple(patch_shape), tuple(window), rot90, flips, displacement)


def window_slices(window_shape, image_shape, rng: np.random.Generator, center=None):
    """Slices of a ``window_shape`` region: uniform, or around ``center`` kept inside the image."""
    slices = []
    for axis, (window, size) in enumerate(zip(window_shape, image_shape)):
        if center is None:
            start = int(rng.integers(size - window + 1))
        else:
            start = int(min(max(int(center[axis]) - window // 2, 0), size - window))
        slices.append(slice(start, start + window))
    return tuple(slices)


def _axis_coordinates(window: int, out: int) -> np.ndarray:
    # Pixel centres aligned: output pixel o samples input position (o + ½)·window/out − ½.
    coords = (np.arange(out) + 0.5) * (window / out) - 0.5
    return np.clip(coords, 0, window - 1)


def _linear_along(array: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    low = np.minimum(np.floor(coords).astype(np.intp), max(array.shape[axis] - 2, 0))
    high = np.minimum(low + 1, array.shape[axis] - 1)
    shape = [1] * array.ndim
    shape[axis] = coords.size
    weight = (coords - low).astype(np.float32).reshape(shape)
    a = np.take(array, low, axis=axis)
    b = np.take(array, high, axis=axis)
    return a + (b - a) * weight


def _bspline_matrix(n_grid: int, n_out: int) -> np.ndarray:
    """``(n_out, n_grid)`` weights of a cubic B-spline through ``n_grid`` evenly spread knots."""
    position = np.linspace(0, n_grid - 1, n_out)[:, None] - np.arange(n_grid)[None, :]
    t = np.abs(position)
    weights = np.where(
        t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0)
    )
    # Knots near the border miss neighbours outside: renormalise to keep a partition of unity.
    return weights / weights.sum(axis=1, keepdims=True)


def _resample(geometry: Geometry, image, labels, image_order: int):
    out_shape = geometry.resampled_shape
    window = geometry.window_shape
    if geometry.displacement is None:
        if tuple(window) == tuple(out_shape):
            return image, labels
        coords = [_axis_coordinates(w, o) for w, o in zip(window, out_shape)]
        nearest = [np.rint(c).astype(np.intp) for c in coords]
        if labels is not None:
            labels = labels[np.ix_(*nearest)]
        if image is not None:
            if image_order == 0:
                image = image[(slice(None), *np.ix_(*nearest))]
            else:
                for axis, c in enumerate(coords):
                    if window[axis] != out_shape[axis]:
                        image = _linear_along(image, axis + 1, c)
        return image, labels
    grids = np.meshgrid(
        *[_axis_coordinates(w, o) for w, o in zip(window, out_shape)], indexing="ij"
    )
    coarse = geometry.displacement
    # Cubic B-spline upsampling of the coarse random grid, one small matrix per axis: a smooth
    # field at a fraction of the cost of smoothing (or spline-zooming) full-resolution noise.
    bases = [_bspline_matrix(g, o) for g, o in zip(coarse.shape[1:], out_shape)]
    coords = np.empty((len(out_shape), *out_shape), dtype=np.float32)
    for axis, grid in enumerate(grids):
        field = coarse[axis]
        if np.any(field):
            for basis in bases:
                # Contracting the leading axis moves the upsampled axis to the end: after one
                # pass per axis the field is back in (Z,) Y, X order.
                field = np.tensordot(field, basis, axes=([0], [1]))
            grid = grid + field * (window[axis] / out_shape[axis])
        coords[axis] = np.clip(grid, 0, window[axis] - 1)
    if labels is not None:
        labels = labels[tuple(np.rint(coords).astype(np.intp))]
    if image is not None:
        if image_order == 0:
            image = image[(slice(None), *np.rint(coords).astype(np.intp))]
        else:
            image = np.stack([
                ndimage.map_coordinates(channel, coords, order=1, mode="nearest", prefilter=False)
                for channel in image
            ])
    return image, labels


def apply_geometry(geometry: Geometry, image=None, labels=None, image_order: int = 1):
    """Apply ``geometry`` to an image window ``(C, *window)`` and/or labels ``(*window)``.

    Labels are always sampled nearest-neighbour; the image linearly (``image_order=1``) or
    nearest-neighbour (``image_order=0``, at exactly the label positions).

    Returns
    -------
    (image, labels)
        Contiguous arrays of spatial shape ``geometry.output_shape`` (None where not given).
    """
    image, labels = _resample(geometry, image, labels, image_order)
    ndim = len(geometry.output_shape)
    if image is not None:
        image = np.rot90(image, geometry.rot90, axes=(ndim - 1, ndim))
        image = np.ascontiguousarray(np.flip(image, [a + 1 for a in geometry.flip_axes]))
    if labels is not None:
        labels = np.rot90(labels, geometry.rot90, axes=(ndim - 2, ndim - 1))
        labels = np.ascontiguousarray(np.flip(labels, list(geometry.flip_axes)))
    return image, labels


def random_geometric(
    image: np.ndarray,
    labels: np.ndarray | None,
    rng: np.random.Generator,
    patch_shape=None,
    anisotropic: bool = False,
    config: AugmentConfig | None = None,
    center=None,
    image_order: int = 1,
):
    """Crop and geometrically transform ``image`` ``(C, *spatial)`` and ``labels`` together.

    Parameters
    ----------
    image, labels : numpy.ndarray
        Image with a leading channel axis, and labels of its spatial shape (or None).
    rng : numpy.random.Generator
        Source of randomness.
    patch_shape : tuple of int, optional
        Output spatial shape (default: the image's).
    anisotropic : bool
        3D only: keep scaling and flips in-plane.
    config : AugmentConfig, optional
        Strengths and probabilities.
    center : sequence of int, optional
        Pixel the window is centred on (shifted to stay inside the image); uniform if None.
    image_order : {0, 1}
        Interpolation of the image.

    Returns
    -------
    (image, labels)
        Patches of spatial shape ``patch_shape``.
    """
    spatial = image.shape[1:]
    patch_shape = tuple(spatial if patch_shape is None else patch_shape)
    geometry = draw_geometry(rng, patch_shape, spatial, anisotropic, config)
    index = window_slices(geometry.window_shape, spatial, rng, center)
    return apply_geometry(
        geometry,
        image[(slice(None), *index)],
        None if labels is None else labels[index],
        image_order,
    )


def random_photometric(
    image: np.ndarray,
    rng: np.random.Generator,
    anisotropic: bool = False,
    config: AugmentConfig | None = None,
) -> np.ndarray:
    """Return a photometrically jittered float32 copy of a normalised ``(C, *spatial)`` image.

    In order, each with probability ``config.photometric_probability``: contrast about the
    channel mean, brightness shift, gamma, Gaussian blur (in-plane only for anisotropic 3D), and
    additive Gaussian noise. Normalised images are negative in places, so gamma acts on a copy
    rescaled to [0, 1] per channel and is mapped back to the channel's original range.
    """
    config = config or AugmentConfig()
    out = np.array(image, dtype=np.float32, copy=True)
    n_channels = out.shape[0]
    spatial_axes = tuple(range(1, out.ndim))
    per_channel = (n_channels,) + (1,) * len(spatial_axes)
    p = config.photometric_probability
    # In-place arithmetic throughout: this runs twice per patch on the training hot path.
    if rng.random() < p and config.contrast > 0:
        factor = _log_uniform(rng, config.contrast, n_channels).astype(np.float32)
        mean = out.mean(axis=spatial_axes, keepdims=True, dtype=np.float64).astype(np.float32)
        out -= mean
        out *= factor.reshape(per_channel)
        out += mean
    if rng.random() < p and config.brightness > 0:
        shift = rng.uniform(-config.brightness, config.brightness, n_channels)
        out += shift.astype(np.float32).reshape(per_channel)
    if rng.random() < p and config.gamma > 0:
        gamma = _log_uniform(rng, config.gamma, n_channels).astype(np.float32)
        low = out.min(axis=spatial_axes, keepdims=True)
        span = out.max(axis=spatial_axes, keepdims=True) - low
        span = np.where(span > 0, span, 1.0).astype(np.float32)
        out -= low
        out /= span
        np.power(out, gamma.reshape(per_channel), out=out)
        out *= span
        out += low
    if rng.random() < p and config.blur_sigma > 0:
        sigma = float(rng.uniform(0, config.blur_sigma))
        sigmas = [0.0] + [sigma] * len(spatial_axes)
        if anisotropic and len(spatial_axes) == 3:
            sigmas[1] = 0.0
        out = ndimage.gaussian_filter(out, sigmas)
    if rng.random() < p and config.noise_std > 0:
        noise = rng.standard_normal(out.shape, dtype=np.float32)
        noise *= float(rng.uniform(0, config.noise_std))
        out += noise
    return out.astype(np.float32, copy=False)
