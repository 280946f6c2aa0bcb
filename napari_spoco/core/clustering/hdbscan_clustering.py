"""HDBSCAN in embedding space, fitted on a random subsample of the pixels for speed."""

from __future__ import annotations

import numpy as np

from ..errors import SpocoInputError
from .pixel_sampling import draw_subsample, foreground_points, scatter_to_image, transfer_labels

DEFAULT_MAX_SAMPLES = "auto"
# "auto": enough samples that the smallest allowed cluster still has this many of them
_SAMPLES_PER_SMALLEST_CLUSTER = 10
_AUTO_SAMPLES = (10_000, 50_000)


def default_min_cluster_size(ndim: int) -> int:
    """The paper's min_size: 200 for 2D leaves, 600 for 3D cells."""
    return 200 if ndim == 2 else 600


def hdbscan_labels(
    embeddings: np.ndarray,
    *,
    delta_v: float = 0.5,
    mask: np.ndarray | None = None,
    min_cluster_size: int | None = None,
    min_samples: int | None = None,
    max_samples: int | str | None = DEFAULT_MAX_SAMPLES,
    seed: int | None = 0,
    allow_single_cluster: bool = False,
) -> np.ndarray:
    """Cluster pixels with HDBSCAN, ``cluster_selection_epsilon = delta_v``; noise is 0.

    With more foreground pixels than ``max_samples``, HDBSCAN is fitted on a random subsample
    of that many pixels and every other pixel takes the label (cluster or noise) of its
    nearest sampled pixel in embedding space. ``min_cluster_size`` and ``min_samples`` are
    then scaled by the sampling fraction, so that they still mean pixels of the full image.
    ``"auto"`` samples enough pixels for a cluster of ``min_cluster_size`` pixels to hold 10
    samples, between 10 000 and 50 000 pixels.

    Parameters
    ----------
    embeddings : ndarray
        ``(E, [Z,] Y, X)`` float32.
    delta_v : float
        Pull margin of the loss, used as ``cluster_selection_epsilon``.
    mask : ndarray of bool, optional
        Cluster only these pixels; the others get 0.
    min_cluster_size : int, optional
        Smallest cluster in pixels (default 200 in 2D, 600 in 3D).
    min_samples : int, optional
        HDBSCAN's density parameter in pixels (default: ``min_cluster_size``).
    max_samples : int, "auto" or None
        Fit on at most this many pixels; None fits on all (slow: minutes for 512²).
    seed : int or None
        Seed of the subsample.
    allow_single_cluster : bool
        Let all pixels form one cluster (HDBSCAN otherwise splits them into at least two, or
        calls them noise). For one connected piece of foreground that may hold one object.

    Returns
    -------
    ndarray of int64
        Cluster ids from 1, 0 for noise and outside ``mask``.
    """
    import hdbscan

    spatial = embeddings.shape[1:]
    if min_cluster_size is None:
        min_cluster_size = default_min_cluster_size(len(spatial))
    if min_cluster_size < 2:
        raise SpocoInputError(
            f"min_cluster_size must be at least 2 pixels, got {min_cluster_size}."
        )
    if min_samples is None:
        min_samples = min_cluster_size
    points, pixels = foreground_points(embeddings, mask)
    if len(points) < 2:
        return np.zeros(spatial, np.int64)
    if max_samples == "auto":
        wanted = _SAMPLES_PER_SMALLEST_CLUSTER * len(points) / min_cluster_size
        max_samples = int(np.clip(wanted, *_AUTO_SAMPLES))
    sample = draw_subsample(len(points), max_samples, seed)
    fraction = 1.0 if sample is None else len(sample) / len(points)
    scaled_size = max(2, int(round(min_cluster_size * fraction)))
    scaled_samples = max(1, int(round(min_samples * fraction)))
    fit_points = points if sample is None else points[sample]
    if len(fit_points) <= scaled_samples:
        return np.zeros(spatial, np.int64)  # fewer pixels than one cluster needs
    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=scaled_size,
        min_samples=scaled_samples,
        cluster_selection_epsilon=float(delta_v),
        allow_single_cluster=allow_single_cluster,
        core_dist_n_jobs=1,
    )
    fitted = clusterer.fit_predict(fit_points.astype(np.float64)) + 1  # noise -1 becomes 0
    labels = fitted if sample is None else transfer_labels(points, sample, fitted)
    return scatter_to_image(labels, pixels, spatial)
