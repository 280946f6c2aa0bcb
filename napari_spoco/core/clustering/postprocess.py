"""Shared clean-up of a partition: merge close clusters, drop small ones, fill holes, relabel."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .affinities import edge_slices, squared_distances


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n in order of the old ids, 0 kept as 0; returns uint32."""
    flat = labels.reshape(-1)
    top = int(flat.max()) if flat.size else 0
    if top <= 4 * flat.size + 1024:
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        lookup = np.cumsum(present, dtype=np.int64)
        return lookup.astype(np.uint32)[flat].reshape(labels.shape)
    ids, inverse = np.unique(flat, return_inverse=True)
    new_ids = np.arange(ids.size, dtype=np.uint32) + (0 if ids[0] == 0 else 1)
    return new_ids[inverse.reshape(-1)].reshape(labels.shape)


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive int64 ids and the size of each id (index 0 = background)."""
    compact = relabel_consecutive(labels).astype(np.int64)
    return compact, np.bincount(compact.reshape(-1))


def cluster_means(labels: np.ndarray, embeddings: np.ndarray, n_labels: int) -> np.ndarray:
    """Mean embedding of each id 0..n_labels-1, ``(n_labels, E)``; labels are consecutive."""
    flat = labels.reshape(-1)
    counts = np.maximum(np.bincount(flat, minlength=n_labels), 1)
    sums = np.stack(
        [np.bincount(flat, weights=c.reshape(-1), minlength=n_labels) for c in embeddings], axis=1
    )
    return sums / counts[:, None]


def touching_pairs(labels: np.ndarray) -> np.ndarray:
    """Distinct (a, b), a < b, of non-zero ids that are nearest neighbours somewhere."""
    pairs = []
    for axis in range(labels.ndim):
        offset = tuple(1 if a == axis else 0 for a in range(labels.ndim))
        source, target = edge_slices(labels.shape, offset)
        a, b = labels[source].reshape(-1), labels[target].reshape(-1)
        differ = (a != b) & (a > 0) & (b > 0)
        a, b = a[differ], b[differ]
        pairs.append(np.stack([np.minimum(a, b), np.maximum(a, b)], 1))
    pairs = np.concatenate(pairs).astype(np.int64, copy=False)
    if not pairs.size:
        return pairs.reshape(0, 2)
    # one int64 key per pair: np.unique on it is many times faster than on rows (axis=0),
    # and sorts the pairs in the same (lexicographic) order
    top = int(pairs[:, 1].max()) + 1
    keys = np.unique(pairs[:, 0] * top + pairs[:, 1])
    return np.stack([keys // top, keys % top], 1)


def merge_close_clusters(
    labels: np.ndarray, embeddings: np.ndarray, delta_d: float, adjacent_only: bool = False
) -> np.ndarray:
    """Merge clusters whose mean embeddings are closer than ``delta_d``.

    As in the reference implementation, clusters are visited from the largest; each joins
    the nearest already kept cluster ("anchor", whose mean stays the anchor's own) closer
    than ``delta_d``, or becomes an anchor itself. This does not chain: two clusters more
    than ``delta_d`` apart are never merged through a third.

    Parameters
    ----------
    labels : ndarray of int
        0 = no object.
    embeddings : ndarray
        ``(E, *labels.shape)``.
    delta_d : float
        Merge threshold on the distance of mean embeddings.
    adjacent_only : bool
        Only merge a cluster into anchors whose clusters touch it in the image.

    Returns
    -------
    ndarray of int64
    """
    compact, sizes = _compact(labels)
    n_labels = sizes.size
    if n_labels <= 2:
        return compact
    means = cluster_means(compact, embeddings, n_labels)
    if adjacent_only:
        pairs = touching_pairs(compact)
        both = np.concatenate([pairs, pairs[:, ::-1]])
        both = both[np.argsort(both[:, 0], kind="stable")]
        starts = np.searchsorted(both[:, 0], np.arange(n_labels + 1))
        partners = [both[starts[i]:starts[i + 1], 1] for i in range(n_labels)]
    else:
        partners = cKDTree(means[1:]).query_ball_point(means[1:], delta_d)
        partners = [[]] + [np.asarray(p, dtype=np.int64) + 1 for p in partners]
    group = np.arange(n_labels)
    is_anchor = np.zeros(n_labels, bool)
    processed = np.zeros(n_labels, bool)
    for cluster in np.argsort(-sizes[1:], kind="stable") + 1:
        candidates = np.asarray(partners[cluster], dtype=np.int64)
        candidates = candidates[processed[candidates]]
        candidates = np.unique(group[candidates])
        candidates = candidates[is_anchor[candidates]]
        processed[cluster] = True
        if candidates.size:
            distances = np.linalg.norm(means[candidates] - means[cluster], axis=1)
            nearest = int(np.argmin(distances))
            if distances[nearest] < delta_d:
                group[cluster] = candidates[nearest]
                continue
        is_anchor[cluster] = True
    return group[compact]


def keep_foreground_segments(labels: np.ndarray, foreground: np.ndarray,
                             threshold: float = 0.5, crop: bool = False) -> np.ndarray:
    """Set every segment whose mean foreground probability is ``<= threshold`` to 0.

    With ``crop``, the kept segments also lose their pixels at or below the threshold: the
    embeddings of an object's unlabeled surroundings are close to its own, so its segment
    spills a few pixels into the background, where the foreground head is sharper. A segment
    that the crop cuts into pieces that no longer touch becomes one segment per piece: two
    nuclei with close embeddings across a thin gap of background are two objects.

    Examples
    --------
    >>> labels = np.array([[1, 1, 1, 2, 2]])
    >>> foreground = np.array([[0.9, 0.8, 0.3, 0.2, 0.1]])
    >>> keep_foreground_segments(labels, foreground).tolist()
    [[1, 1, 1, 0, 0]]
    >>> keep_foreground_segments(labels, foreground, crop=True).tolist()
    [[1, 1, 0, 0, 0]]
    >>> keep_foreground_segments(np.array([[1, 1, 1, 1, 1]]),
    ...                          np.array([[0.9, 0.9, 0.1, 0.9, 0.9]]), crop=True).tolist()
    [[1, 1, 0, 2, 2]]
    """
    compact, sizes = _compact(labels)
    total = np.bincount(compact.reshape(-1), weights=foreground.reshape(-1),
                        minlength=sizes.size)
    background = total <= threshold * np.maximum(sizes, 1)
    background[0] = True
    kept = np.where(background[compact], 0, compact)
    if crop:
        kept[foreground <= threshold] = 0
        kept = split_disconnected(kept)
    return kept


def split_disconnected(labels: np.ndarray) -> np.ndarray:
    """One id per connected piece of each segment (pixels touching by a face, edge or corner).

    Examples
    --------
    >>> split_disconnected(np.array([[1, 0, 1, 2, 2]])).tolist()
    [[1, 0, 2, 3, 3]]
    """
    from skimage.measure import label

    return label(labels, background=0, connectivity=labels.ndim).astype(np.int64)


def remove_small(labels: np.ndarray, min_size: int,
                 isolated_min_size: int | None = None) -> np.ndarray:
    """Set every segment with fewer than ``min_size`` pixels to 0.

    With ``isolated_min_size``, a segment that touches no other segment (only 0 around it)
    is removed only below that size: it is a whole object, small or cut by the image border,
    not a fragment of a neighbour.

    Examples
    --------
    >>> labels = np.array([[1, 1, 1, 2, 0, 3, 3]])
    >>> remove_small(labels, 3).tolist()
    [[1, 1, 1, 0, 0, 0, 0]]
    >>> remove_small(labels, 3, isolated_min_size=2).tolist()  # 2 touches 1; 3 stands alone
    [[1, 1, 1, 0, 0, 3, 3]]
    """
    compact, sizes = _compact(labels)
    small = sizes < min_size
    if isolated_min_size is not None:
        small &= touches_another_segment(compact, sizes.size) | (sizes < isolated_min_size)
    small[0] = True
    return np.where(small[compact], 0, compact)


def touches_another_segment(compact: np.ndarray, n_ids: int) -> np.ndarray:
    """Per id of consecutive labels ``compact``, whether a face neighbour has another id > 0."""
    touches = np.zeros(n_ids, bool)
    for axis in range(compact.ndim):
        offset = tuple(1 if a == axis else 0 for a in range(compact.ndim))
        source, target = edge_slices(compact.shape, offset)
        a, b = compact[source], compact[target]
        differ = (a != b) & (a > 0) & (b > 0)
        touches[a[differ]] = True
        touches[b[differ]] = True
    return touches


def embedding_gradient(embeddings: np.ndarray) -> np.ndarray:
    """Largest embedding jump to a nearest neighbour at each pixel (float32)."""
    spatial = embeddings.shape[1:]
    gradient = np.zeros(spatial, np.float32)
    for axis in range(len(spatial)):
        offset = tuple(1 if a == axis else 0 for a in range(len(spatial)))
        source, target = edge_slices(spatial, offset)
        jump = np.sqrt(squared_distances(embeddings, source, target))
        np.maximum(gradient[source], jump, out=gradient[source])
        np.maximum(gradient[target], jump, out=gradient[target])
    return gradient


def fill_from_neighbours(
    labels: np.ndarray, embeddings: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Give unlabeled pixels (inside ``mask``) the id of a neighbouring segment.

    A seeded watershed on the embedding gradient, flooding from the segments around each
    hole; holes with no segment around them stay 0.
    """
    from skimage.segmentation import watershed

    holes = labels == 0
    if mask is not None:
        holes &= mask
    if not holes.any() or holes.all():
        return labels
    # flooding only reads the holes and the ring of segment pixels around them: restricting
    # the watershed to them gives the same result for a fraction of the cost
    region = ndimage.binary_dilation(holes)
    if mask is not None:
        region &= mask
    markers = np.where(region & ~holes, labels, 0)
    flooded = watershed(embedding_gradient(embeddings), markers=markers, mask=region)
    out = labels.copy()
    out[holes] = flooded[holes]
    return out
