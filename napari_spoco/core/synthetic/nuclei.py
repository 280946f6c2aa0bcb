"""Synthetic fluorescent nuclei: textured ellipsoid blobs on a dark background, some touching.

Nuclei are random ellipsoids (random size, aspect and orientation) whose centres keep a minimum
distance that is *shorter* than the sum of their radii, so neighbours may touch or press into
each other; a pixel claimed by two ellipsoids goes to the one it is deeper inside (smaller
normalised radius), which gives a clean shared boundary. Brightness varies per nucleus, falls off
slightly towards the rim (touching nuclei show a faint seam) and carries a chromatin-like
texture. Then the anisotropic PSF, uneven illumination, background, Poisson and read noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SpocoInputError
from .fields import (
    camera_noise,
    check_shape,
    fine_texture,
    illumination_field,
    psf_blur,
)

_CANDIDATES_PER_NUCLEUS = 30
_MAX_NUCLEI = 50_000


@dataclass(frozen=True)
class NucleiParams:
    """Parameters of :func:`make_nuclei`. Lengths are in xy pixels.

    Attributes
    ----------
    anisotropy : float
        z step in xy pixels (3D only).
    radius : float
        Mean radius of a nucleus (geometric mean of its semi-axes).
    radius_variation : float
        Relative standard deviation of the radius.
    max_aspect : float
        Largest ratio of longest to shortest semi-axis (drawn uniformly from 1 to this).
    fill_fraction : float
        Fraction of the image the nuclei would cover without overlaps; sets how many there are.
    touching : float
        Smallest allowed centre distance as a fraction of the sum of two radii; below 1 lets
        neighbours touch.
    brightness_variation : float
        Log-normal sigma of the per-nucleus brightness.
    texture : float
        Relative amplitude of the chromatin texture.
    rim_dimming : float
        How much darker the rim is than the centre (fraction).
    background : float
        Offset everywhere.
    psf_sigma : tuple of float
        Gaussian PSF sigma ``(z in z steps, xy in pixels)``.
    illumination_amplitude : float
        Standard deviation of the smooth multiplicative illumination gain.
    photons : float
        Photons at intensity 1 (Poisson noise; ``inf`` = none).
    read_noise : float
        Standard deviation of additive Gaussian noise.
    """

    anisotropy: float = 2.0
    radius: float = 9.0
    radius_variation: float = 0.2
    max_aspect: float = 1.7
    fill_fraction: float = 0.3
    touching: float = 0.8
    brightness_variation: float = 0.3
    texture: float = 0.25
    rim_dimming: float = 0.35
    background: float = 0.08
    psf_sigma: tuple[float, float] = (1.0, 1.0)
    illumination_amplitude: float = 0.2
    photons: float = 80.0
    read_noise: float = 0.02


def nuclei_params(**overrides) -> NucleiParams:
    """Default :class:`NucleiParams` with some fields replaced (unknown names raise)."""
    fields = {f.name for f in dataclasses.fields(NucleiParams)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise SpocoInputError(
            f"Unknown nuclei parameter(s) {unknown}; valid names are {sorted(fields)}."
        )
    params = NucleiParams(**overrides)
    if params.radius < 2:
        raise SpocoInputError(f"radius={params.radius} is below 2 pixels; use a larger radius.")
    return params


def make_nuclei(
    shape: Sequence[int], seed: int = 0, **overrides
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic nuclei image and its instance ground truth.

    Parameters
    ----------
    shape : sequence of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    seed : int
        Same seed, same arrays.
    **overrides
        Any :class:`NucleiParams` field.

    Returns
    -------
    image : numpy.ndarray
        float32 in [0, 1], bright nuclei on a dark background.
    labels : numpy.ndarray
        uint32, 0 = background, nuclei ``1..n`` without gaps.
    """
    shape = check_shape(shape)
    params = nuclei_params(**overrides)
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    spacing = np.array([params.anisotropy, 1.0, 1.0][-ndim:])

    centres, radii = _place_nuclei(shape, spacing, params, rng)
    depth = np.full(shape, np.inf, dtype=np.float32)  # normalised radius of the owning nucleus
    owner = np.zeros(shape, dtype=np.uint32)
    for index, (centre, radius) in enumerate(zip(centres, radii), start=1):
        semi_axes, rotation = _random_ellipsoid(radius, params.max_aspect, ndim, rng)
        _draw_ellipsoid(depth, owner, index, centre, semi_axes, rotation, spacing)

    brightness = np.exp(rng.normal(0.0, params.brightness_variation, len(centres) + 1))
    brightness[0] = 0.0
    inside = owner > 0
    rho = np.where(inside, depth, 1.0)
    body = brightness.astype(np.float32)[owner] * (1.0 - params.rim_dimming * rho**4)
    grain = np.array([1.5 / spacing[0], 1.5, 1.5][-ndim:])
    body *= np.maximum(1.0 + params.texture * fine_texture(shape, grain, rng), 0.0)
    body *= inside
    psf = np.array([params.psf_sigma[0], params.psf_sigma[1], params.psf_sigma[1]][-ndim:])
    # 0.5 keeps most nuclei below saturation after texture, illumination and noise
    signal = 0.5 * psf_blur(body.astype(np.float32), psf)
    extent = np.array(shape) * spacing
    illumination_sigma = 0.6 * extent.max() / spacing
    signal *= illumination_field(shape, params.illumination_amplitude, illumination_sigma, rng)
    signal += np.float32(params.background)
    image = camera_noise(signal, params.photons, params.read_noise, rng)
    np.clip(image, 0.0, 1.0, out=image)

    present = np.zeros(len(centres) + 1, dtype=bool)
    present[owner] = True
    present[0] = False
    new_ids = np.cumsum(present, dtype=np.uint32)
    labels = np.where(inside, new_ids[owner], 0).astype(np.uint32)
    return image.astype(np.float32, copy=False), labels


def _place_nuclei(shape, spacing, params: NucleiParams, rng: np.random.Generator):
    """Centres (physical units) and radii, drawn by greedy rejection of too-close candidates."""
    ndim = len(shape)
    extent = np.array(shape) * spacing
    ball = np.pi * params.radius**2 if ndim == 2 else 4.0 / 3.0 * np.pi * params.radius**3
    n_target = max(1, int(round(params.fill_fraction * np.prod(extent) / ball)))
    if n_target > _MAX_NUCLEI:
        raise SpocoInputError(
            f"shape {tuple(shape)} would hold {n_target} nuclei (more than {_MAX_NUCLEI}); "
            "use a larger radius, a smaller fill_fraction or a smaller shape."
        )
    n_candidates = n_target * _CANDIDATES_PER_NUCLEUS
    candidates = rng.uniform(0.0, extent, size=(n_candidates, ndim))
    candidate_radii = params.radius * np.clip(
        1.0 + params.radius_variation * rng.standard_normal(n_candidates), 0.5, 1.8
    )
    centres = np.empty((n_target, ndim))
    radii = np.empty(n_target)
    count = 0
    for point, radius in zip(candidates, candidate_radii):
        if count:
            gaps = np.linalg.norm(centres[:count] - point, axis=1)
            if np.any(gaps < params.touching * (radii[:count] + radius)):
                continue
        centres[count], radii[count] = point, radius
        count += 1
        if count == n_target:
            break
    return centres[:count], radii[:count]


def _random_ellipsoid(radius, max_aspect, ndim, rng: np.random.Generator):
    """Semi-axes with geometric mean ``radius`` and a random rotation matrix."""
    aspect = rng.uniform(1.0, max_aspect)
    if ndim == 2:
        semi_axes = radius * np.array([np.sqrt(aspect), 1.0 / np.sqrt(aspect)])
        angle = rng.uniform(0.0, np.pi)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    else:
        middle = rng.uniform(1.0, aspect)
        semi_axes = radius * np.array([aspect, middle, 1.0]) / np.cbrt(aspect * middle)
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        rotation = q * np.sign(np.diag(r))
    return semi_axes, rotation


def _draw_ellipsoid(depth, owner, index, centre, semi_axes, rotation, spacing):
    """Claim the pixels inside the ellipsoid that are deeper in it than in their current owner."""
    reach = semi_axes.max()
    low = np.maximum(np.floor((centre - reach) / spacing).astype(int), 0)
    high = np.minimum(np.ceil((centre + reach) / spacing).astype(int) + 1, depth.shape)
    if np.any(high <= low):
        return
    axes = [np.arange(lo, hi) * s - c for lo, hi, s, c in zip(low, high, spacing, centre)]
    grids = np.meshgrid(*axes, indexing="ij")
    offsets = np.stack(grids, axis=-1)
    local = offsets @ rotation / semi_axes  # coordinates along the ellipsoid's own axes
    rho = np.sqrt((local**2).sum(axis=-1)).astype(np.float32)
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    claim = (rho < 1.0) & (rho < depth[box])
    depth[box][claim] = rho[claim]
    owner[box][claim] = index
