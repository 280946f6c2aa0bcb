"""Synthetic membrane-stained tissue (confocal, cell walls bright) with dense ground truth.

The model, in the order it is applied:

1. **Cells** are the Voronoi cells of random seeds, made more regular by Lloyd relaxation, under
   an anisotropic metric (cells elongated along one random in-plane direction) and in coordinates
   warped by a smooth random displacement field, so that walls curve. Geometry lives in physical
   units (xy pixels; z steps are ``anisotropy`` xy pixels long) and is evaluated at the voxel
   centres, i.e. z is sampled more coarsely than xy.
2. **Membranes** are Gaussian sheets of given thickness centred on the walls. Their blur by the
   anisotropic Gaussian PSF is computed analytically: a planar sheet blurred by a Gaussian PSF is
   a wider, dimmer sheet whose width adds the PSF's extent along the wall normal. This is exact
   for flat walls and cannot alias, however coarse the z sampling is.
3. Each cell has its own membrane brightness and each wall its own extra factor; membranes carry a
   fine speckle texture. Cell interiors have a faint per-cell cytoplasm signal, blurred by the PSF.
4. A smooth multiplicative illumination field, depth attenuation along z, a background offset,
   Poisson shot noise and Gaussian read noise, then clipping to [0, 1].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..errors import SpocoInputError
from .fields import (
    camera_noise,
    check_shape,
    depth_attenuation,
    fine_texture,
    illumination_field,
    pair_uniform,
    psf_blur,
    smooth_random_field,
)

_LLOYD_SAMPLES_PER_SEED = 24
_MAX_SEEDS = 400_000
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class TissueParams:
    """Parameters of :func:`make_tissue`. Lengths are in xy pixels unless they say µm.

    Attributes
    ----------
    voxel_size : tuple of float
        ``(z, y, x)`` in µm. Only the ratio ``z / x`` (the anisotropy) shapes the image; the
        values are metadata (e.g. a napari layer's ``scale``). 2D images ignore ``z``.
    cell_diameter : float
        Mean cell size as the diameter of a disc (2D) or sphere (3D) of the same area/volume.
    elongation : float
        Length-to-width ratio of cells along one random in-plane direction (1 = round).
    lloyd_iterations : int
        Lloyd relaxation steps of the seeds: 0 = Poisson-random sizes, more = regular polygons.
    warp_amplitude : float
        Displacement of the warp field (standard deviation) as a fraction of ``cell_diameter``;
        larger = more curved walls.
    warp_length : float
        Correlation length of the warp field in cell diameters.
    membrane_thickness : float
        Full width at half maximum of a membrane before the PSF.
    membrane_intensity : float
        Mean peak intensity of an unblurred wall (1 = brightest the camera holds).
    cell_brightness_variation : float
        Log-normal sigma of a per-cell membrane brightness factor (walls average their two cells).
    wall_variation : float
        Extra per-wall factor, uniform in ``1 ± wall_variation``.
    membrane_texture : float
        Relative amplitude of the fine speckle along membranes.
    cytoplasm_intensity : float
        Mean intensity inside cells.
    cytoplasm_variation : float
        Log-normal sigma of the per-cell cytoplasm intensity.
    background : float
        Offset added everywhere (out-of-focus light, camera offset).
    psf_sigma : tuple of float
        Gaussian PSF standard deviation ``(along z in z steps, in xy in pixels)``; the physical
        z blur is ``psf_sigma[0] * anisotropy`` xy pixels.
    illumination_amplitude : float
        Standard deviation of the smooth multiplicative illumination gain around 1.
    illumination_length : float
        Correlation length of the illumination field as a fraction of the image's largest extent.
    attenuation_length_um : float
        Depth (µm) over which the signal falls to 1/e along z (3D only; ``inf`` = none).
    photons : float
        Photons collected at intensity 1 (Poisson noise; fewer = noisier; ``inf`` = none).
    read_noise : float
        Standard deviation of additive Gaussian noise.
    """

    voxel_size: tuple[float, float, float]
    cell_diameter: float
    elongation: float
    lloyd_iterations: int
    warp_amplitude: float
    warp_length: float
    membrane_thickness: float
    membrane_intensity: float
    cell_brightness_variation: float
    wall_variation: float
    membrane_texture: float
    cytoplasm_intensity: float
    cytoplasm_variation: float
    background: float
    psf_sigma: tuple[float, float]
    illumination_amplitude: float
    illumination_length: float
    attenuation_length_um: float
    photons: float
    read_noise: float

    @property
    def anisotropy(self) -> float:
        """z step over xy pixel size."""
        return float(self.voxel_size[0]) / float(self.voxel_size[-1])


# Source domain of the paper's transfer experiment: Arabidopsis ovules (PlantSeg data, voxel
# 0.235 x 0.075 x 0.075 µm): small, irregular, elongated cells, uneven walls, noisy.
# Target domain: shoot apical meristem stem cells, imaged deeper and dimmer: cells twice the
# ovules' diameter, regular polygons, on a coarser grid (anisotropy 2) with another PSF, and the
# harder image: dim, patchy walls (stain uneven along and between walls), a cytoplasm signal
# that lowers the wall contrast, fewer photons. A model of the source domain does clearly worse
# here than one trained on the target, the gap that fine-tuning is meant to close
# (docs/synthetic.md, docs/results.md).
TISSUE_PRESETS: dict[str, TissueParams] = {
    "ovules": TissueParams(
        voxel_size=(0.235, 0.075, 0.075),
        cell_diameter=22.0,
        elongation=1.6,
        lloyd_iterations=1,
        warp_amplitude=0.15,
        warp_length=0.8,
        membrane_thickness=2.0,
        membrane_intensity=0.6,
        cell_brightness_variation=0.35,
        wall_variation=0.35,
        membrane_texture=0.35,
        cytoplasm_intensity=0.12,
        cytoplasm_variation=0.3,
        background=0.06,
        psf_sigma=(0.8, 0.9),
        illumination_amplitude=0.3,
        illumination_length=0.5,
        attenuation_length_um=40.0,
        photons=60.0,
        read_noise=0.025,
    ),
    "stem": TissueParams(
        voxel_size=(0.44, 0.22, 0.22),
        cell_diameter=44.0,
        elongation=1.1,
        lloyd_iterations=4,
        warp_amplitude=0.06,
        warp_length=2.0,
        membrane_thickness=2.5,
        membrane_intensity=0.45,
        cell_brightness_variation=0.3,
        wall_variation=0.6,
        membrane_texture=0.6,
        cytoplasm_intensity=0.18,
        cytoplasm_variation=0.35,
        background=0.04,
        psf_sigma=(0.9, 0.7),
        illumination_amplitude=0.15,
        illumination_length=0.7,
        attenuation_length_um=100.0,
        photons=35.0,
        read_noise=0.035,
    ),
}


def tissue_params(preset: str = "ovules", **overrides) -> TissueParams:
    """The parameters of a preset, with some replaced.

    Parameters
    ----------
    preset : {"ovules", "stem"}
    **overrides
        Any :class:`TissueParams` field.

    Returns
    -------
    TissueParams
    """
    if preset not in TISSUE_PRESETS:
        raise SpocoInputError(
            f"Unknown tissue preset {preset!r}; choose one of {sorted(TISSUE_PRESETS)}."
        )
    fields = {f.name for f in dataclasses.fields(TissueParams)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise SpocoInputError(
            f"Unknown tissue parameter(s) {unknown}; valid names are {sorted(fields)}."
        )
    params = dataclasses.replace(TISSUE_PRESETS[preset], **overrides)
    if params.cell_diameter < 3:
        raise SpocoInputError(
            f"cell_diameter={params.cell_diameter} is below 3 pixels; cells that small have no "
            "interior. Use a larger cell_diameter."
        )
    if params.elongation <= 0 or min(params.voxel_size) <= 0:
        raise SpocoInputError("elongation and voxel_size must be positive numbers.")
    return params


def make_tissue(
    shape: Sequence[int], preset: str = "ovules", seed: int = 0, **overrides
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic membrane-stained tissue and its dense cell ground truth.

    Parameters
    ----------
    shape : sequence of int
        ``(Y, X)`` or ``(Z, Y, X)``; z slices are ``voxel_size[0] / voxel_size[2]`` xy pixels
        apart.
    preset : {"ovules", "stem"}
        Appearance and geometry, see ``TISSUE_PRESETS`` and ``docs/synthetic.md``.
    seed : int
        Same seed, same arrays.
    **overrides
        Replace any :class:`TissueParams` field of the preset.

    Returns
    -------
    image : numpy.ndarray
        float32 in [0, 1], bright membranes.
    labels : numpy.ndarray
        uint32, every pixel belongs to a cell (membrane pixels to the nearer cell); ids are
        ``1..n`` without gaps.
    """
    shape = check_shape(shape)
    params = tissue_params(preset, **overrides)
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    # physical size of one step along each axis, in xy pixels
    spacing = np.array([params.anisotropy, 1.0, 1.0][-ndim:])
    psf_sigma_z, psf_sigma_xy = params.psf_sigma
    psf_phys = np.array([psf_sigma_z * params.anisotropy, psf_sigma_xy, psf_sigma_xy])[-ndim:]

    seeds, metric = _relaxed_seeds(shape, spacing, params, rng)
    cell, other, wall_distance, wall_normal = _assign_cells(
        shape, spacing, params, seeds, metric, rng
    )
    n_cells = len(seeds)
    membrane = _membranes(cell, other, wall_distance, wall_normal, n_cells, psf_phys, params, rng)
    membrane = membrane.reshape(shape)
    grain = np.array([1.2 / spacing[0], 1.2, 1.2][-ndim:])
    membrane *= np.maximum(1.0 + params.membrane_texture * fine_texture(shape, grain, rng), 0.0)

    cytoplasm_level = params.cytoplasm_intensity * np.exp(
        rng.normal(0.0, params.cytoplasm_variation, n_cells)
    )
    cytoplasm = cytoplasm_level.astype(np.float32)[cell].reshape(shape)
    cytoplasm = psf_blur(cytoplasm, psf_phys / spacing)

    extent = np.array(shape) * spacing
    illumination_sigma = params.illumination_length * extent.max() / spacing
    gain = illumination_field(shape, params.illumination_amplitude, illumination_sigma, rng)
    if ndim == 3:
        gain *= depth_attenuation(shape[0], params.voxel_size[0], params.attenuation_length_um)
    signal = (membrane + cytoplasm) * gain + np.float32(params.background)
    image = camera_noise(signal, params.photons, params.read_noise, rng)
    np.clip(image, 0.0, 1.0, out=image)

    present = np.zeros(n_cells, dtype=bool)
    present[cell] = True
    new_ids = np.cumsum(present, dtype=np.uint32)
    labels = new_ids[cell].reshape(shape)
    return image.astype(np.float32, copy=False), labels


def _membranes(cell, other, wall_distance, wall_normal, n_cells, psf_phys, params, rng):
    """Membrane intensity of every voxel (flat): a PSF-blurred Gaussian sheet on its nearest wall.

    Convolving a Gaussian sheet (sigma ``sigma_m`` across it) with a Gaussian PSF gives a
    Gaussian sheet of variance ``sigma_m² + Σ (n_k s_k)²`` whose peak drops by the ratio of the
    widths, so the total stain across the wall is preserved.
    """
    cell_factor = np.exp(rng.normal(0.0, params.cell_brightness_variation, n_cells))
    cell_factor = cell_factor.astype(np.float32)
    wall_factor = 2.0 * pair_uniform(cell, other, int(rng.integers(2**31))) - 1.0
    wall_factor = (1.0 + params.wall_variation * wall_factor).astype(np.float32)
    brightness = np.sqrt(cell_factor[cell] * cell_factor[other]) * wall_factor
    brightness *= np.float32(params.membrane_intensity)

    sigma_m = np.float32(params.membrane_thickness / _FWHM_PER_SIGMA)
    sigma_sq = sigma_m**2 + ((wall_normal * psf_phys.astype(np.float32)) ** 2).sum(axis=1)
    membrane = brightness * (sigma_m / np.sqrt(sigma_sq))
    membrane *= np.exp(-0.5 * wall_distance**2 / sigma_sq)
    return membrane


def _relaxed_seeds(shape, spacing, params: TissueParams, rng: np.random.Generator):
    """Voronoi seeds in physical units over a padded box, and the elongation metric ``T``.

    Distances are measured as ``|T (a - b)|``; ``T`` squeezes one random in-plane direction by
    ``1 / sqrt(elongation)`` (and stretches the other in-plane one), so cells grow long along it
    at unchanged area.
    """
    ndim = len(shape)
    d = params.cell_diameter
    # seeds beyond the image edge: border cells are cut by it as in a real crop, instead of
    # being the unbounded outer cells of the diagram
    pad = d * (1.0 + 3.0 * params.warp_amplitude)
    low = np.full(ndim, -pad)
    high = np.array(shape) * spacing + pad
    cell_volume = np.pi / 4 * d**2 if ndim == 2 else np.pi / 6 * d**3
    n_seeds = int(np.ceil(np.prod(high - low) / cell_volume))
    if n_seeds > _MAX_SEEDS:
        raise SpocoInputError(
            f"shape {tuple(shape)} with cell_diameter={d} needs {n_seeds} cells, more than "
            f"{_MAX_SEEDS}; use a larger cell_diameter or a smaller shape."
        )
    angle = rng.uniform(0.0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    across = np.array([-direction[1], direction[0]])
    e = float(params.elongation)
    inplane = np.outer(direction, direction) / np.sqrt(e) + np.outer(across, across) * np.sqrt(e)
    metric = np.eye(ndim)
    metric[-2:, -2:] = inplane

    seeds = rng.uniform(low, high, size=(n_seeds, ndim))
    for _ in range(int(params.lloyd_iterations)):
        samples = rng.uniform(low, high, size=(n_seeds * _LLOYD_SAMPLES_PER_SEED, ndim))
        _, owner = cKDTree(seeds @ metric.T).query(samples @ metric.T)
        counts = np.bincount(owner, minlength=n_seeds)
        has_samples = counts > 0
        for axis in range(ndim):
            sums = np.bincount(owner, weights=samples[:, axis], minlength=n_seeds)
            seeds[has_samples, axis] = sums[has_samples] / counts[has_samples]
    return seeds, metric


def _assign_cells(shape, spacing, params: TissueParams, seeds, metric, rng):
    """Nearest and second-nearest seed of every voxel, its distance to their wall and the wall's
    unit normal, all in physical (warped) coordinates, as flat arrays."""
    ndim = len(shape)
    amplitude = params.warp_amplitude * params.cell_diameter
    warp_sigma = params.warp_length * params.cell_diameter / spacing
    coords = []
    for axis in range(ndim):
        line_shape = [1] * ndim
        line_shape[axis] = shape[axis]
        axis_coord = (np.arange(shape[axis]) * spacing[axis]).reshape(line_shape)
        coord = np.broadcast_to(axis_coord, shape).astype(np.float64)
        if amplitude > 0:
            coord += amplitude * smooth_random_field(shape, warp_sigma, rng)
        coords.append(coord.ravel())
    points_m = _times_matrix(np.stack(coords, axis=1), metric.T)
    del coords

    seeds_m = seeds @ metric.T
    distances, nearest = cKDTree(seeds_m).query(points_m, k=2, workers=-1)
    del points_m
    cell, other = nearest[:, 0], nearest[:, 1]
    seeds_m = seeds_m.astype(np.float32)
    between = seeds_m[other]
    between -= seeds_m[cell]
    gap = np.sqrt(np.einsum("ij,ij->i", between, between))
    # distance to the bisector of the two seeds, in the metric space
    distances = distances.astype(np.float32)
    distance_m = (distances[:, 1] ** 2 - distances[:, 0] ** 2) / (2.0 * gap)
    # the bisector plane {y: n.y = c} of metric space is {x: (T^T n).x = c} in physical space
    normal = _times_matrix(between, metric.astype(np.float32))
    scale = np.sqrt(np.einsum("ij,ij->i", normal, normal))
    wall_distance = distance_m * (gap / scale)
    normal /= scale[:, None]
    return cell, other, wall_distance, normal


def _times_matrix(vectors: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``vectors @ matrix`` for millions of 2- or 3-vectors, as a few column operations.

    numpy's matmul is slow for such a tiny inner dimension (several times the column form).
    """
    out = np.empty((vectors.shape[0], matrix.shape[1]), dtype=vectors.dtype)
    for j in range(matrix.shape[1]):
        column = vectors[:, 0] * matrix[0, j]
        for k in range(1, matrix.shape[0]):
            column += vectors[:, k] * matrix[k, j]
        out[:, j] = column
    return out
