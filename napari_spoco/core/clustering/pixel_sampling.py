"""Pixels as points in embedding space, subsampling and label transfer to all pixels."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ..errors import SpocoInputError


def foreground_points(embeddings: np.ndarray, mask: np.ndarray | None):
    """``(N, E)`` float32 points of the pixels inside ``mask`` and their flat pixel indices."""
    flat = embeddings.reshape(embeddings.shape[0], -1)
    if mask is None:
        return np.ascontiguousarray(flat.T), np.arange(flat.shape[1])
    pixels = np.flatnonzero(mask)
    return np.ascontiguousarray(flat[:, pixels].T), pixels


def draw_subsample(n_points: int, max_samples: int | None, seed) -> np.ndarray | None:
    """Sorted random point indices, or None when every point fits in ``max_samples``."""
    if max_samples is not None and (
        isinstance(max_samples, (bool, str)) or not float(max_samples).is_integer()
        or max_samples < 2
    ):
        raise SpocoInputError(
            f"max_samples must be a whole number of pixels >= 2 (or None for all pixels), "
            f"got {max_samples!r}."
        )
    if max_samples is None or n_points <= max_samples:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_points, size=int(max_samples), replace=False))


# approximate nearest neighbours within (1 + eps) of the nearest distance: 2.4x faster on a
# 64x256x256 volume, and 99.9996 % of its pixels get the same label as with the exact search
_TRANSFER_EPS = 0.5


def transfer_labels(points: np.ndarray, sample: np.ndarray, sample_labels: np.ndarray):
    """Each point takes the label of its (approximately) nearest sample point."""
    labels = np.empty(len(points), sample_labels.dtype)
    labels[sample] = sample_labels
    rest = np.ones(len(points), bool)
    rest[sample] = False
    tree = cKDTree(points[sample])
    _, nearest = tree.query(points[rest], k=1, workers=-1, eps=_TRANSFER_EPS)
    labels[rest] = sample_labels[nearest]
    return labels


def nearest_center(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center of every point.

    A k-d tree over the centers: as fast as a matrix product for tens of centers and several
    times faster for the thousands that mean-shift finds at blurred boundaries.
    """
    _, nearest = cKDTree(np.asarray(centers, np.float64)).query(points, k=1, workers=-1)
    return nearest.astype(np.int64)


def scatter_to_image(values: np.ndarray, pixels: np.ndarray, shape) -> np.ndarray:
    """An int64 image of ``shape`` with ``values`` at flat ``pixels`` and 0 elsewhere."""
    image = np.zeros(int(np.prod(shape)), np.int64)
    image[pixels] = values
    return image.reshape(shape)
