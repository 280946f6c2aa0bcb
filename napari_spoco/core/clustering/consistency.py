"""Consistency clustering (the paper's Algorithm 1).

Mean-shift on the f-embeddings proposes clusters. For each cluster S_k, anchors are drawn from
its pixels; each anchor's delta_v-ball in the g-embeddings (a second augmented view through
the momentum network) is an alternative object. S_k is kept when the median IoU between S_k
and these balls reaches ``iou_threshold``: real objects look the same in both views.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .meanshift import DEFAULT_MAX_SAMPLES, meanshift_labels
from .pixel_sampling import foreground_points

# anchors x members distances held at once (64 MiB of float32)
_BLOCK_ELEMENTS = 1 << 24


def _intersection_counts(anchors: np.ndarray, members: np.ndarray, radius: float) -> np.ndarray:
    """For each anchor, how many member points lie strictly within ``radius``."""
    member_norms = (members * members).sum(1)
    counts = np.zeros(len(anchors), np.int64)
    step = max(1, _BLOCK_ELEMENTS // max(len(members), 1))
    for start in range(0, len(anchors), step):
        block = anchors[start:start + step]
        squared = (block * block).sum(1)[:, None] - 2.0 * (block @ members.T) + member_norms
        counts[start:start + step] = (squared < radius * radius).sum(1)
    return counts


def consistent_clusters(
    labels: np.ndarray,
    embeddings_g: np.ndarray,
    *,
    delta_v: float = 0.5,
    mask: np.ndarray | None = None,
    iou_threshold: float = 0.6,
    n_anchors: int = 100,
    seed: int | None = 0,
) -> np.ndarray:
    """Set to 0 every cluster whose median IoU with the g-space balls of its anchors is low.

    Parameters
    ----------
    labels : ndarray of int
        Clusters found on the f-embeddings (0 = none).
    embeddings_g : ndarray
        ``(E, *labels.shape)`` g-embeddings of the second view.
    delta_v : float
        Radius of the ball around each anchor in g-space.
    mask : ndarray of bool, optional
        Pixels that can belong to a ball (default: all).
    iou_threshold : float
        Keep a cluster when its median IoU is at least this.
    n_anchors : int
        Anchors drawn (with replacement, like the reference code) per cluster.
    seed : int or None
        Seed of the anchor draw.

    Returns
    -------
    ndarray
        ``labels`` with the inconsistent clusters set to 0.
    """
    points, pixels = foreground_points(np.asarray(embeddings_g, np.float32), mask)
    point_labels = labels.reshape(-1)[pixels]
    ids, inverse, sizes = np.unique(point_labels, return_inverse=True, return_counts=True)
    rng = np.random.default_rng(seed)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    clusters = [index for index, label in enumerate(ids) if label != 0]
    if not clusters:
        return labels
    members = [order[starts[index]:starts[index + 1]] for index in clusters]
    # anchors are drawn with replacement, like the reference code
    anchor_rows = np.concatenate([m[rng.integers(0, len(m), n_anchors)] for m in members])
    anchors = points[anchor_rows]
    # ball sizes over all pixels from a tree; the shell at exactly delta_v has measure zero,
    # so the tree's "<=" and the algorithm's "<" agree
    ball_sizes = cKDTree(points).query_ball_point(
        anchors, delta_v, return_length=True, workers=-1
    ).reshape(len(clusters), n_anchors)
    intersections = np.stack([
        _intersection_counts(anchors[i * n_anchors:(i + 1) * n_anchors], points[m], delta_v)
        for i, m in enumerate(members)
    ])
    cluster_sizes = sizes[clusters][:, None]
    iou = intersections / (ball_sizes + cluster_sizes - intersections)
    median_iou = np.median(iou, axis=1)
    dropped = ids[clusters][median_iou < iou_threshold]
    return np.where(np.isin(labels, dropped), 0, labels)


def consistency_labels(
    embeddings: np.ndarray,
    embeddings_g: np.ndarray,
    *,
    delta_v: float = 0.5,
    mask: np.ndarray | None = None,
    iou_threshold: float = 0.6,
    n_anchors: int = 100,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    seed: int | None = 0,
) -> np.ndarray:
    """Mean-shift on the f-embeddings, then drop the clusters that g does not confirm.

    Parameters
    ----------
    embeddings, embeddings_g : ndarray
        ``(E, [Z,] Y, X)`` f- and g-embeddings of two augmented views of the same image.
    delta_v : float
        Mean-shift bandwidth and anchor ball radius.
    mask : ndarray of bool, optional
        Cluster only these pixels.
    iou_threshold : float
        The paper's t_IoU (0.6).
    n_anchors : int
        Anchors per cluster (the paper's M = 100).
    max_samples : int or None
        Mean-shift subsample size (see :func:`meanshift_labels`).
    seed : int or None
        Seed of the subsample and of the anchors.

    Returns
    -------
    ndarray of int64
        Kept clusters, 0 elsewhere.
    """
    labels = meanshift_labels(
        embeddings, bandwidth=delta_v, mask=mask, max_samples=max_samples, seed=seed
    )
    return consistent_clusters(
        labels, embeddings_g, delta_v=delta_v, mask=mask, iou_threshold=iou_threshold,
        n_anchors=n_anchors, seed=seed,
    )
