"""CRAC inference: the affinity head's explicit affinities, tiled, and the mutex watershed on them.

The edges are the mutex watershed's default layout (``clustering.affinities``), the same the
affinity head was trained on (``crac_loss.edge_offsets``); the edge strengths, the repulsive
edge strides and the backend call are those of ``clustering.mutex_watershed``, only the
affinities come from the head instead of from embedding distances.
"""

from __future__ import annotations

import numpy as np
import torch

from ..clustering.affinities import ATTRACTIVE_FLOOR, EdgeLayout, default_edge_layout, edge_slices
from ..clustering.mutex_watershed import (
    _affogato_available,
    _fit_layout,
    _kept_repulsive_edges,
    _label_unmerged_pixels,
    _resolve_strides,
    _run_affogato,
    _run_mwatershed,
)
from ..clustering.pipeline import ISOLATED_MIN_SIZE_FRACTION, auto_min_size
from ..clustering.postprocess import (
    fill_from_neighbours,
    keep_foreground_segments,
    relabel_consecutive,
    remove_small,
)
from ..errors import SpocoInputError


class AffinityHead(torch.nn.Module):
    """A view of a CRAC network whose output is its affinity probabilities.

    It carries the attributes ``prediction.predict_embeddings`` reads (``in_channels``,
    ``ndim``, ``out_channels``, ``required_multiple``, ``foreground`` = False), so the explicit
    affinities are predicted with the same tiling, blending and group-norm handling as
    embeddings.
    """

    def __init__(self, model):
        super().__init__()
        if not getattr(model, "affinity_channels", 0):
            raise SpocoInputError(
                "This network has no affinity head; train it with method 'crac' or 'both'.")
        self.model = model
        self.in_channels, self.ndim = model.in_channels, model.ndim
        self.out_channels = model.affinity_channels
        self.required_multiple = model.required_multiple
        self.receptive_field = model.receptive_field  # exact default tiles, as for embeddings
        # the grid the network works on; the affinity maps are resampled back like embeddings
        # (their offsets stay those of the network's grid: an approximation at scale ≠ 1)
        self.input_scale = getattr(model, "input_scale", None) or 1.0
        # group norm's statistics from the same tiles as the embeddings'
        self.statistics_tile = getattr(model, "statistics_tile", None)
        self.foreground = False

    def forward(self, x):
        _, logits = self.model(x, with_affinities=True)
        return torch.sigmoid(logits)


def predict_affinities(model, image, normalization=None, **kwargs) -> np.ndarray:
    """Explicit affinities ``(n_offsets, *spatial)`` in [0, 1] of a network with an affinity head.

    ``kwargs`` are those of ``prediction.predict_embeddings`` (tiling, device, ...).
    """
    from .prediction import predict_embeddings

    kwargs.pop("foreground_out", None)
    return predict_embeddings(AffinityHead(model), image, normalization, **kwargs)


def affinity_layout(n_channels: int, ndim: int, anisotropic: bool = False) -> EdgeLayout:
    """The default edge layout, checked against the number of affinity channels."""
    layout = default_edge_layout(ndim, anisotropic)
    if len(layout.offsets) != n_channels:
        raise SpocoInputError(
            f"The affinities have {n_channels} channels but the {ndim}D edge layout has "
            f"{len(layout.offsets)} offsets; give the affinity head's output unchanged.")
    return layout


def mutex_watershed_affinities(affinities: np.ndarray, *, mask=None, anisotropic: bool = False,
                               strides=None, randomize_strides: bool = False,
                               seed: int | None = 0, backend: str = "auto") -> np.ndarray:
    """Mutex watershed from given affinities (1 = same object) on the default edge layout.

    Attractive channels get strength ``a`` (plus a tiny floor so that no attractive edge ties
    with a dropped repulsive one), kept repulsive edges ``1 − a``, as in
    ``clustering.mutex_watershed.edge_strengths``.

    Examples
    --------
    Affinities of two halves (1 inside each, 0 across) give the two halves back:

    >>> from napari_spoco.core.clustering.affinities import affinities
    >>> emb = np.zeros((1, 32, 32), np.float32); emb[0, :, 16:] = 10.0
    >>> aff = affinities(emb, default_edge_layout(2).offsets)
    >>> labels = mutex_watershed_affinities(aff, strides=1)
    >>> len(np.unique(labels[:, :16])), len(np.unique(labels[:, 16:])), len(np.unique(labels))
    (1, 1, 2)
    """
    affinities = np.asarray(affinities, dtype=np.float32)
    ndim = affinities.ndim - 1
    spatial = affinities.shape[1:]
    full = affinity_layout(affinities.shape[0], ndim, anisotropic)
    layout = _fit_layout(full, spatial)
    kept = [full.offsets.index(offset) for offset in layout.offsets]
    strides = _resolve_strides(strides, ndim, anisotropic)
    if backend == "auto":
        backend = "affogato" if _affogato_available() else "mwatershed"
    rng = np.random.default_rng(seed)
    strengths = np.zeros((len(layout.offsets),) + spatial, np.float64)
    for channel, (index, offset) in enumerate(zip(kept, layout.offsets)):
        value = affinities[index]
        if channel < layout.n_attractive:
            strengths[channel] = value + ATTRACTIVE_FLOOR
        else:
            source, _ = _kept_repulsive_edges(spatial, offset, strides, randomize_strides, rng)
            view = strengths[channel] if isinstance(source, tuple) \
                else strengths[channel].reshape(-1)
            flat = value if isinstance(source, tuple) else value.reshape(-1)
            view[source] = 1.0 - flat[source]
    # edges leaving the image (the head still predicts a value there) or touching pixels
    # outside the mask must stay 0, as in clustering.mutex_watershed.edge_strengths
    inside = None if mask is None else np.asarray(mask, bool)
    for channel, offset in enumerate(layout.offsets):
        source, target = edge_slices(spatial, offset)
        valid = np.zeros(spatial, bool)
        valid[source] = True if inside is None else inside[source] & inside[target]
        strengths[channel] *= valid
    mask = inside
    if backend == "affogato":
        labels = _run_affogato(strengths, layout, mask)
    else:
        labels = _run_mwatershed(strengths, layout, strides, randomize_strides)
    return _label_unmerged_pixels(labels, mask)


def segment_affinities(affinities: np.ndarray, settings, foreground=None,
                       mask=None) -> np.ndarray:
    """Instances from explicit affinities with a model's ``SegmentationSettings``.

    The same steps as ``clustering.segment`` after its clustering: segments outside the
    foreground dropped (when the settings use it), small pieces removed and given to a
    neighbour, ids made consecutive.

    Returns
    -------
    ndarray of uint32
    """
    affinities = np.asarray(affinities, dtype=np.float32)
    spatial = affinities.shape[1:]
    user_mask = None if mask is None else np.asarray(mask, bool)
    if user_mask is not None and user_mask.shape != spatial:
        raise SpocoInputError(
            f"The mask has shape {user_mask.shape} but the affinities' spatial shape is "
            f"{spatial}; give a mask of the image's shape.")
    params = {key: settings.params[key] for key in
              ("anisotropic", "strides", "randomize_strides", "seed", "backend")
              if key in settings.params}
    labels = mutex_watershed_affinities(affinities, mask=user_mask, **params)
    region = user_mask
    if settings.use_foreground and foreground is not None:
        labels = keep_foreground_segments(labels, np.asarray(foreground, np.float32),
                                          settings.foreground_threshold,
                                          crop=settings.foreground_crop)
        region = labels > 0
    min_size = settings.min_size
    if min_size == "auto":
        min_size = auto_min_size(labels)
    if min_size > 0:
        labels = remove_small(labels, min_size,
                              isolated_min_size=int(ISOLATED_MIN_SIZE_FRACTION * min_size))
    if settings.fill:
        # the attractive affinities as an image: low across boundaries, like an edge map
        labels = fill_from_neighbours(labels, affinities[: affinities.ndim - 1], region)
    return relabel_consecutive(labels).astype(np.uint32)
