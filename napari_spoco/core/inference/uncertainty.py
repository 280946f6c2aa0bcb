"""Which predicted object to paint next: per-segment uncertainty from f and g.

SPOCO trains two networks: f (Adam) and its momentum copy g (a moving average of f's
weights). Where the model has settled, f and g embed a pixel alike; where f is still moving,
they differ. The score of a predicted segment is the mean per-pixel embedding distance
``‖f(x) − g(x)‖`` inside it, in units of the push margin ``δd`` (docs/method.md, "Label this
next"). A second signal needs no g: :func:`augmentation_instability` segments the image again
after a few photometric jitters of the training augmentation and scores each segment by how
much it changes (``1 − best IoU``). :func:`uncertainty_scores` computes either
(``signal="momentum"`` or ``"augmentation"``); :func:`suggest_next` picks the most uncertain
segment that is not painted yet.

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

#: The per-segment signals :func:`uncertainty_scores` can compute.
SIGNALS = ("momentum", "augmentation")

#: The dock's and the benchmark's signal. Augmentation, because on StarDist 2D (3 seeds,
#: ``benchmarks/suggest_next.py``) its score followed the segment error (Spearman 0.53-0.64)
#: where f/g disagreement did not (-0.05), and it reached random picking's SBD with 7.7 instead
#: of 10 painted objects (docs/results.md, "Label this next").
DEFAULT_SIGNAL = "augmentation"

#: Photometric draws per image for the augmentation signal: each costs one prediction and one
#: clustering of the whole image.
N_AUGMENTATIONS = 4


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


def augmentation_instability(model, image, segments, settings, *, normalization=None,
                             channel_axis=None, device="cpu", n_augmentations=N_AUGMENTATIONS,
                             seed=0, augment_config=None, anisotropic=False):
    """How much each segment changes when the image is photometrically jittered.

    The normalised image is jittered ``n_augmentations`` times by the training's photometric
    augmentation (``augment.random_photometric``: contrast, brightness, gamma, blur, noise),
    each copy is predicted by ``model`` and segmented with ``settings``. A segment's score is
    the mean over the copies of ``1 − best IoU`` with the copy's segments
    (:func:`segmentation_disagreement`): 0 when every copy reproduces it, 1 when none has
    anything overlapping it. Unlike the f/g disagreement, this does not depend on how far the
    momentum network g has caught up with f.

    Parameters
    ----------
    model : torch.nn.Module
        The network that made ``segments`` (f).
    image : array-like
        ``(C,) [Z,] Y, X`` raw image.
    segments : ndarray of int
        Its segmentation of ``image`` (0 = no object).
    settings : SegmentationSettings
        The settings ``segments`` was made with (``settings_for(model_source)``).
    normalization : Normalization or None
        The statistics the network was trained with; None if ``image`` is normalised already.
    channel_axis : int or None
        Channel axis of ``image``.
    device : str
        Where to predict.
    n_augmentations : int
        Photometric draws (≥ 1); each costs one prediction and one clustering.
    seed : int
        Seeds the draws, so a score is reproducible.
    augment_config : AugmentConfig, optional
        Strengths and probabilities of the jitters; default: the training's.
    anisotropic : bool
        3D only: blur in-plane only.

    Returns
    -------
    scores : dict of int to float
        Score of every segment of ``segments`` (id 0 left out).
    pixel_map : ndarray of float32
        Per pixel, the norm of the embeddings' standard deviation over the copies divided by
        ``settings.delta_d`` (what the Data tab can show as a map).

    Examples
    --------
    >>> import torch
    >>> from napari_spoco.core.inference.segmentation import SegmentationSettings
    >>> class Identity(torch.nn.Module):  # "embeds" a pixel by its intensity
    ...     def forward(self, x):
    ...         return x
    >>> image = np.zeros((1, 16, 16), np.float32); image[0, 2:8, 2:8] = 4; image[0, 9:15, 9:15] = 8
    >>> settings = SegmentationSettings(method="mws", delta_d=2.0, min_size=4)
    >>> segments = np.zeros((16, 16), np.uint32); segments[2:8, 2:8] = 1; segments[9:15, 9:15] = 2
    >>> scores, pixel_map = augmentation_instability(Identity(), image, segments, settings,
    ...                                              channel_axis=0, n_augmentations=2)
    >>> sorted(scores), pixel_map.shape
    ([1, 2], (16, 16))
    """
    from ..model.normalization import channels_first
    from ..training.augment import AugmentConfig, random_photometric
    from .prediction import _check_layout, model_ndim, predict_with_foreground
    from .segmentation import segment_output

    if int(n_augmentations) < 1:
        raise SpocoInputError(
            f"n_augmentations must be at least 1, got {n_augmentations}; each is one jittered "
            "copy of the image that is segmented again.")
    segments = np.asarray(segments)
    raw = np.asarray(image[...])
    ndim = model_ndim(model, raw.ndim, channel_axis)
    channel_axis = _check_layout(raw.shape, ndim, channel_axis)
    if raw.shape[-ndim:] != segments.shape:
        raise SpocoInputError(
            f"The segmentation {segments.shape} and the image {raw.shape} differ in shape; "
            "score the segmentation of this image.")
    normalised = raw.astype(np.float32) if normalization is None else \
        normalization.apply(raw, channel_axis)
    normalised = np.ascontiguousarray(channels_first(normalised, channel_axis), np.float32)
    rng = np.random.default_rng(seed)
    config = augment_config or AugmentConfig()
    totals: dict[int, float] = {i: 0.0 for i in np.unique(segments).tolist() if i != 0}
    mean = square = None
    for _ in range(int(n_augmentations)):
        jittered = random_photometric(normalised, rng, anisotropic=anisotropic, config=config)
        emb, fg = predict_with_foreground(model, jittered, None, channel_axis=0, device=device)
        for segment_id, value in segmentation_disagreement(
                segments, segment_output(emb, fg, settings)).items():
            totals[segment_id] += value
        emb = emb.astype(np.float64)
        mean = emb if mean is None else mean + emb
        square = emb**2 if square is None else square + emb**2
    n = float(n_augmentations)
    variance = np.maximum(square / n - (mean / n) ** 2, 0.0)
    pixel_map = (np.sqrt(variance.sum(axis=0)) / float(settings.delta_d)).astype(np.float32)
    return {i: v / n for i, v in totals.items()}, pixel_map


def uncertainty_scores(model_source, image, *, channel_axis=None, device="cpu",
                       embeddings=None, foreground=None, signal: str = DEFAULT_SIGNAL,
                       n_augmentations: int = N_AUGMENTATIONS, seed: int = 0
                       ) -> UncertaintyResult:
    """Segment ``image`` with f and score every segment by its uncertainty.

    The segmentation is the one every front end makes (``predict_with_foreground`` →
    ``settings_for`` → ``segment_output``). The score of a segment is, by ``signal``:

    - ``"momentum"``: the mean of :func:`embedding_disagreement` of f and g inside it;
    - ``"augmentation"``: :func:`augmentation_instability`, ``1 − best IoU`` of the segment
      with the segmentations of photometrically jittered copies (needs no g).

    Parameters
    ----------
    model_source : Trainer, LoadedModel or ModelSnapshot-like
        Needs ``model`` (and, for ``"momentum"``, ``momentum_model`` or a
        ``build(momentum=...)`` method), ``normalization``, ``config`` and ``annotations``.
    image : array-like
        ``(C,) [Z,] Y, X`` raw image.
    embeddings, foreground : ndarray, optional
        f's prediction of ``image`` when it is at hand already (saves one prediction).
    signal : {"momentum", "augmentation"}
        Which score to compute.
    n_augmentations, seed : int
        ``"augmentation"`` only: photometric draws and their seed.

    Returns
    -------
    UncertaintyResult

    Examples
    --------
    >>> from napari_spoco.core.training import Trainer, TrainingConfig
    >>> image = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    >>> labels = np.zeros((32, 32), np.uint32); labels[4:12, 4:12] = 1; labels[16:28, 16:28] = 2
    >>> config = TrainingConfig(features=(4, 8), num_groups=2, iterations=0, device="cpu",
    ...                         autosave_seconds=None)
    >>> result = uncertainty_scores(Trainer([(image, labels)], config), image,
    ...                             signal="augmentation", n_augmentations=1)
    >>> set(result.scores) == set(np.unique(result.segments).tolist()) - {0}
    True
    """
    from .prediction import predict_embeddings, predict_with_foreground
    from .segmentation import segment_output, settings_for

    if signal not in SIGNALS:
        raise SpocoInputError(
            f"Unknown uncertainty signal {signal!r}; choose one of {', '.join(SIGNALS)}.")
    if signal == "momentum":
        model_f, model_g = _networks(model_source)
    else:
        model_f, model_g = _network_f(model_source), None
    normalization = model_source.normalization
    if embeddings is None:
        embeddings, foreground = predict_with_foreground(
            model_f, image, normalization, channel_axis=channel_axis, device=device)
    settings = settings_for(model_source)
    segments = segment_output(embeddings, foreground, settings)
    if signal == "augmentation":
        config = getattr(model_source, "config", None)  # TrainingConfig, or a checkpoint's dict
        anisotropic = bool(config.get("anisotropic") if isinstance(config, dict)
                           else getattr(config, "anisotropic", False))
        scores, pixel_map = augmentation_instability(
            model_f, image, segments, settings, normalization=normalization,
            channel_axis=channel_axis, device=device, n_augmentations=n_augmentations,
            seed=seed, anisotropic=anisotropic)
        return UncertaintyResult(segments, scores, pixel_map, foreground)
    emb_g = predict_embeddings(model_g, image, normalization, channel_axis=channel_axis,
                               device=device)
    pixel_map = embedding_disagreement(embeddings, emb_g, settings.delta_d)
    return UncertaintyResult(segments, segment_means(segments, pixel_map), pixel_map,
                             foreground)


def _network_f(model_source):
    if hasattr(model_source, "build"):  # a ModelSnapshot of the dock
        return model_source.build()
    return model_source.model


def _networks(model_source):
    if hasattr(model_source, "build"):  # a ModelSnapshot of the dock
        return model_source.build(), model_source.build(momentum=True)
    g = getattr(model_source, "momentum_model", None)
    if g is None:
        raise SpocoInputError(
            "This model has no momentum network g, which the uncertainty needs; use a "
            "checkpoint written by napari-spoco training.")
    return model_source.model, g
