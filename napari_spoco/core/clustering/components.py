"""Cluster each connected piece of the foreground on its own (HDBSCAN, mean-shift).

The SPOCO loss only pushes apart objects that share a training patch, so two nuclei at
opposite ends of an image may have close mean embeddings: a clustering over all pixels at
once (HDBSCAN, mean-shift) merges them. Within one connected piece of foreground only
touching or nearby objects compete, and those the loss did separate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage


def cluster_per_component(
    cluster: Callable[[np.ndarray, np.ndarray], np.ndarray],
    embeddings: np.ndarray,
    region: np.ndarray,
) -> np.ndarray:
    """Run ``cluster`` on every connected component of ``region`` and join the results.

    Parameters
    ----------
    cluster : callable
        ``cluster(embeddings_crop, mask_crop) -> labels_crop``: 0 for unassigned pixels,
        clusters from 1. It sees the bounding box of one component and that component's mask.
    embeddings : ndarray
        ``(E, *spatial)``.
    region : ndarray of bool
        The pixels to cluster (e.g. the predicted foreground).

    Returns
    -------
    ndarray of int64
        Cluster ids unique across components, 0 outside ``region`` and where ``cluster``
        left pixels unassigned.

    Examples
    --------
    >>> emb = np.zeros((1, 4, 9), np.float32)
    >>> region = np.zeros((4, 9), bool); region[:, :3] = region[:, 6:] = True
    >>> one_cluster = lambda e, m: m.astype(np.int64)
    >>> np.unique(cluster_per_component(one_cluster, emb, region)).tolist()
    [0, 1, 2]
    """
    region = np.asarray(region, bool)
    components, _ = ndimage.label(region)
    labels = np.zeros(region.shape, np.int64)
    next_id = 1
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        inside = components[box] == index
        crop = cluster(np.ascontiguousarray(embeddings[(slice(None), *box)]), inside)
        crop = np.where(inside, crop, 0)
        ids = np.unique(crop[crop > 0])
        if ids.size == 0:
            continue
        lookup = np.zeros(int(ids.max()) + 1, np.int64)
        lookup[ids] = np.arange(next_id, next_id + ids.size)
        target = labels[box]
        target[inside] = lookup[crop[inside]]
        next_id += ids.size
    return labels
