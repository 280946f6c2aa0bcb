"""Affinities between pixels from their embeddings, on a grid graph with long-range edges.

An edge of channel ``c`` at pixel ``p`` joins ``p`` and ``p + offsets[c]`` (the convention of
both ``affogato`` and ``mwatershed``). The first ``n_attractive`` channels are attractive, the
others repulsive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SpocoInputError

# Added to attractive strengths as ATTRACTIVE_FLOOR / (1 + distance): every attractive edge
# keeps a strictly positive strength that still decreases with the embedding distance. Without
# it, neighbours more than 2 delta_d apart (a = 0) would tie with the masked repulsive edges
# (strength 0) and mwatershed would leave their pixels unlabeled; with it, both backends treat
# them like affogato treats zero attractive edges: merged last, unless a mutex forbids it.
ATTRACTIVE_FLOOR = 1e-6

LONG_RANGE = (3, 9, 27)
ANISOTROPIC_Z_LONG_RANGE = (1, 2, 4)


@dataclass(frozen=True)
class EdgeLayout:
    """Offsets of the edge channels and which of them are attractive.

    Attributes
    ----------
    offsets : tuple of tuple of int
        One offset per channel; channel ``c`` at pixel ``p`` joins ``p`` and ``p + offsets[c]``.
    n_attractive : int
        The first ``n_attractive`` channels are attractive, the others repulsive.
    """

    offsets: tuple[tuple[int, ...], ...]
    n_attractive: int

    @property
    def ndim(self) -> int:
        return len(self.offsets[0])


def default_edge_layout(ndim: int, anisotropic: bool = False) -> EdgeLayout:
    """The paper's offsets: nearest neighbours attract, 3, 9 and 27 pixels along each axis repel.

    Parameters
    ----------
    ndim : int
        2 or 3 spatial dimensions.
    anisotropic : bool
        For 3D data with thick z slices: the repulsive z offsets become 1, 2 and 4 slices
        instead of 3, 9 and 27 (a 27-slice jump would leave most stacks).

    Returns
    -------
    EdgeLayout
    """
    if ndim not in (2, 3):
        raise SpocoInputError(f"Embeddings must have 2 or 3 spatial dimensions, got {ndim}.")

    def axis_offset(axis: int, distance: int) -> tuple[int, ...]:
        offset = [0] * ndim
        offset[axis] = distance
        return tuple(offset)

    attractive = [axis_offset(axis, 1) for axis in range(ndim)]
    repulsive = []
    for scale_index, distance in enumerate(LONG_RANGE):
        for axis in range(ndim):
            if anisotropic and ndim == 3 and axis == 0:
                repulsive.append(axis_offset(0, ANISOTROPIC_Z_LONG_RANGE[scale_index]))
            else:
                repulsive.append(axis_offset(axis, distance))
    return EdgeLayout(tuple(attractive + repulsive), len(attractive))


def check_edge_layout(offsets, n_attractive: int, ndim: int) -> EdgeLayout:
    """Validate user offsets and turn them into an :class:`EdgeLayout`."""
    try:
        offsets = tuple(tuple(int(v) for v in offset) for offset in offsets)
    except (TypeError, ValueError):
        raise SpocoInputError(
            "offsets must be a sequence of integer tuples, one per edge channel, "
            "e.g. [(1, 0), (0, 1), (3, 0), (0, 3)]."
        ) from None
    if not offsets or any(len(offset) != ndim for offset in offsets):
        raise SpocoInputError(
            f"Every offset must have {ndim} entries (one per spatial axis of the embeddings); "
            f"got {list(offsets)}."
        )
    if any(not any(offset) for offset in offsets):
        raise SpocoInputError("An offset of all zeros joins a pixel to itself; remove it.")
    if not 1 <= n_attractive <= len(offsets):
        raise SpocoInputError(
            f"n_attractive must be between 1 and the number of offsets ({len(offsets)}), "
            f"got {n_attractive}: the first n_attractive offsets are the attractive ones."
        )
    return EdgeLayout(offsets, int(n_attractive))


def edge_slices(shape, offset, stride=None):
    """Slices selecting the pixels ``p`` (source) and ``p + offset`` (target) of valid edges.

    With ``stride``, only sources on the grid ``p % stride == 0`` are kept (affogato's
    deterministic strides).
    """
    source, target = [], []
    for axis, (size, shift) in enumerate(zip(shape, offset)):
        step = 1 if stride is None else int(stride[axis])
        start = max(0, -shift)
        if step > 1:
            start = -(-start // step) * step  # first grid point at or after start
        stop = size - max(0, shift)
        source.append(slice(start, stop, step))
        target.append(slice(start + shift, stop + shift, step))
    return tuple(source), tuple(target)


def squared_distances(embeddings: np.ndarray, source, target) -> np.ndarray:
    """``‖e[source] − e[target]‖²`` for slices or flat index arrays, as float32.

    Loops over embedding channels so that no ``(E, ...)`` temporary is materialised.
    """
    out = None
    buffer = None
    for channel in embeddings:
        first = channel[source]
        if out is None:
            out = np.zeros(first.shape, np.float32)
            buffer = np.empty(first.shape, np.float32)
        np.subtract(first, channel[target], out=buffer)
        np.multiply(buffer, buffer, out=buffer)
        out += buffer
    return out


def affinity_from_squared_distance(squared: np.ndarray, delta_d: float) -> np.ndarray:
    """``a = max((2 delta_d − d) / (2 delta_d), 0)²`` in place on float32 squared distances.

    Returns the distances too (second value), which the attractive floor needs.
    """
    distance = np.sqrt(squared, out=squared)
    margin = 2.0 * delta_d
    affinity = np.subtract(margin, distance, dtype=np.float32)
    affinity /= margin
    np.maximum(affinity, 0.0, out=affinity)
    np.multiply(affinity, affinity, out=affinity)
    return affinity, distance


def affinities(embeddings: np.ndarray, offsets, delta_d: float = 2.0) -> np.ndarray:
    """Plain affinities ``a_ij`` for every offset, 0 where ``p + offset`` leaves the image.

    Parameters
    ----------
    embeddings : ndarray
        ``(E, [Z,] Y, X)`` float32.
    offsets : sequence of tuple of int
        One offset per output channel.
    delta_d : float
        The push margin of the loss; pixels ``2 delta_d`` apart or more have affinity 0.

    Returns
    -------
    ndarray
        ``(len(offsets), [Z,] Y, X)`` float32 in [0, 1].
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    spatial = embeddings.shape[1:]
    out = np.zeros((len(offsets),) + spatial, np.float32)
    for index, offset in enumerate(offsets):
        source, target = edge_slices(spatial, offset)
        affinity, _ = affinity_from_squared_distance(
            squared_distances(embeddings, source, target), delta_d
        )
        out[index][source] = affinity
    return out
