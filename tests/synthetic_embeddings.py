"""Embeddings that look like a trained model's, with their ground truth (tests, benchmarks)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def voronoi_labels(shape, n_objects: int, rng: np.random.Generator) -> np.ndarray:
    """Touching objects: the Voronoi cells of random seeds, ids 1..n_objects (uint32)."""
    seeds = np.zeros(shape, bool)
    flat = rng.choice(int(np.prod(shape)), size=n_objects, replace=False)
    seeds.reshape(-1)[flat] = True
    _, nearest = ndimage.distance_transform_edt(~seeds, return_indices=True)
    seed_ids = np.zeros(shape, np.uint32)
    seed_ids.reshape(-1)[flat] = np.arange(1, n_objects + 1, dtype=np.uint32)
    return seed_ids[tuple(nearest)]


def separated_centers(
    n_centers: int, n_channels: int, min_distance: float, rng: np.random.Generator
) -> np.ndarray:
    """Random centers, pairwise at least ``min_distance`` apart (rejection sampling)."""
    # spread so that random pairs are ~1.5 min_distance apart: few rejections
    scale = 1.5 * min_distance / np.sqrt(2 * n_channels)
    centers = np.empty((0, n_channels))
    while len(centers) < n_centers:
        candidates = rng.normal(0.0, scale, (n_centers, n_channels))
        for candidate in candidates:
            if len(centers) == n_centers:
                break
            nearest = np.linalg.norm(centers - candidate, axis=1).min(initial=np.inf)
            if nearest >= min_distance:
                centers = np.vstack([centers, candidate])
    return centers


def make_embeddings(
    shape,
    n_objects: int,
    *,
    n_channels: int = 16,
    delta_v: float = 0.5,
    delta_d: float = 2.0,
    center_distance: float | None = None,
    noise: float | None = None,
    boundary_blur: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi objects, each with its own embedding center, noisy and smooth at boundaries.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape, 2D or 3D.
    n_objects : int
        Number of touching objects (they tile the whole image).
    n_channels : int
        Embedding dimension E.
    delta_v, delta_d : float
        Loss margins; they set the default spread of the centers and the noise.
    center_distance : float, optional
        Minimum distance between object centers (default ``2.2 * delta_d``).
    noise : float, optional
        Typical norm of a pixel's deviation from its object's center (default ``delta_v / 2``).
    boundary_blur : float
        Gaussian sigma (pixels) smoothing the transition between objects; 0 for sharp edges.
    seed : int
        Random seed.

    Returns
    -------
    embeddings : ndarray
        ``(E, *shape)`` float32.
    labels : ndarray
        Ground truth, ``shape``, uint32, ids 1..n_objects.
    """
    rng = np.random.default_rng(seed)
    labels = voronoi_labels(shape, n_objects, rng)
    if center_distance is None:
        center_distance = 2.2 * delta_d
    if noise is None:
        noise = delta_v / 2
    centers = separated_centers(n_objects, n_channels, center_distance, rng).astype(np.float32)
    per_channel_noise = noise / np.sqrt(n_channels)
    embeddings = np.empty((n_channels,) + tuple(shape), np.float32)
    for channel in range(n_channels):
        values = np.concatenate([[0.0], centers[:, channel]]).astype(np.float32)[labels]
        if boundary_blur > 0:
            values = ndimage.gaussian_filter(values, boundary_blur)
        values += rng.normal(0.0, per_channel_noise, shape).astype(np.float32)
        embeddings[channel] = values
    return embeddings, labels
