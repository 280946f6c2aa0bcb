"""SPOCO@p: keep a seeded random fraction of the labeled objects of a dense ground truth."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import SpocoInputError


def subsample_objects(
    labels,
    fraction: float,
    seed: int | None,
    keep_ids: Iterable[int] = (),
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
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise SpocoInputError(
            f"subsample_objects needs integer labels, got dtype {labels.dtype}."
        )
    ids, inverse = np.unique(labels, return_inverse=True)
    always = np.isin(ids, [int(i) for i in keep_ids]) | (ids == 0)
    candidates = np.flatnonzero(~always)
    n_keep = int(np.floor(fraction * candidates.size + 0.5))
    chosen = np.random.default_rng(seed).choice(candidates, size=n_keep, replace=False)
    keep = always.copy()
    keep[chosen] = True
    return np.where(keep[inverse.reshape(labels.shape)], labels, 0).astype(labels.dtype)
