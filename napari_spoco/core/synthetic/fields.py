"""Building blocks shared by the synthetic generators: random fields, optics and camera noise.

Everything here draws its randomness from a ``numpy.random.Generator`` handed in by the caller,
so a generator seeded once gives the same arrays on every run and platform.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..errors import SpocoInputError


def check_shape(shape: Sequence[int], min_size: int = 8) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of ints after checking it is a 2D or 3D image shape.

    Parameters
    ----------
    shape : sequence of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    min_size : int
        Smallest allowed length of the in-plane axes.

    Returns
    -------
    tuple of int
    """
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as err:
        raise SpocoInputError(
            f"shape must be a tuple like (512, 512) or (64, 256, 256), got {shape!r}."
        ) from err
    if len(shape) not in (2, 3):
        raise SpocoInputError(
            f"shape {shape} has {len(shape)} axes; give (Y, X) for 2D or (Z, Y, X) for 3D."
        )
    if min(shape[-2:]) < min_size or shape[0] < 1:
        raise SpocoInputError(
            f"shape {shape} is too small; Y and X need at least {min_size} pixels each."
        )
    return shape


def smooth_random_field(
    shape: Sequence[int], sigma: float | Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Smooth Gaussian random field with zero mean and unit standard deviation.

    White noise on a coarse lattice of knots (spacing ``sigma``) is spread onto the pixel grid
    with separable Gaussian kernels. Because the kernel is separable the field is built by three
    small matrix products instead of a full-resolution convolution, which keeps large smooth
    fields (warps, illumination) cheap.

    Parameters
    ----------
    shape : sequence of int
        Output shape.
    sigma : float or sequence of float
        Correlation length per axis, in pixels of that axis.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=float), (len(shape),))
    kernels = []
    for size, s in zip(shape, sigmas):
        s = max(float(s), 0.5)
        knots = np.arange(-3 * s, size + 3 * s, s)
        offsets = (np.arange(size)[:, None] - knots[None, :]) / s
        kernels.append(np.exp(-0.5 * offsets**2).astype(np.float32))
    field = rng.standard_normal(tuple(k.shape[1] for k in kernels)).astype(np.float32)
    for axis, kernel in enumerate(kernels):
        field = np.moveaxis(np.tensordot(kernel, field, axes=([1], [axis])), 0, axis)
    field -= field.mean()
    std = field.std()
    if std > 0:
        field /= std
    return np.ascontiguousarray(field, dtype=np.float32)


def fine_texture(shape: Sequence[int], sigma: Sequence[float], rng: np.random.Generator):
    """Unit-variance speckle texture: white noise blurred with a small Gaussian.

    Parameters
    ----------
    shape : sequence of int
    sigma : sequence of float
        Grain size per axis in pixels.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape`` with zero mean and unit standard deviation.
    """
    noise = rng.standard_normal(tuple(shape), dtype=np.float32)
    texture = ndi.gaussian_filter(noise, sigma, truncate=3.0)
    std = texture.std()
    return texture / std if std > 0 else texture


def psf_blur(image: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """Blur with an axis-aligned Gaussian point-spread function (``sigma`` in pixels per axis)."""
    return ndi.gaussian_filter(image, sigma, truncate=3.0, mode="nearest")


def illumination_field(
    shape: Sequence[int], amplitude: float, length: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Smooth multiplicative gain ``1 + amplitude * field``, floored at 0.2.

    Parameters
    ----------
    shape : sequence of int
    amplitude : float
        Standard deviation of the gain around 1.
    length : sequence of float
        Correlation length per axis in pixels (large: uneven illumination is low-frequency).
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        float32 gain.
    """
    field = smooth_random_field(shape, length, rng)
    return np.maximum(1.0 + amplitude * field, 0.2).astype(np.float32)


def depth_attenuation(n_slices: int, z_step_um: float, length_um: float) -> np.ndarray:
    """Gain per z slice ``exp(-depth / length)``: light is lost deeper in the sample.

    Returns a float32 array of shape ``(n_slices, 1, 1)`` to broadcast over a stack.
    """
    if not np.isfinite(length_um) or length_um <= 0:
        return np.ones((n_slices, 1, 1), np.float32)
    depth = np.arange(n_slices) * z_step_um
    return np.exp(-depth / length_um).astype(np.float32)[:, None, None]


def camera_noise(
    signal: np.ndarray, photons: float, read_noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Poisson shot noise plus Gaussian read noise.

    Parameters
    ----------
    signal : numpy.ndarray
        Expected intensity, non-negative, in units where 1 is a bright membrane.
    photons : float
        Photons collected at intensity 1 (fewer photons: noisier). ``inf`` or 0 disables shot
        noise.
    read_noise : float
        Standard deviation of the additive Gaussian noise, in intensity units.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        float32 noisy image (not clipped).
    """
    signal = np.maximum(signal, 0)
    if np.isfinite(photons) and photons > 0:
        noisy = rng.poisson(signal * photons).astype(np.float32) / np.float32(photons)
    else:
        noisy = signal.astype(np.float32, copy=True)
    if read_noise > 0:
        noisy += rng.normal(0.0, read_noise, size=signal.shape).astype(np.float32)
    return noisy


def pair_uniform(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random number in [0, 1) for each unordered pair of ids ``(a, b)``.

    Gives every cell wall (a pair of neighbouring cells) its own brightness without a table
    over all pairs; the same wall gets the same number from both sides.
    """
    lo = np.minimum(a, b).astype(np.uint64)
    hi = np.maximum(a, b).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = lo * np.uint64(0x9E3779B97F4A7C15) ^ (hi + np.uint64(salt & 0xFFFFFFFF))
        # splitmix64 finaliser: mixes all input bits into the top bits used below
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)
