"""Mutex watershed on embedding affinities (the paper's "affinity-based" clustering).

We compute the edge strengths and choose which long-range edges are kept (strides) ourselves,
then hand the same edges to whichever backend is available, so that ``affogato`` and
``mwatershed`` return the same partition for the same input and seed.

With mwatershed, the graph is first contracted where the result is known in advance (pixel
components the mutex watershed must merge before anything else touches them, then nodes whose
strongest edge is attractive), and only the much smaller contracted graph is clustered. The
contraction is exact: the partition is the one ``mwatershed.agglom`` gives on the full grid
(ties between equal strengths aside, which neither orders in a defined way).
"""

from __future__ import annotations

import itertools

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


#: Safe components start at this quantile of the attractive strengths; a component that is not
#: safe there is tried again at higher levels (``_safe_components``). Lower starts give larger
#: components but need more levels: 0.2 needed one level on the 2D benchmark and four on the 3D
#: one, where the grid percolates at lower levels (docs/performance.md).
SAFE_START_QUANTILE = 0.2
#: Levels between the start and the last level, which is always safe.
SAFE_BISECTIONS = 2
#: The contracted graph goes to mwatershed as a Python list and costs about three times what
#: ``agglom`` spends per edge (sorting, the list, mwatershed's hashing): with more nodes than
#: the first fraction of the pixels, or more edges between nodes than the second fraction of
#: all edges, ``agglom`` on the whole grid is used instead.
CONTRACTED_MAX_NODE_FRACTION = 0.6
CONTRACTED_MAX_EDGE_FRACTION = 0.3


def _unit_attractive_axes(layout: EdgeLayout):
    """Axes of the attractive offsets when each is a +1 step along its own axis; else None."""
    axes = []
    for offset in layout.offsets[: layout.n_attractive]:
        nonzero = [axis for axis, o in enumerate(offset) if o]
        if len(nonzero) != 1 or offset[nonzero[0]] != 1 or nonzero[0] in axes:
            return None
        axes.append(nonzero[0])
    return axes


def _threshold_components(attractive, axes, level, free):
    """Connected components of the ``free`` pixels joined by attractive edges ``> level``.

    ``level`` is per pixel (an edge is compared with the larger level of its two ends). The
    edges are nearest-neighbour steps, so the components are those of an image with one pixel
    per node and one per edge (the pixel grid interleaved with the edge grid) under
    ``ndimage.label``, much faster than a sparse-graph search.
    """
    from scipy import ndimage

    spatial = free.shape
    ndim = len(spatial)
    grid = np.zeros(tuple(2 * size - 1 for size in spatial), bool)
    nodes = (slice(None, None, 2),) * ndim
    grid[nodes] = free
    for channel, axis in enumerate(axes):
        head = tuple(slice(0, -1) if a == axis else slice(None) for a in range(ndim))
        tail = tuple(slice(1, None) if a == axis else slice(None) for a in range(ndim))
        joined = attractive[channel][head] > np.maximum(level[head], level[tail])
        joined &= free[head]
        joined &= free[tail]
        grid[tuple(slice(1, None, 2) if a == axis else slice(None, None, 2)
                   for a in range(ndim))] = joined
    labels, count = ndimage.label(grid)
    return labels[nodes].reshape(-1), count


def _repulsive_edge_list(strengths, layout, strides=None):
    """Flat source, target and strength of every repulsive edge with a non-zero strength.

    With ``strides`` (deterministic strides), only the sources on the stride grid are read:
    ``edge_strengths`` leaves every other repulsive edge at 0.
    """
    spatial = strengths.shape[1:]
    element_strides = np.cumprod((1,) + tuple(spatial[::-1]))[:-1][::-1]
    pixel_index = None
    sources, targets, values = [], [], []
    for channel in range(layout.n_attractive, len(layout.offsets)):
        offset = layout.offsets[channel]
        if strides is None:
            flat = strengths[channel].reshape(-1)
            source = np.flatnonzero(flat)
            value = flat[source]
        else:
            if pixel_index is None:
                pixel_index = np.arange(int(np.prod(spatial))).reshape(spatial)
            grid, _ = edge_slices(spatial, offset, strides)
            value = strengths[channel][grid].reshape(-1)
            kept = value > 0
            source = pixel_index[grid].reshape(-1)[kept]
            value = value[kept]
        sources.append(source)
        targets.append(source + int(np.dot(offset, element_strides)))
        values.append(value)
    if not sources:
        return (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.float64),)
    return np.concatenate(sources), np.concatenate(targets), np.concatenate(values)


def _safe_components(strengths, layout, axes, repulsive):
    """Contract the pixels into components the mutex watershed is sure to merge first.

    A component S of the attractive edges stronger than a level t (every attractive edge
    leaving S is ``<= t``) that holds no repulsive edge stronger than t ends up inside one
    segment, and contracting it into one node before the mutex watershed runs gives the same
    partition: before t no edge joins S to the rest attractively and no mutex falls inside
    S, so S is merged by time t; the repulsive edges from S to outside only add mutexes that
    the contracted node carries too. Components that hold a stronger repulsive edge are
    split at a higher level (half-way to that edge, then at it, where every piece is safe).

    Returns
    -------
    node : ndarray of int64
        Node id of every pixel (flat), ``0..n_nodes-1``.
    n_nodes : int
    """
    spatial = strengths.shape[1:]
    n_pixels = int(np.prod(spatial))
    attractive = strengths[: layout.n_attractive]
    sample = attractive.reshape(-1)[::7]
    sample = sample[sample > 0]
    start = float(np.quantile(sample, SAFE_START_QUANTILE)) if sample.size else 0.0
    repulsive_source, repulsive_target, repulsive_value = repulsive
    node = np.full(n_pixels, -1, np.int64)
    n_nodes = 0
    free = np.ones(spatial, bool)
    level = np.full(spatial, start)
    for attempt in range(SAFE_BISECTIONS + 2):
        component, count = _threshold_components(attractive, axes, level, free)
        component_level = np.zeros(count + 1)
        component_level[component] = level.reshape(-1)
        in_source = component[repulsive_source]
        inside = (in_source == component[repulsive_target]) & (in_source > 0)
        strongest = np.zeros(count + 1)
        np.maximum.at(strongest, in_source[inside], repulsive_value[inside])
        safe = strongest <= component_level
        safe[0] = False  # pixels already contracted
        ids = np.full(count + 1, -1, np.int64)
        kept = np.flatnonzero(safe)
        ids[kept] = n_nodes + np.arange(kept.size)
        n_nodes += kept.size
        new = ids[component]
        done = new >= 0
        node[done] = new[done]
        free = (node < 0).reshape(spatial)
        if not free.any():
            break
        # the last attempt is at the strongest inner repulsive edge: every piece is safe there
        last = attempt >= SAFE_BISECTIONS
        target = strongest if last else 0.5 * (component_level + strongest)
        level = np.where(free, target[component].reshape(spatial), np.inf)
    rest = node < 0  # not reached: the last level leaves every pixel in a safe piece
    node[rest] = n_nodes + np.arange(int(np.count_nonzero(rest)))
    return node, n_nodes + int(np.count_nonzero(rest))


def _strongest_parallel_edges(u, v, w, n_nodes):
    """Of the edges joining the same two nodes keep the first, in the order given.

    The edges come sorted by decreasing ``|w|``, so the first is the strongest: it merges
    the two nodes or puts a mutex between them, and either makes every later edge between
    them a no-op.
    """
    _, first = np.unique(np.minimum(u, v) * n_nodes + np.maximum(u, v), return_index=True)
    first.sort()
    return u[first], v[first], w[first]


#: Rounds of ``_merge_leaves`` at most, stopping when a round merges fewer than this fraction.
LEAF_ROUNDS = 8
LEAF_MIN_GAIN = 0.02


def _merge_leaves(u, v, w, n_nodes):
    """Join every node whose strongest edge is attractive to the node at its other end.

    Exact: the mutex watershed meets that edge before any other edge of the node, when the
    node is still alone and has no mutex, so it always merges there; merging it first changes
    nothing else, since the node's other edges come later anyway. ``u, v, w`` are sorted by
    decreasing ``|w|`` (the order given to the mutex watershed, which also breaks ties).

    Returns
    -------
    merged : ndarray of int64
        New node id of every node.
    count : int
        Number of new nodes.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    index = np.arange(u.size)
    strongest = np.full(n_nodes, u.size, np.int64)
    np.minimum.at(strongest, u, index)
    np.minimum.at(strongest, v, index)
    leaves = np.flatnonzero(strongest < u.size)
    edge = strongest[leaves]
    attractive = w[edge] > 0
    leaves, edge = leaves[attractive], edge[attractive]
    partner = np.where(u[edge] == leaves, v[edge], u[edge])
    graph = coo_matrix((np.ones(leaves.size, np.int8), (leaves, partner)),
                       shape=(n_nodes, n_nodes))
    count, merged = connected_components(graph, directed=True, connection="weak")
    return merged.astype(np.int64), int(count)


def _relabel_graph(merged, count, node, u, v, w):
    """Apply a node merge to the pixel map and the edges (internal edges dropped, order kept)."""
    u, v = merged[u], merged[v]
    between = u != v
    return merged[node], u[between], v[between], w[between], count


def _run_mwatershed_contracted(strengths, layout, strides=None):
    """The mutex watershed on the graph of safe components (``_safe_components``).

    Returns labels, or None where this does not pay (or cannot be used): attractive offsets
    other than +1 steps along the axes, negative or NaN strengths (mwatershed reads a negative
    attractive strength as repulsive), or too many nodes left.
    """
    import mwatershed

    axes = _unit_attractive_axes(layout)
    if axes is None:
        return None
    spatial = strengths.shape[1:]
    n_pixels = int(np.prod(spatial))
    attractive = strengths[: layout.n_attractive]
    repulsive = _repulsive_edge_list(strengths, layout, strides)
    if not (attractive.min() >= 0 and (repulsive[2].size == 0 or repulsive[2].min() >= 0)):
        return None
    node, n_nodes = _safe_components(strengths, layout, axes, repulsive)
    if n_nodes > CONTRACTED_MAX_NODE_FRACTION * n_pixels:
        return None
    grid = node.reshape(spatial)
    sources, targets, values = [], [], []
    for channel, axis in enumerate(axes):
        head = tuple(slice(0, -1) if a == axis else slice(None) for a in range(len(spatial)))
        tail = tuple(slice(1, None) if a == axis else slice(None) for a in range(len(spatial)))
        u, v = grid[head].reshape(-1), grid[tail].reshape(-1)
        w = attractive[channel][head].reshape(-1)
        between = (u != v) & (w > 0)
        sources.append(u[between])
        targets.append(v[between])
        values.append(w[between])
    u, v = node[repulsive[0]], node[repulsive[1]]
    between = u != v
    sources.append(u[between])
    targets.append(v[between])
    values.append(-repulsive[2][between])  # mwatershed: negative = repulsive
    u, v, w = np.concatenate(sources), np.concatenate(targets), np.concatenate(values)
    order = np.argsort(-np.abs(w))  # mwatershed.cluster takes the edges in this order
    u, v, w = u[order], v[order], w[order]
    for _ in range(LEAF_ROUNDS):
        merged, count = _merge_leaves(u, v, w, n_nodes)
        before = n_nodes
        if count < n_nodes:
            node, u, v, w, n_nodes = _relabel_graph(merged, count, node, u, v, w)
        if count > (1.0 - LEAF_MIN_GAIN) * before:
            break
    u, v, w = _strongest_parallel_edges(u, v, w, n_nodes)
    if w.size > CONTRACTED_MAX_EDGE_FRACTION * (np.count_nonzero(attractive) + repulsive[2].size):
        return None
    edges = list(zip((w > 0).tolist(), u.tolist(), v.tolist()))
    pairs = mwatershed.cluster(edges)
    del edges
    root = np.arange(n_nodes, dtype=np.int64)
    if pairs:
        flat = np.fromiter(itertools.chain.from_iterable(pairs), np.int64, count=2 * len(pairs))
        root[flat[0::2]] = flat[1::2]
    # mwatershed picks a segment's representative in hash order, which changes from run to
    # run: name each segment by its first pixel (raster order) instead, so ids are reproducible
    first = np.full(n_nodes, n_pixels, np.int64)
    np.minimum.at(first, node, np.arange(n_pixels))
    segment_first = np.full(n_nodes, n_pixels, np.int64)
    np.minimum.at(segment_first, root, first)
    return (segment_first[root][node] + 1).reshape(spatial)  # 0 never names a segment


def _run_mwatershed(strengths, layout, strides, randomize_strides):
    """mwatershed on the non-negative ``strengths``: contracted where it pays, else agglom."""
    grid_strides = None if randomize_strides or all(s == 1 for s in strides) else strides
    labels = _run_mwatershed_contracted(strengths, layout, grid_strides)
    if labels is not None:
        return labels
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
