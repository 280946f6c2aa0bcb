"""``segment``: embeddings in, consecutive instance labels out."""

from __future__ import annotations

import numpy as np

from ..errors import SpocoInputError
from .consistency import consistency_labels
from .hdbscan_clustering import hdbscan_labels
from .meanshift import meanshift_labels
from .mutex_watershed import mutex_watershed
from .postprocess import (
    fill_from_neighbours,
    merge_close_clusters,
    relabel_consecutive,
    remove_small,
)

METHODS = ("mws", "hdbscan", "meanshift", "consistency")

_METHOD_PARAMS = {
    "mws": {"offsets", "n_attractive", "anisotropic", "strides", "randomize_strides", "seed",
            "backend"},
    "hdbscan": {"min_cluster_size", "min_samples", "max_samples", "seed", "noise"},
    "meanshift": {"bandwidth", "max_samples", "seed", "max_iter"},
    "consistency": {"embeddings_g", "iou_threshold", "n_anchors", "max_samples", "seed"},
}


def _check_embeddings(embeddings, name="embeddings") -> np.ndarray:
    embeddings = np.asarray(embeddings)
    if embeddings.ndim not in (3, 4):
        raise SpocoInputError(
            f"{name} must be (E, Y, X) or (E, Z, Y, X) with the embedding channels first; "
            f"got shape {embeddings.shape}. Move the channel axis to the front."
        )
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise SpocoInputError(
            f"{name} must be floating point (the network's output), got {embeddings.dtype}."
        )
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not np.isfinite(embeddings).all():
        raise SpocoInputError(
            f"{name} contain NaN or infinite values; check the model and the input image "
            "(a NaN pixel in the image gives NaN embeddings)."
        )
    return embeddings


def _check_mask(mask, spatial) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != tuple(spatial):
        raise SpocoInputError(
            f"The foreground mask has shape {mask.shape} but the embeddings' spatial shape is "
            f"{tuple(spatial)}; use a mask of the image the embeddings were predicted from."
        )
    return mask.astype(bool, copy=False)


def _check_params(method: str, params: dict) -> None:
    unknown = set(params) - _METHOD_PARAMS[method]
    if unknown:
        raise SpocoInputError(
            f"Unknown parameter(s) {sorted(unknown)} for method {method!r}; it accepts "
            f"{sorted(_METHOD_PARAMS[method])} besides delta_v, delta_d, mask, min_size, "
            "merge and fill."
        )


def segment(
    embeddings: np.ndarray,
    method: str = "mws",
    *,
    delta_v: float = 0.5,
    delta_d: float = 2.0,
    mask: np.ndarray | None = None,
    min_size: int = 0,
    merge: bool | str = False,
    fill: bool = False,
    **params,
) -> np.ndarray:
    """Turn pixel embeddings into instance labels.

    Parameters
    ----------
    embeddings : ndarray
        ``(E, [Z,] Y, X)`` float embeddings (f-network).
    method : {"mws", "hdbscan", "meanshift", "consistency"}
        ``"mws"``: mutex watershed on embedding affinities (fast, default).
        ``"hdbscan"``: density clustering, noise 0 (or filled: ``noise="fill"``).
        ``"meanshift"``: flat-kernel mean-shift with bandwidth ``delta_v``.
        ``"consistency"``: mean-shift clusters confirmed by ``embeddings_g`` (Algorithm 1).
    delta_v, delta_d : float
        The loss margins the model was trained with.
    mask : ndarray of bool, optional
        Foreground: cluster only these pixels; the others get 0.
    min_size : int
        Segments smaller than this (pixels) become 0. For ``"hdbscan"`` it is also the
        default ``min_cluster_size`` when positive.
    merge : bool or "adjacent"
        Merge clusters whose mean embeddings are closer than ``delta_d``: ``True`` for any
        two clusters (reference behaviour), ``"adjacent"`` only for clusters that touch.
    fill : bool
        Give pixels left at 0 inside the mask (HDBSCAN noise, removed small segments,
        dropped clusters) the id of a neighbouring segment by a seeded watershed on the
        embedding gradient.
    **params
        Method options. mws: ``offsets``, ``n_attractive``, ``anisotropic``, ``strides``,
        ``randomize_strides``, ``seed``, ``backend`` (see ``mutex_watershed``). hdbscan:
        ``min_cluster_size``, ``min_samples``, ``max_samples``, ``seed``,
        ``noise="zero"|"fill"``. meanshift: ``bandwidth``, ``max_samples``, ``seed``,
        ``max_iter``. consistency: ``embeddings_g`` (required), ``iou_threshold`` (0.6),
        ``n_anchors`` (100), ``max_samples``, ``seed``.

    Returns
    -------
    ndarray of uint32
        Spatial shape; 0 = no object, objects numbered 1..n consecutively.
    """
    if method not in METHODS:
        raise SpocoInputError(f"Unknown clustering method {method!r}; use one of {METHODS}.")
    _check_params(method, params)
    if delta_v <= 0 or delta_d <= 0:
        raise SpocoInputError(
            f"delta_v and delta_d must be positive (the training margins, default 0.5 and "
            f"2.0); got {delta_v} and {delta_d}."
        )
    if isinstance(min_size, bool) or not float(min_size).is_integer() or min_size < 0:
        raise SpocoInputError(f"min_size must be a whole number of pixels >= 0, got {min_size!r}.")
    if merge not in (False, True, "adjacent"):
        raise SpocoInputError(f"merge must be False, True or 'adjacent', got {merge!r}.")
    embeddings = _check_embeddings(embeddings)
    spatial = embeddings.shape[1:]
    mask = _check_mask(mask, spatial)
    if mask is not None and not mask.any():
        return np.zeros(spatial, np.uint32)

    labels = _cluster(embeddings, method, delta_v, delta_d, mask, min_size, params)
    if params.get("noise", "zero") == "fill":
        fill = True
    if merge:
        adjacent_only = merge == "adjacent"
        labels = merge_close_clusters(labels, embeddings, delta_d, adjacent_only=adjacent_only)
    if min_size > 0:
        labels = remove_small(labels, min_size)
    if fill:
        labels = fill_from_neighbours(labels, embeddings, mask)
    return relabel_consecutive(labels)


def _cluster(embeddings, method, delta_v, delta_d, mask, min_size, params) -> np.ndarray:
    if method == "mws":
        return mutex_watershed(embeddings, delta_d=delta_d, mask=mask, **params)
    if method == "hdbscan":
        params = dict(params)
        noise = params.pop("noise", "zero")
        if noise not in ("zero", "fill"):
            raise SpocoInputError(f"noise must be 'zero' or 'fill', got {noise!r}.")
        if params.get("min_cluster_size") is None and min_size > 0:
            params["min_cluster_size"] = min_size
        return hdbscan_labels(embeddings, delta_v=delta_v, mask=mask, **params)
    if method == "meanshift":
        params = dict(params)
        bandwidth = params.pop("bandwidth", delta_v)
        return meanshift_labels(embeddings, bandwidth=bandwidth, mask=mask, **params)
    params = dict(params)
    if params.get("embeddings_g") is None:
        raise SpocoInputError(
            "Consistency clustering needs embeddings_g: the momentum network g's embeddings "
            "of a second augmented view of the same image (same shape as the embeddings)."
        )
    embeddings_g = _check_embeddings(params.pop("embeddings_g"), "embeddings_g")
    if embeddings_g.shape != embeddings.shape:
        raise SpocoInputError(
            f"embeddings_g {embeddings_g.shape} must have the shape of the embeddings "
            f"{embeddings.shape}: predict both from the same image."
        )
    return consistency_labels(embeddings, embeddings_g, delta_v=delta_v, mask=mask, **params)
