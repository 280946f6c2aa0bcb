"""Which predicted object to paint next: per-segment uncertainty from f and g.

SPOCO trains two networks: f (Adam) and its momentum copy g (a moving average of f's
weights). Where the model has settled, f and g embed a pixel alike; where f is still moving,
they differ. The score of a predicted segment is the mean per-pixel embedding distance
``‖f(x) − g(x)‖`` inside it, in units of the push margin ``δd`` (docs/method.md, "Label this
next"). :func:`suggest_next` picks the most uncertain segment that is not painted yet.

Nothing here imports Qt or napari: the Data tab's "Suggest next" button and
``benchmarks/suggest_next.py`` call the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SpocoInputError

#: A segment with more than this fraction of its pixels painted (object or background) is
#: already annotated and never suggested.
MAX_PAINTED_FRACTION = 0.5


def embedding_disagreement(emb_f: np.ndarray, emb_g: np.ndarray,
                           delta_d: float = 2.0) -> np.ndarray:
    """Per-pixel distance between the embeddings of f and g, divided by ``delta_d``.

    Parameters
    ----------
    emb_f, emb_g : ndarray
        ``(E, *spatial)`` embeddings of f and g of the same image.
    delta_d : float
        The push margin the model was trained with: a distance of 1 separates two objects.

    Returns
    -------
    ndarray of float32
        Spatial shape.

    Examples
    --------
    >>> f = np.zeros((2, 2, 2), np.float32); g = f.copy(); g[0, 0, 0] = 4.0
    >>> embedding_disagreement(f, g, delta_d=2.0).tolist()
    [[2.0, 0.0], [0.0, 0.0]]
    """
    emb_f, emb_g = np.asarray(emb_f, np.float32), np.asarray(emb_g, np.float32)
    if emb_f.shape != emb_g.shape:
        raise SpocoInputError(
            f"The embeddings of f {emb_f.shape} and g {emb_g.shape} differ in shape; predict "
            "both networks on the same image.")
    if not delta_d > 0:
        raise SpocoInputError(f"delta_d must be positive, got {delta_d}.")
    return (np.sqrt(np.sum((emb_f - emb_g) ** 2, axis=0)) / float(delta_d)).astype(np.float32)


def segment_means(segments: np.ndarray, values: np.ndarray) -> dict[int, float]:
    """Mean of ``values`` inside every segment (id 0, no object, is left out).

    Examples
    --------
    >>> seg = np.array([[0, 1], [2, 2]]); val = np.array([[9.0, 1.0], [2.0, 4.0]])
    >>> segment_means(seg, val)
    {1: 1.0, 2: 3.0}
    """
    segments = np.asarray(segments).reshape(-1).astype(np.int64)
    values = np.asarray(values, np.float64).reshape(-1)
    if segments.shape != values.shape:
        raise SpocoInputError("segments and values must have the same shape.")
    sums = np.bincount(segments, weights=values)
    counts = np.bincount(segments)
    ids = np.nonzero(counts)[0]
    return {int(i): float(sums[i] / counts[i]) for i in ids if i != 0}


def segmentation_disagreement(segments: np.ndarray, other: np.ndarray) -> dict[int, float]:
    """``1 − best IoU`` of every segment with the segments of another segmentation.

    The other segmentation is, e.g., g's embeddings clustered with the same settings: a
    segment that g splits, merges or drops scores high.

    Examples
    --------
    >>> a = np.array([[1, 1, 2, 2]]); b = np.array([[1, 1, 1, 0]])
    >>> {k: round(v, 3) for k, v in segmentation_disagreement(a, b).items()}
    {1: 0.333, 2: 0.75}
    """
    from ..evaluation.metrics import overlaps

    segments, other = np.asarray(segments), np.asarray(other)
    if segments.shape != other.shape:
        raise SpocoInputError("Both segmentations must have the same shape.")
    table = overlaps(segments, other)  # label 0 is dropped on both sides
    best = np.zeros(table.gt_ids.size)
    np.maximum.at(best, table.pair_gt, table.iou())
    return {int(i): float(1.0 - b) for i, b in zip(table.gt_ids, best)}


@dataclass
class Suggestion:
    """The object to paint next, or why there is none.

    Attributes
    ----------
    segment_id : int or None
        Predicted segment to paint; None when nothing is left to suggest.
    centre : tuple of float or None
        A pixel of the segment nearest to its centroid (data coordinates; inside the segment
        even when it is not convex), where a viewer centres.
    score : float or None
        Its uncertainty score.
    reason : str
        What was suggested and why, or why nothing was.
    """

    segment_id: int | None
    centre: tuple | None
    score: float | None
    reason: str


def suggest_next(segments, scores: dict, painted_labels, *, background_id: int | None = None,
                 ignore_id: int | None = None,
                 max_painted_fraction: float = MAX_PAINTED_FRACTION) -> Suggestion:
    """The most uncertain predicted segment that is not painted yet.

    Parameters
    ----------
    segments : ndarray of int
        Predicted instances (0 = background, e.g. rejected by the foreground head).
    scores : dict of int to float
        Uncertainty of each segment (see :func:`uncertainty_scores`); NaN scores are skipped.
    painted_labels : ndarray of int
        The annotation layer (0 = unpainted). Painted objects and background strokes both
        count as painted; ``ignore_id`` pixels do not.
    background_id, ignore_id : int, optional
        The label convention of the annotations.
    max_painted_fraction : float
        Segments with more painted pixels than this are skipped.

    Returns
    -------
    Suggestion

    Examples
    --------
    >>> seg = np.zeros((6, 6), np.uint32); seg[:3, :3] = 1; seg[3:, 3:] = 2
    >>> painted = np.zeros((6, 6), np.uint32); painted[3:, 3:] = 7   # object 2 is painted
    >>> s = suggest_next(seg, {1: 0.2, 2: 0.9}, painted)
    >>> s.segment_id, s.centre
    (1, (1.0, 1.0))
    >>> suggest_next(seg, {1: 0.2, 2: 0.9}, np.ones((6, 6), np.uint32)).segment_id is None
    True
    """
    segments = np.asarray(segments)
    painted_labels = np.asarray(painted_labels)
    if segments.shape != painted_labels.shape:
        raise SpocoInputError(
            f"The segmentation {segments.shape} and the annotations {painted_labels.shape} "
            "differ in shape; segment the image the annotation layer belongs to.")
    flat = segments.reshape(-1).astype(np.int64)
    painted = painted_labels.reshape(-1) != 0
    if ignore_id is not None:
        painted &= painted_labels.reshape(-1) != ignore_id
    sizes = np.bincount(flat)
    painted_counts = np.bincount(flat, weights=painted, minlength=sizes.size)
    candidates = []
    n_painted = 0
    for segment_id, score in scores.items():
        segment_id = int(segment_id)
        if segment_id == 0 or segment_id >= sizes.size or sizes[segment_id] == 0:
            continue
        if painted_counts[segment_id] > max_painted_fraction * sizes[segment_id]:
            n_painted += 1
            continue
        if score is None or not np.isfinite(score):
            continue
        candidates.append((float(score), segment_id))
    if not candidates:
        if not scores or sizes.size <= 1 or not np.any(flat):
            reason = ("No predicted object to suggest: the segmentation is empty (only "
                      "background). Train longer or paint more objects and background.")
        else:
            reason = (f"Every predicted object is painted already ({n_painted} of them): train "
                      "on them, or check the segmentation for objects it missed.")
        return Suggestion(None, None, None, reason)
    score, segment_id = max(candidates)
    centre = _inner_centre(segments == segment_id)
    return Suggestion(segment_id, centre, score,
                      f"object {segment_id}: uncertainty {score:.2f} (highest of "
                      f"{len(candidates)} unpainted objects)")


def _inner_centre(mask: np.ndarray) -> tuple:
    """The pixel of ``mask`` nearest to its centroid (inside it even if it is not convex)."""
    points = np.argwhere(mask)
    centroid = points.mean(axis=0)
    nearest = points[np.argmin(((points - centroid) ** 2).sum(axis=1))]
    return tuple(float(c) for c in nearest)


@dataclass
class UncertaintyResult:
    """Segmentation and uncertainty of one image: what the dock shows and suggests from."""

    segments: np.ndarray
    scores: dict
    pixel_map: np.ndarray
    foreground: np.ndarray | None


def uncertainty_scores(model_source, image, *, channel_axis=None, device="cpu",
                       embeddings=None, foreground=None) -> UncertaintyResult:
    """Segment ``image`` with f and score every segment by the f/g disagreement.

    The segmentation is the one every front end makes (``predict_with_foreground`` →
    ``settings_for`` → ``segment_output``); the score of a segment is the mean of
    :func:`embedding_disagreement` of f and g inside it.

    Parameters
    ----------
    model_source : Trainer, LoadedModel or ModelSnapshot-like
        Needs ``model`` and ``momentum_model`` (or a ``build(momentum=...)`` method),
        ``normalization``, ``config`` and ``annotations``.
    image : array-like
        ``(C,) [Z,] Y, X`` raw image.
    embeddings, foreground : ndarray, optional
        f's prediction of ``image`` when it is at hand already (saves one prediction).
    """
    from .prediction import predict_embeddings, predict_with_foreground
    from .segmentation import segment_output, settings_for

    model_f, model_g = _networks(model_source)
    normalization = model_source.normalization
    if embeddings is None:
        embeddings, foreground = predict_with_foreground(
            model_f, image, normalization, channel_axis=channel_axis, device=device)
    emb_g = predict_embeddings(model_g, image, normalization, channel_axis=channel_axis,
                               device=device)
    settings = settings_for(model_source)
    segments = segment_output(embeddings, foreground, settings)
    pixel_map = embedding_disagreement(embeddings, emb_g, settings.delta_d)
    return UncertaintyResult(segments, segment_means(segments, pixel_map), pixel_map,
                             foreground)


def _networks(model_source):
    if hasattr(model_source, "build"):  # a ModelSnapshot of the dock
        return model_source.build(), model_source.build(momentum=True)
    g = getattr(model_source, "momentum_model", None)
    if g is None:
        raise SpocoInputError(
            "This model has no momentum network g, which the uncertainty needs; use a "
            "checkpoint written by napari-spoco training.")
    return model_source.model, g
