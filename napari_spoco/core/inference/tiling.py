"""Tile layouts for prediction: where tiles go and how their outputs are blended.

A layout is separable: along each axis the tiles start on a grid that is a multiple of the
network's pooling factor, so every tile sees the same pooling grid as the whole image would and
tiles agree in their interiors. Each tile's blending window is the product of one 1D profile per
axis; a profile is 0 over a margin at the tile's cut edge (where zero padding there corrupts the
output), a raised-cosine ramp over the rest of the overlap, and 1 elsewhere. Sides that lie on
the image border keep weight 1 up to the border. With a margin at least the network's context
(half its receptive field, :func:`.prediction.network_context`) no output pixel that gets weight
depends on the cut, so tiles agree exactly with a whole-image pass; the default margin, a
quarter of the overlap, is for networks that do not state their context.

Because windows are separable, the sum of all windows is the product of per-axis sums, so each
1D profile is divided by its axis sum up front. The blended output is then a plain sum of tile
contributions: no weight image has to be stored and tiles may be added in any order, which is
what lets prediction write straight into a zarr array with memory bounded by the tile.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import SpocoInputError


def _per_axis(value, ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * ndim
    values = tuple(int(v) for v in value)
    if len(values) != ndim:
        raise SpocoInputError(
            f"{name} {values} has {len(values)} entries but the image has {ndim} spatial axes; "
            f"give one value or {ndim} values."
        )
    return values


def tile_starts(size: int, tile: int, step: int, multiple: int) -> list[int]:
    """Start positions of tiles covering ``range(size)`` along one axis.

    Regular tiles start every ``step`` pixels; the last one starts at the largest multiple of
    ``multiple`` that still leaves ``tile`` pixels, and runs to the end of the axis (so it can
    be up to ``multiple - 1`` pixels longer than ``tile``).
    """
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    last = (size - tile) // multiple * multiple
    if last > starts[-1]:
        starts.append(last)
    return starts


def blend_profile(
    length: int, overlap: int, ramp_before: bool, ramp_after: bool, margin: int | None = None
) -> np.ndarray:
    """1D blending window of a tile: 0 on ``margin`` pixels of an overlap, then a cosine ramp.

    ``margin`` (default a quarter of the overlap, at most half of it) is the zero-weight width
    at a cut side; the ramp fills the ``overlap − 2·margin`` pixels between the two margins.
    """
    weight = np.ones(length, dtype=np.float64)
    margin = overlap // 4 if margin is None else min(int(margin), overlap // 2)
    ramp = overlap - 2 * margin
    # Raised cosine sampled at pixel centres: strictly between 0 and 1 on the ramp.
    rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp) if ramp else np.ones(0)
    for side, wanted in ((0, ramp_before), (1, ramp_after)):
        if not wanted:
            continue
        edge = np.concatenate([np.zeros(margin), rise])[: length]
        if side == 0:
            weight[: edge.size] = np.minimum(weight[: edge.size], edge)
        else:
            weight[length - edge.size:] = np.minimum(weight[length - edge.size:], edge[::-1])
    return weight


@dataclass(frozen=True)
class TileLayout:
    """Tiles covering an image and their normalised blending windows.

    Attributes
    ----------
    shape : tuple of int
        Spatial shape of the image.
    tile_shape : tuple of int
        Nominal tile shape (clipped to the image, rounded up to the pooling multiple).
    overlap : tuple of int
        Overlap of neighbouring regular tiles per axis.
    starts, stops : tuple of tuple of int
        Tile extents per axis.
    weights : tuple of tuple of numpy.ndarray
        Per axis and tile, the 1D window divided by the per-axis window sum (float32).
    """

    shape: tuple[int, ...]
    tile_shape: tuple[int, ...]
    overlap: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]
    stops: tuple[tuple[int, ...], ...]
    weights: tuple[tuple[np.ndarray, ...], ...] = field(repr=False)

    def __len__(self) -> int:
        return math.prod(len(s) for s in self.starts)

    def tiles(self) -> Iterator[tuple[tuple[slice, ...], tuple[np.ndarray, ...]]]:
        """Yield ``(spatial slices, per-axis normalised 1D weights)`` in raster order."""
        for index in itertools.product(*(range(len(s)) for s in self.starts)):
            slices = tuple(
                slice(self.starts[a][i], self.stops[a][i]) for a, i in enumerate(index)
            )
            yield slices, tuple(self.weights[a][i] for a, i in enumerate(index))


def plan_tiles(
    shape: Sequence[int],
    tile_shape: int | Sequence[int],
    overlap: int | Sequence[int],
    multiple: int | Sequence[int] = 1,
    margin: int | Sequence[int] | None = None,
) -> TileLayout:
    """Lay out overlapping tiles over an image of spatial ``shape``.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the image.
    tile_shape : int or sequence of int
        Wanted tile shape; clipped to the image and rounded up to ``multiple``.
    overlap : int or sequence of int
        Wanted overlap of neighbouring tiles; at most half a tile. The actual overlap is this
        rounded up so that the step between tiles is a multiple of ``multiple``.
    multiple : int or sequence of int
        Pooling factor of the network per axis: tile starts are multiples of it.
    margin : int or sequence of int, optional
        Zero-weight width at each cut side of a tile (see :func:`blend_profile`); default a
        quarter of the overlap. Tiles are exact when it is at least the network's context.

    Returns
    -------
    TileLayout
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    tile_shape = _per_axis(tile_shape, ndim, "tile_shape")
    overlap = _per_axis(overlap, ndim, "overlap")
    multiple = _per_axis(multiple, ndim, "multiple")
    margins = (None,) * ndim if margin is None else _per_axis(margin, ndim, "margin")
    if min(tile_shape) < 1 or min(overlap) < 0 or min(m or 0 for m in margins) < 0:
        raise SpocoInputError(
            f"tile_shape must be positive and overlap non-negative, got tile_shape={tile_shape}"
            f" and overlap={overlap} (margin={margin})."
        )
    tiles, overlaps, starts, stops, weights = [], [], [], [], []
    for size, tile, over, mult, edge in zip(shape, tile_shape, overlap, multiple, margins):
        tile = math.ceil(tile / mult) * mult
        over = min(over, tile // 2)
        if tile - over < mult:  # tiny tiles: grow them so that consecutive tiles overlap
            tile = math.ceil((over + mult) / mult) * mult
        tile = min(tile, size)
        step = max(mult, (tile - over) // mult * mult)
        axis_starts = tile_starts(size, tile, step, mult)
        axis_stops = [s + tile for s in axis_starts[:-1]] + [size]
        actual = tile - step if len(axis_starts) > 1 else 0
        profiles = [
            blend_profile(stop - start, actual, start > 0, stop < size, edge)
            for start, stop in zip(axis_starts, axis_stops)
        ]
        total = np.zeros(size)
        for start, stop, profile in zip(axis_starts, axis_stops, profiles):
            total[start:stop] += profile
        # Holds by construction (overlap ≤ tile/2, margins ≤ overlap/2); a failure is a bug.
        assert total.min() > 0, "tile windows leave pixels uncovered"
        tiles.append(tile)
        overlaps.append(actual)
        starts.append(tuple(axis_starts))
        stops.append(tuple(axis_stops))
        weights.append(tuple(
            (profile / total[start:stop]).astype(np.float32)
            for start, stop, profile in zip(axis_starts, axis_stops, profiles)
        ))
    return TileLayout(shape, tuple(tiles), tuple(overlaps), tuple(starts), tuple(stops),
                      tuple(weights))


def window(weights: Sequence[np.ndarray]) -> np.ndarray:
    """The nD window of one tile: the outer product of its per-axis 1D weights."""
    result = weights[0]
    for axis_weights in weights[1:]:
        result = np.multiply.outer(result, axis_weights)
    return result
