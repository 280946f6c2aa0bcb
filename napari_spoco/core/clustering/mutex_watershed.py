"""Mutex watershed on embedding affinities (the paper's "affinity-based" clustering).

We compute the edge strengths and choose which long-range edges are kept (strides) ourselves,
then hand the same edges to whichever backend is available, so that ``affogato`` and
``mwatershed`` return the same partition for the same input and seed.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpocoInputError
from .affinities import (
    ATTRACTIVE_FLOOR,
    EdgeLayout,
    affinity_from_squared_distance,
    check_edge_layout,
    default_edge_layout,
    edge_slices,
    squared_distances,
)

BACKENDS = ("auto", "affogato", "mwatershed")


def default_strides(ndim: int, anisotropic: bool = False) -> tuple[int, ...]:
    """Keep one repulsive edge in 16 in-plane; in isotropic 3D also one in 2 along z."""
    if ndim == 2:
        return (4, 4)
    return (1, 4, 4) if anisotropic else (2, 4, 4)


def _resolve_layout(ndim, offsets, n_attractive, anisotropic) -> EdgeLayout:
    if offsets is None:
        return default_edge_layout(ndim, anisotropic)
    return check_edge_layout(offsets, ndim if n_attractive is None else n_attractive, ndim)


def _fit_layout(layout: EdgeLayout, shape) -> EdgeLayout:
    """Drop offsets that leave the image from every pixel (mwatershed cannot take them)."""
    fits = [all(abs(o) < size for o, size in zip(offset, shape)) for offset in layout.offsets]
    offsets = tuple(offset for offset, ok in zip(layout.offsets, fits) if ok)
    return EdgeLayout(offsets, int(sum(fits[: layout.n_attractive])))


def _resolve_strides(strides, ndim, anisotropic) -> tuple[int, ...]:
    if strides is None:
        return default_strides(ndim, anisotropic)
    if np.isscalar(strides):
        strides = (strides,) * ndim
    strides = tuple(int(s) for s in strides)
    if len(strides) != ndim or min(strides) < 1:
        raise SpocoInputError(
            f"strides must be {ndim} positive integers (one per spatial axis; 1 keeps every "
            f"repulsive edge), got {strides}."
        )
    return strides


def _kept_repulsive_edges(shape, offset, strides, randomize, rng):
    """Source and target pixels of the repulsive edges kept for one offset.

    Returns slices (deterministic grid) or flat index arrays (random draw).
    """
    if not randomize or all(s == 1 for s in strides):
        return edge_slices(shape, offset, None if randomize else strides)
    source, _ = edge_slices(shape, offset)
    region = tuple(len(range(*sl.indices(size))) for sl, size in zip(source, shape))
    keep = rng.random(region, dtype=np.float32) < 1.0 / float(np.prod(strides))
    coords = [c + sl.start for c, sl in zip(np.nonzero(keep), source)]
    flat_source = np.ravel_multi_index(coords, shape)
    element_strides = np.cumprod((1,) + tuple(shape[::-1]))[:-1][::-1]
    flat_target = flat_source + int(np.dot(offset, element_strides))
    return flat_source, flat_target


def edge_strengths(
    embeddings: np.ndarray,
    layout: EdgeLayout,
    delta_d: float,
    strides,
    randomize_strides: bool = False,
    seed: int | None = 0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Non-negative edge strengths, processed by decreasing value by the mutex watershed.

    Attractive channels hold ``a + ATTRACTIVE_FLOOR / (1 + d)``; kept repulsive edges hold
    ``1 − a``; dropped repulsive edges, edges leaving the image and edges touching pixels
    outside ``mask`` hold 0 (a zero repulsive edge comes after every attractive edge, so it
    cannot change the result).

    Returns
    -------
    ndarray
        ``(len(layout.offsets), [Z,] Y, X)`` float64.
    """
    spatial = embeddings.shape[1:]
    strides = _resolve_strides(strides, len(spatial), False)
    flat_embeddings = embeddings.reshape(embeddings.shape[0], -1)
    rng = np.random.default_rng(seed)
    out = np.zeros((len(layout.offsets),) + spatial, np.float64)
    for channel, offset in enumerate(layout.offsets):
        attractive = channel < layout.n_attractive
        if attractive:
            source, target = edge_slices(spatial, offset)
            source_emb = embeddings
        else:
            source, target = _kept_repulsive_edges(
                spatial, offset, strides, randomize_strides, rng
            )
            source_emb = embeddings if isinstance(source, tuple) else flat_embeddings
        affinity, distance = affinity_from_squared_distance(
            squared_distances(source_emb, source, target), delta_d
        )
        if attractive:
            distance += 1.0
            np.divide(ATTRACTIVE_FLOOR, distance, out=distance)
            affinity += distance
            strength = affinity
        else:
            strength = np.subtract(1.0, affinity, out=affinity)
        if mask is not None:
            inside = mask if isinstance(source, tuple) else mask.reshape(-1)
            strength *= inside[source] & inside[target]
        target_view = out[channel] if isinstance(source, tuple) else out[channel].reshape(-1)
        target_view[source] = strength
    return out


def _mwatershed_strides(layout: EdgeLayout, strides, randomize_strides: bool):
    """Strides for mwatershed's own edge skipping, when its grid equals ours; else None.

    mwatershed starts the grid of a negative offset at ``-offset``; ours (affogato's) at 0.
    """
    if randomize_strides or all(s == 1 for s in strides):
        return None
    for offset in layout.offsets[layout.n_attractive:]:
        if any(max(0, -o) % s for o, s in zip(offset, strides)):
            return None
    ones = [1] * layout.ndim
    return [ones] * layout.n_attractive + [list(strides)] * (
        len(layout.offsets) - layout.n_attractive
    )


def _run_mwatershed(strengths, layout, strides, randomize_strides):
    import mwatershed

    signed = strengths
    signed[layout.n_attractive:] *= -1.0  # mwatershed: negative = repulsive
    labels = mwatershed.agglom(
        signed,
        [list(offset) for offset in layout.offsets],
        strides=_mwatershed_strides(layout, strides, randomize_strides),
    )
    return labels.astype(np.int64, copy=False)


def _run_affogato(strengths, layout, mask):
    from affogato.segmentation import compute_mws_segmentation

    labels = compute_mws_segmentation(
        strengths,
        [list(offset) for offset in layout.offsets],
        layout.n_attractive,
        strides=None,  # the stride draw is already in the zero strengths
        randomize_strides=False,
        mask=mask,
    )
    # affogato counts segments from 0 without a mask; shift so that 0 never names a segment
    labels = np.asarray(labels).astype(np.int64) + 1
    return labels


def _affogato_available() -> bool:
    try:
        from affogato.segmentation import compute_mws_segmentation  # noqa: F401
    except ImportError:
        return False
    return True


def mutex_watershed(
    embeddings: np.ndarray,
    *,
    delta_d: float = 2.0,
    mask: np.ndarray | None = None,
    offsets=None,
    n_attractive: int | None = None,
    anisotropic: bool = False,
    strides=None,
    randomize_strides: bool = False,
    seed: int | None = 0,
    backend: str = "auto",
) -> np.ndarray:
    """Partition pixels with the mutex watershed on affinities derived from embeddings.

    Parameters
    ----------
    embeddings : ndarray
        ``(E, [Z,] Y, X)`` float32.
    delta_d : float
        Push margin of the loss: ``a = max((2 delta_d − ‖e_i − e_j‖) / (2 delta_d), 0)²``.
    mask : ndarray of bool, optional
        Foreground; pixels outside get 0 and no edge touches them.
    offsets : sequence of tuple of int, optional
        Edge offsets, the first ``n_attractive`` attractive. Default: nearest neighbours
        attractive, 3, 9, 27 along each axis repulsive (see ``anisotropic``).
    n_attractive : int, optional
        Number of attractive offsets at the start of ``offsets`` (default: one per axis).
    anisotropic : bool
        3D only, default offsets only: repulsive z offsets 1, 2, 4 instead of 3, 9, 27.
    strides : int or tuple of int, optional
        Keep one repulsive edge per ``prod(strides)``: on the grid ``p % strides == 0`` or,
        with ``randomize_strides``, drawn with that probability. Default (4, 4) in 2D,
        (2, 4, 4) in 3D, (1, 4, 4) in anisotropic 3D; 1 keeps all.
    randomize_strides : bool
        Draw the kept repulsive edges at random (seeded by ``seed``) instead of on a grid.
    seed : int or None
        Seed of the random stride draw.
    backend : {"auto", "affogato", "mwatershed"}
        "auto" uses affogato when importable, else mwatershed. Both see the same edges.

    Returns
    -------
    ndarray of int64
        Segment ids (not consecutive), 0 outside ``mask``.
    """
    if backend not in BACKENDS:
        raise SpocoInputError(
            f"Unknown mutex watershed backend {backend!r}; use one of {BACKENDS}."
        )
    if backend == "auto":
        backend = "affogato" if _affogato_available() else "mwatershed"
    elif backend == "affogato" and not _affogato_available():
        raise SpocoInputError(
            "The affogato backend is not installed. Install it from conda-forge "
            "(`conda install -c conda-forge affogato`; the PyPI package of that name is "
            "unrelated) or use backend='mwatershed'."
        )
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    ndim = embeddings.ndim - 1
    spatial = embeddings.shape[1:]
    layout = _fit_layout(_resolve_layout(ndim, offsets, n_attractive, anisotropic), spatial)
    strides = _resolve_strides(strides, ndim, anisotropic)
    if layout.n_attractive == 0:  # no attractive edge fits: every pixel is its own segment
        return _label_unmerged_pixels(np.zeros(spatial, np.int64), mask)
    strengths = edge_strengths(embeddings, layout, delta_d, strides, randomize_strides, seed, mask)
    if backend == "affogato":
        labels = _run_affogato(strengths, layout, mask)
    else:
        labels = _run_mwatershed(strengths, layout, strides, randomize_strides)
    return _label_unmerged_pixels(labels, mask)


def _label_unmerged_pixels(labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Give every foreground pixel left at 0 (no attractive edge: mwatershed) its own id."""
    if mask is not None:
        labels[~mask] = 0
        orphans = (labels == 0) & mask
    else:
        orphans = labels == 0
    count = int(np.count_nonzero(orphans))
    if count:
        labels[orphans] = labels.max() + 1 + np.arange(count)
    return labels
