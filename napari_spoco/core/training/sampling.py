"""SPOCO@p: keep a seeded fraction of the labeled objects of a dense ground truth.

``placement="random"`` is the paper's draw (objects scattered over the image);
``placement="clustered"`` keeps one random object and its nearest neighbours, the way a
person painting one region would label. The transfer experiment compares both.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import SpocoInputError


def subsample_objects(
    labels,
    fraction: float,
    seed: int | None,
    keep_ids: Iterable[int] = (),
    placement: str = "random",
) -> np.ndarray:
    """Keep ``round(fraction · n)`` of the ``n`` objects of ``labels`` and set the others to 0.

    Parameters
    ----------
    labels : array-like of int
        Instance labels; 0 is unlabeled and is never an object.
    fraction : float
        The p of SPOCO@p, in [0, 1].
    seed : int or None
        Seed of ``numpy.random.default_rng``; the same seed keeps the same objects.
    keep_ids : iterable of int
        Ids that are always kept and not counted in ``n`` (e.g. a painted ``background_id``).
    placement : {"random", "clustered"}
        ``"random"``: a uniform draw without replacement (SPOCO@p). ``"clustered"``: one
        object drawn uniformly, then the objects whose centroids lie nearest to its centroid,
        so the kept objects lie next to each other and their shared boundaries are labeled.

    Returns
    -------
    numpy.ndarray
        A new array of the same shape and dtype.

    Notes
    -----
    The count rounds half up (``floor(p·n + 0.5)``), so 2.5 objects keep 3. With small
    ``p·n`` the count can round to 0: no object is kept then, as SPOCO@p prescribes.
    """
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise SpocoInputError(
            f"The fraction of objects to keep must be in [0, 1], got {fraction}."
        )
    if placement not in ("random", "clustered"):
        raise SpocoInputError(
            f"placement={placement!r} is not an object placement; use 'random' or 'clustered'."
        )
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise SpocoInputError(
            f"subsample_objects needs integer labels, got dtype {labels.dtype}."
        )
    ids, inverse = np.unique(labels, return_inverse=True)
    always = np.isin(ids, [int(i) for i in keep_ids]) | (ids == 0)
    candidates = np.flatnonzero(~always)
    n_keep = int(np.floor(fraction * candidates.size + 0.5))
    rng = np.random.default_rng(seed)
    if placement == "random" or n_keep == 0:
        chosen = rng.choice(candidates, size=n_keep, replace=False)
    else:
        # imported here: the clustering package costs ~0.3 s to import, and only this branch
        # needs it; the centroid is the mean of the pixel coordinates per object
        from ..clustering.postprocess import cluster_means

        centroids = cluster_means(inverse.reshape(labels.shape), np.indices(labels.shape),
                                  ids.size)[candidates]
        start = centroids[rng.integers(candidates.size)]
        # stable sort: ties go to the lower id, so the result depends on the seed only
        nearest = np.argsort(((centroids - start) ** 2).sum(1), kind="stable")
        chosen = candidates[nearest[:n_keep]]
    keep = always.copy()
    keep[chosen] = True
    return np.where(keep[inverse.reshape(labels.shape)], labels, 0).astype(labels.dtype)



def background_strokes(
    labels,
    n_strokes: int = 6,
    length: int | None = None,
    width: int = 3,
    seed: int | None = 0,
    margin: int = 3,
) -> np.ndarray:
    """Boolean mask of a few brush strokes in the background of a dense ground truth.

    Simulates a person painting "this is background" with a few short straight strokes:
    each starts at a random background pixel at least ``margin`` pixels from any object and
    runs in a random direction (in the last two axes, on one z slice in 3D), keeping only the
    pixels that are still ``margin`` away from objects.

    Parameters
    ----------
    labels : array-like of int
        Dense instance labels; 0 is background.
    n_strokes : int
        Number of strokes.
    length : int, optional
        Stroke length in pixels; default a tenth of the image's longest side (at least 10).
    width : int
        Brush width in pixels.
    seed : int or None
        Seed of the stroke positions and directions.
    margin : int
        Least distance in pixels from any object.

    Returns
    -------
    ndarray of bool
        The painted pixels (empty when there is no background far enough from the objects).

    Examples
    --------
    >>> labels = np.zeros((64, 64), np.uint32); labels[20:40, 20:40] = 1
    >>> strokes = background_strokes(labels, n_strokes=3, seed=0)
    >>> bool(strokes.any()), bool((strokes & (labels > 0)).any())
    (True, False)
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    free = ndimage.distance_transform_edt(labels == 0) > margin
    strokes = np.zeros(labels.shape, bool)
    starts = np.argwhere(free)
    if starts.size == 0 or n_strokes < 1:
        return strokes
    rng = np.random.default_rng(seed)
    length = max(10, max(labels.shape[-2:]) // 10) if length is None else int(length)
    half = max(int(width) // 2, 0)
    for start in starts[rng.choice(len(starts), size=min(n_strokes, len(starts)),
                                   replace=False)]:
        angle = rng.uniform(0, np.pi)
        steps = np.arange(-(length // 2), length - length // 2)
        ys = np.round(start[-2] + steps * np.sin(angle)).astype(int)
        xs = np.round(start[-1] + steps * np.cos(angle)).astype(int)
        for dy in range(-half, half + 1):
            for dx in range(-half, half + 1):
                y, x = ys + dy, xs + dx
                inside = (y >= 0) & (y < labels.shape[-2]) & (x >= 0) & (x < labels.shape[-1])
                index = (*start[:-2].reshape(-1, 1).repeat(inside.sum(), 1), y[inside],
                         x[inside])
                strokes[index] = True
    return strokes & free
