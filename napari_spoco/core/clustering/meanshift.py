"""Mean-shift with a flat kernel and bin seeding, vectorised over seeds.

Follows ``sklearn.cluster.MeanShift(bandwidth, seeds=bin_seeds(...))`` step by step (same
stopping rule, same removal of near-duplicate centers, nearest-center labels), but moves all
seeds at once with matrix products instead of one radius query per seed and iteration, which
is what makes scikit-learn's version take minutes on an image. Bin seeds sit at the mean of
each bin's points rather than at the bin's grid point (see :func:`bin_seeds`).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .pixel_sampling import (
    draw_subsample,
    foreground_points,
    nearest_center,
    scatter_to_image,
)

DEFAULT_MAX_SAMPLES = 10_000
# seeds x points distances held at once (128 MiB of float64), at most 512 seeds
_BLOCK_ELEMENTS = 1 << 24


def bin_seeds(points: np.ndarray, bin_size: float, min_bin_freq: int = 1) -> np.ndarray:
    """One seed per grid bin holding at least ``min_bin_freq`` points: the mean of its points.

    scikit-learn seeds at the bin's grid point instead. In 16 dimensions that point can be
    ``sqrt(16) * bin_size / 2 = 2 * bin_size`` away from every point of its bin, so with
    ``bin_size = bandwidth`` a seed often finds no point within the bandwidth and a whole
    cluster is lost; the mean of the bin's points cannot miss them.
    """
    points = np.asarray(points, np.float64)
    _, inverse, counts = np.unique(
        np.round(points / bin_size), axis=0, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    sums = np.stack(
        [np.bincount(inverse, weights=column, minlength=counts.size) for column in points.T], 1
    )
    seeds = sums / counts[:, None]
    return seeds[counts >= min_bin_freq]


def _shift_block(means: np.ndarray, points: np.ndarray, point_norms: np.ndarray, radius2: float):
    """One mean-shift step for a block of seeds: new means and neighbour counts."""
    squared = (means * means).sum(1)[:, None] - 2.0 * (means @ points.T) + point_norms[None, :]
    within = (squared <= radius2).astype(np.float64)
    counts = within.sum(1)
    shifted = (within @ points) / np.maximum(counts, 1)[:, None]
    return shifted, counts


def mean_shift_centers(
    points: np.ndarray, bandwidth: float, max_iter: int = 300, min_bin_freq: int = 1
) -> np.ndarray:
    """Cluster centers of flat-kernel mean-shift, the densest first.

    Parameters
    ----------
    points : ndarray
        ``(N, E)``.
    bandwidth : float
        Kernel radius (points at distance ``<= bandwidth`` count).
    max_iter : int
        Most shifts per seed.
    min_bin_freq : int
        Bins with fewer points seed nothing.

    Returns
    -------
    ndarray
        ``(K, E)`` float64 centers, at least ``bandwidth`` apart.
    """
    points = np.asarray(points, np.float64)
    point_norms = (points * points).sum(1)
    radius2 = float(bandwidth) ** 2
    stop = 1e-3 * bandwidth
    means = bin_seeds(points, bandwidth, min_bin_freq)
    intensity = np.zeros(len(means))
    found = np.zeros(len(means), bool)
    active = np.arange(len(means))
    seed_block = int(np.clip(_BLOCK_ELEMENTS // max(len(points), 1), 1, 512))
    for iteration in range(max_iter + 1):
        if active.size == 0:
            break
        still_active = []
        for start in range(0, active.size, seed_block):
            block = active[start:start + seed_block]
            shifted, counts = _shift_block(means[block], points, point_norms, radius2)
            empty = counts == 0  # a seed with nothing around it yields no center
            moved = np.linalg.norm(shifted - means[block], axis=1)
            done = ~empty & ((moved <= stop) | (iteration == max_iter))
            means[block[~empty]] = shifted[~empty]
            intensity[block] = counts
            found[block[done]] = True
            still_active.append(block[~empty & ~done])
        active = np.concatenate(still_active)
    return _distinct_centers(means[found], intensity[found], bandwidth)


def _distinct_centers(centers: np.ndarray, intensity: np.ndarray, bandwidth: float) -> np.ndarray:
    """Keep the densest center of every group closer than ``bandwidth`` (sklearn's rule)."""
    if len(centers) == 0:
        return centers
    centers, first = np.unique(centers, axis=0, return_index=True)
    intensity = intensity[first]
    # densest first; ties broken by the coordinates, descending, like sorting the tuples
    order = np.lexsort(tuple(centers[:, ::-1].T) + (intensity,))[::-1]
    centers = centers[order]
    neighbours = cKDTree(centers).query_ball_point(centers, bandwidth)
    keep = np.ones(len(centers), bool)
    for index, near in enumerate(neighbours):
        if keep[index]:
            keep[near] = False
            keep[index] = True
    return centers[keep]


def meanshift_labels(
    embeddings: np.ndarray,
    *,
    bandwidth: float = 0.5,
    mask: np.ndarray | None = None,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    seed: int | None = 0,
    max_iter: int = 300,
) -> np.ndarray:
    """Mean-shift clusters of the pixels' embeddings; each pixel joins its nearest center.

    Parameters
    ----------
    embeddings : ndarray
        ``(E, [Z,] Y, X)`` float32.
    bandwidth : float
        Flat kernel radius (the paper: delta_v).
    mask : ndarray of bool, optional
        Cluster only these pixels; the others get 0.
    max_samples : int or None
        Find the centers from at most this many random pixels (None: all pixels).
    seed : int or None
        Seed of the subsample.
    max_iter : int
        Most shifts per seed.

    Returns
    -------
    ndarray of int64
        Cluster ids from 1 (densest first), 0 outside ``mask``.
    """
    spatial = embeddings.shape[1:]
    points, pixels = foreground_points(embeddings, mask)
    if len(points) == 0:
        return np.zeros(spatial, np.int64)
    sample = draw_subsample(len(points), max_samples, seed)
    fit_points = points if sample is None else points[sample]
    centers = mean_shift_centers(fit_points, bandwidth, max_iter)
    labels = nearest_center(points, centers) + 1
    return scatter_to_image(labels, pixels, spatial)
