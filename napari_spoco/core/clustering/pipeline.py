"""``segment``: embeddings in, consecutive instance labels out."""

from __future__ import annotations

import numpy as np

from ..errors import SpocoInputError
from ..validation import check_clustering_params
from .components import cluster_per_component
from .consistency import consistency_labels
from .hdbscan_clustering import default_min_cluster_size, hdbscan_labels
from .meanshift import meanshift_labels
from .mutex_watershed import mutex_watershed
from .postprocess import (
    fill_from_neighbours,
    keep_foreground_segments,
    merge_close_clusters,
    relabel_consecutive,
    remove_small,
)

METHODS = ("mws", "hdbscan", "meanshift", "consistency")

#: A segment with no neighbouring segment (background, or outside the mask, all around) is a
#: whole object, small or cut by the image border, not a fragment: ``min_size`` removes it
#: only below this fraction of itself. Measured on StarDist 2D (docs/method.md): small and
#: border-cut nuclei were the objects the default segmentation lost.
ISOLATED_MIN_SIZE_FRACTION = 0.25

#: Methods that cluster each connected piece of the predicted foreground on its own: over a
#: whole image they merge distant objects whose means the loss never pushed apart.
PER_COMPONENT_METHODS = ("hdbscan", "meanshift")

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
    foreground: np.ndarray | None = None,
    foreground_threshold: float = 0.5,
    foreground_crop: bool = True,
    min_size: int | str = "auto",
    merge: bool | str = False,
    fill: bool | None = None,
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
        Cluster only these pixels; the others get 0.
    foreground : ndarray of float, optional
        Foreground probability (the model's foreground head). For mws and consistency,
        segments whose mean probability is at most ``foreground_threshold`` are background
        and become 0; the objects keep the boundaries the embeddings give them.
        (Thresholding the probability into a mask instead carries the head's uncertainty at
        object borders into the objects: SBD 0.33 vs 0.47 on StarDist nuclei,
        docs/method.md.) For hdbscan and meanshift, the pixels above the threshold are
        clustered one connected component at a time (``PER_COMPONENT_METHODS``).
    foreground_threshold : float
        See ``foreground``.
    foreground_crop : bool
        Also remove the kept segments' pixels whose probability is at most the threshold
        (``postprocess.keep_foreground_segments``): segments spill a few pixels into the
        unlabeled background around them, where the head is sharper.
    min_size : int or "auto"
        Segments smaller than this (pixels) become 0 (or are filled, see ``fill``). For
        ``"hdbscan"`` it is also the default ``min_cluster_size`` when positive. ``"auto"``
        (default): a tenth of the typical segment size, measured as the size of the segment
        the median pixel lies in, the largest segment (often the background) left out; mutex
        watershed fragments are far smaller than that. A model's checkpoint gives a better
        value from the painted objects (``core.segmentation.segmentation_settings``). A
        segment that touches no other segment is kept down to a quarter of ``min_size``
        (``ISOLATED_MIN_SIZE_FRACTION``): it is a small or border-cut object, not a fragment.
    merge : bool or "adjacent"
        Merge clusters whose mean embeddings are closer than ``delta_d``: ``True`` for any
        two clusters (reference behaviour), ``"adjacent"`` only for clusters that touch.
    fill : bool or None
        Give pixels left at 0 inside the mask (HDBSCAN noise, removed small segments,
        dropped clusters) the id of a neighbouring segment by a seeded watershed on the
        embedding gradient. None (default): fill when segments are removed for their size,
        so fragments join their object instead of leaving holes in it.
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

    Examples
    --------
    Two halves of a 16×16 image, far apart in embedding space, become two objects:

    >>> embeddings = np.zeros((2, 16, 16), np.float32)
    >>> embeddings[0, :, 8:] = 5.0
    >>> labels = segment(embeddings, "mws", min_size=0)
    >>> labels.shape, labels.dtype, np.unique(labels).tolist()
    ((16, 16), dtype('uint32'), [1, 2])
    >>> bool((labels[:, :8] == labels[0, 0]).all() and (labels[:, 8:] == labels[0, 8]).all())
    True
    """
    check_clustering_params(method, delta_v=delta_v, delta_d=delta_d,
                            foreground_threshold=foreground_threshold, **params)
    if method not in METHODS:
        raise SpocoInputError(f"Unknown clustering method {method!r}; use one of {METHODS}.")
    _check_params(method, params)
    if min_size != "auto" and (
        isinstance(min_size, (bool, str)) or not float(min_size).is_integer() or min_size < 0
    ):
        raise SpocoInputError(
            f"min_size must be a whole number of pixels >= 0 or 'auto', got {min_size!r}.")
    if merge not in (False, True, "adjacent"):
        raise SpocoInputError(f"merge must be False, True or 'adjacent', got {merge!r}.")
    embeddings = _check_embeddings(embeddings)
    spatial = embeddings.shape[1:]
    mask = _check_mask(mask, spatial)
    if foreground is not None:
        foreground = np.asarray(foreground, dtype=np.float32)
        if foreground.shape != tuple(spatial):
            raise SpocoInputError(
                f"The foreground probability has shape {foreground.shape} but the embeddings' "
                f"spatial shape is {tuple(spatial)}; predict both from the same image.")
    if mask is not None and not mask.any():
        return np.zeros(spatial, np.uint32)

    explicit_size = 0 if min_size == "auto" else int(min_size)
    per_component = foreground is not None and method in PER_COMPONENT_METHODS
    if per_component:
        region = foreground > foreground_threshold
        mask = region if mask is None else mask & region

        def cluster(crop, crop_mask):
            return _cluster(crop, method, delta_v, delta_d, crop_mask, explicit_size, params,
                            single_cluster=True)

        labels = cluster_per_component(cluster, embeddings, mask)
    else:
        labels = _cluster(embeddings, method, delta_v, delta_d, mask, explicit_size, params)
    if params.get("noise", "zero") == "fill":
        fill = True
    if merge:
        adjacent_only = merge == "adjacent"
        labels = merge_close_clusters(labels, embeddings, delta_d, adjacent_only=adjacent_only)
    if foreground is not None and not per_component:
        labels = keep_foreground_segments(labels, foreground, foreground_threshold,
                                          crop=foreground_crop)
        # fill may only give pixels of the kept objects (removed small pieces) to neighbours
        mask = labels > 0
    if min_size == "auto":
        min_size = auto_min_size(labels)
    if fill is None:
        fill = min_size > 0
    if min_size > 0:
        labels = remove_small(labels, min_size,
                              isolated_min_size=int(ISOLATED_MIN_SIZE_FRACTION * min_size))
    if fill:
        labels = fill_from_neighbours(labels, embeddings, mask)
    return relabel_consecutive(labels)


#: ``min_size="auto"`` keeps segments of at least this fraction of the typical segment size.
AUTO_MIN_SIZE_FRACTION = 0.1


def auto_min_size(labels: np.ndarray) -> int:
    """A tenth of the size of the segment the median pixel lies in (largest segment left out).

    Weighting by pixels makes the estimate blind to fragments, however many there are: they
    hold few pixels. Returns 0 when there are fewer than three segments.

    Examples
    --------
    >>> labels = np.zeros((100, 100), int)
    >>> labels[:50] = 1; labels[50:, :50] = 2; labels[50:, 50:] = 3; labels[0, :4] = 4
    >>> auto_min_size(labels)
    250
    """
    sizes = np.bincount(relabel_consecutive(labels).reshape(-1))[1:]
    sizes = np.sort(sizes[sizes > 0])[:-1]
    if sizes.size < 2:
        return 0
    cumulative = np.cumsum(sizes)
    typical = sizes[np.searchsorted(cumulative, cumulative[-1] / 2)]
    return int(AUTO_MIN_SIZE_FRACTION * typical)


def _cluster(embeddings, method, delta_v, delta_d, mask, min_size, params,
             single_cluster=False) -> np.ndarray:
    """One clustering call; ``single_cluster``: the pixels may all be one object."""
    if method == "mws":
        return mutex_watershed(embeddings, delta_d=delta_d, mask=mask, **params)
    if method == "hdbscan":
        params = dict(params)
        noise = params.pop("noise", "zero")
        if noise not in ("zero", "fill"):
            raise SpocoInputError(f"noise must be 'zero' or 'fill', got {noise!r}.")
        if params.get("min_cluster_size") is None and min_size > 0:
            params["min_cluster_size"] = min_size
        if single_cluster:
            smallest = params.get("min_cluster_size") or default_min_cluster_size(mask.ndim)
            if np.count_nonzero(mask) < 2 * smallest:
                return mask.astype(np.int64)  # too small to hold two clusters: one object
            # Every pixel of a foreground piece belongs to some object: a low density
            # requirement keeps HDBSCAN from calling object borders noise (min_samples =
            # min_cluster_size left half of a StarDist image's foreground as noise).
            if params.get("min_samples") is None:
                params["min_samples"] = max(2, smallest // 10)
        return hdbscan_labels(embeddings, delta_v=delta_v, mask=mask,
                              allow_single_cluster=single_cluster, **params)
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
