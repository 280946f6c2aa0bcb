"""From a trained model's output to instances, with every clustering decision made here once.

The command line, the napari dock (live preview and Segment tab), the demo and the benchmarks
all call :func:`segmentation_settings` with what the checkpoint records (training config,
architecture, annotation summary) and :func:`segment_output` with the prediction, so the same
checkpoint gives the same segmentation whatever front end runs it.

Decisions, and why (docs/method.md, "Segmentation defaults"):

- **Margins**: the ``delta_v``/``delta_d`` the network was trained with.
- **Foreground**: with a foreground head whose training saw background (painted background
  strokes, or label 0 in dense mode), segments whose mean foreground probability is at most
  0.5 are background and dropped, so the background cannot come out as fragments. Otherwise
  every segment is kept, and the user is told why.
- **Minimum size**: a fifth of the median painted object; without an annotation summary, from
  the segmentation itself (``clustering.segment``'s ``min_size="auto"``).
- **Fill**: pieces removed for their size are given to a neighbouring segment, not left as
  holes inside objects.
- **Anisotropy**: 3D runs trained as anisotropic (thin slices) use short z offsets.
- **CRAC models** (an affinity head, ``TrainingConfig.method`` "crac"/"both") segment with
  the mutex watershed on the head's explicit affinities (``crac_segmentation``), not on
  affinities from embedding distances.
- **HDBSCAN and mean-shift** cluster each connected piece of the foreground on its own; without
  a usable foreground they cluster the whole image and the settings carry a note saying that
  distant objects may merge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..clustering.pipeline import PER_COMPONENT_METHODS
from ..errors import SpocoInputError
from ..loss.foreground import FOREGROUND_THRESHOLD
from ..run_defaults import default_anisotropic, known_spacing

#: Segments smaller than this fraction of the median painted object are fragments.
MIN_SIZE_FRACTION = 0.2

#: Shown (GUI status line, CLI stderr) when the foreground cannot be used.
NO_BACKGROUND_NOTE = (
    "No background was painted, so the model has not learned where the background is: every "
    "pixel is clustered and the background may come out as many small segments. Paint a few "
    "background strokes with the background label and train again."
)

#: Shown when HDBSCAN or mean-shift run without a foreground to split the image into pieces.
WHOLE_IMAGE_CLUSTERING_NOTE = (
    "{method} clusters all pixels of the image at once here (no foreground to split it into "
    "pieces): the loss only separates objects that were close during training, so distant "
    "objects with similar embeddings merge. Use mws, or a model trained with painted "
    "background so that {method} can cluster each piece of foreground on its own."
)


def summarize_annotations(label_arrays: Iterable[np.ndarray], mode: str = "sparse",
                          background_id: int | None = None,
                          ignore_id: int | None = None) -> dict:
    """What the training labels say about the objects, for the segmentation defaults.

    Parameters
    ----------
    label_arrays : iterable of ndarray
        The training labels (any integer dtype).
    mode, background_id, ignore_id
        The label convention of the training run.

    Returns
    -------
    dict
        ``n_objects``, ``median_object_size`` (pixels, 0 without objects) and
        ``background_known`` (whether any pixel is known to be background).

    Examples
    --------
    >>> labels = np.zeros((10, 10), np.uint32)
    >>> labels[:2, :5], labels[5:, 5:] = 1, 2
    >>> summarize_annotations([labels])
    {'n_objects': 2, 'median_object_size': 17.5, 'background_known': False}
    """
    sizes, background_known = [], False
    for labels in label_arrays:
        flat = np.asarray(labels).reshape(-1)
        objects = flat[flat != 0]
        ids, counts = np.unique(objects, return_counts=True)
        drop = np.zeros(ids.shape, bool)
        for special in (background_id, ignore_id):
            if special is not None:
                drop |= ids == special
        if background_id is not None and np.any(ids == background_id):
            background_known = True
        if mode == "dense":
            ignored = 0 if ignore_id is None else int(np.count_nonzero(flat == ignore_id))
            background_known |= objects.size + ignored < flat.size
        sizes.append(counts[~drop])
    sizes = np.concatenate(sizes) if sizes else np.zeros(0)
    return {
        "n_objects": int(sizes.size),
        "median_object_size": float(np.median(sizes)) if sizes.size else 0.0,
        "background_known": bool(background_known),
    }


@dataclass
class SegmentationSettings:
    """How to turn one model's output into instances; see :func:`segmentation_settings`.

    Attributes
    ----------
    method : str
        Clustering method of ``clustering.segment``.
    delta_v, delta_d : float
        Clustering margins.
    min_size : int or "auto"
        Segments below this many pixels are removed (and filled, with ``fill``).
    fill : bool
        Give removed pieces to a neighbouring segment.
    merge : bool or "adjacent"
        Merge clusters with close means.
    use_foreground : bool
        Cluster only inside the predicted foreground.
    foreground_threshold : float
        Probability above which a pixel is foreground.
    foreground_crop : bool
        Remove the kept segments' pixels at or below the threshold.
    params : dict
        Method options (e.g. ``anisotropic`` for mws).
    notes : list of str
        What the user should know about these settings (e.g. no background painted).
    affinity_source : {"embeddings", "explicit"}
        mws only: affinities from embedding distances, or the affinity head's predictions
        (pass them to :func:`segment_output` as ``affinities``).
    """

    method: str = "mws"
    delta_v: float = 0.5
    delta_d: float = 2.0
    min_size: int | str = "auto"
    fill: bool = True
    merge: bool | str = False
    use_foreground: bool = False
    foreground_threshold: float = FOREGROUND_THRESHOLD
    foreground_crop: bool = True
    params: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    affinity_source: str = "embeddings"

    def segment_kwargs(self) -> dict:
        """Keyword arguments of ``clustering.segment`` (without the mask)."""
        return dict(method=self.method, delta_v=self.delta_v, delta_d=self.delta_d,
                    min_size=self.min_size, fill=self.fill, merge=self.merge, **self.params)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _get(config, *keys, default=None):
    value = config
    for key in keys:
        if value is None:
            return default
        value = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
    return default if value is None else value


def segmentation_settings(config=None, architecture: dict | None = None,
                          annotations: dict | None = None, *, method: str = "mws",
                          ndim: int | None = None, spacing=None,
                          **overrides) -> SegmentationSettings:
    """The clustering settings for a model, decided from what its checkpoint records.

    Parameters
    ----------
    config : dict or TrainingConfig, optional
        The training run's settings (``LoadedModel.config`` or ``Trainer.config``).
    architecture : dict, optional
        ``UNet.config`` (says whether the network has a foreground head).
    annotations : dict, optional
        :func:`summarize_annotations` of the training labels (``LoadedModel.annotations``).
    method : str
        Clustering method.
    ndim : int, optional
        Spatial dimensions of what is segmented (a 2D slice of a 3D model is 2D).
    spacing : sequence of float, optional
        Voxel size ``Z, Y, X`` of the segmented image; when known
        (``run_defaults.known_spacing``) it decides the mws anisotropy
        (``run_defaults.default_anisotropic``) instead of the training run's.
    **overrides
        Settings the user chose explicitly (``None`` values are ignored): any attribute of
        :class:`SegmentationSettings`, or a method option, which goes to ``params``.

    Returns
    -------
    SegmentationSettings

    Examples
    --------
    >>> s = segmentation_settings({"loss": {"delta_v": 0.5, "delta_d": 2.0}},
    ...                           {"foreground": True},
    ...                           {"median_object_size": 400, "background_known": True})
    >>> s.min_size, s.fill, s.use_foreground
    (80, True, True)
    """
    settings = SegmentationSettings(method=method)
    settings.delta_v = float(_get(config, "loss", "delta_v", default=0.5))
    settings.delta_d = float(_get(config, "loss", "delta_d", default=2.0))
    median = float(_get(annotations, "median_object_size", default=0) or 0)
    if median > 0:
        settings.min_size = max(1, int(MIN_SIZE_FRACTION * median))
    has_head = bool(_get(architecture, "foreground", default=False))
    background_known = bool(_get(annotations, "background_known", default=False))
    settings.use_foreground = has_head and background_known
    if has_head and annotations and not background_known:
        settings.notes.append(NO_BACKGROUND_NOTE)
    if method == "mws" and int(_get(architecture, "affinity_channels", default=0)):
        settings.affinity_source = "explicit"  # CRAC infers from its explicit affinities
    dims = ndim if ndim is not None else _get(architecture, "ndim")
    anisotropic = bool(_get(config, "anisotropic", default=False))
    if settings.affinity_source == "embeddings" and known_spacing(spacing) is not None:
        # the image's own voxel size says whether its z step is coarse; explicit affinities
        # keep the training run's offsets (the head predicts exactly those)
        anisotropic = default_anisotropic([(2, 4, 4)], [spacing])  # the shape is not used
    if method == "mws" and dims == 3 and anisotropic:
        settings.params["anisotropic"] = True
    names = {f.name for f in dataclasses.fields(SegmentationSettings)} - {"params", "notes"}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in names:
            setattr(settings, key, value)
        else:
            settings.params[key] = value
    if settings.method in PER_COMPONENT_METHODS and not settings.use_foreground:
        settings.notes.append(WHOLE_IMAGE_CLUSTERING_NOTE.format(method=settings.method))
    if settings.affinity_source not in ("embeddings", "explicit"):
        raise SpocoInputError(f"affinity_source must be 'embeddings' or 'explicit', got "
                              f"{settings.affinity_source!r}.")
    if settings.affinity_source == "explicit" and settings.method != "mws":
        settings.affinity_source = "embeddings"  # only the mutex watershed takes affinities
    if not 0.0 < settings.foreground_threshold < 1.0:
        raise SpocoInputError(
            f"The foreground threshold must be between 0 and 1, got "
            f"{settings.foreground_threshold}."
        )
    return settings


def foreground_kwargs(foreground, settings: SegmentationSettings, mask=None) -> dict:
    """``mask``/``foreground`` keywords of ``clustering.segment`` for these settings."""
    kwargs = {"mask": None if mask is None else np.asarray(mask).astype(bool)}
    if settings.use_foreground and foreground is not None:
        kwargs["foreground"] = np.asarray(foreground)
        kwargs["foreground_threshold"] = settings.foreground_threshold
        kwargs["foreground_crop"] = settings.foreground_crop
    return kwargs


def segment_output(embeddings, foreground, settings: SegmentationSettings, mask=None,
                   affinities=None, cluster=None, **extra) -> np.ndarray:
    """Instances from embeddings and foreground probability with the given settings.

    Parameters
    ----------
    embeddings : ndarray
        ``(E, *spatial)``.
    foreground : ndarray or None
        Foreground probability of the spatial shape (None: no foreground head).
    settings : SegmentationSettings
    mask : ndarray, optional
        A user's mask: only these pixels are clustered (combined with the foreground).
    affinities : ndarray, optional
        The affinity head's output (``crac_segmentation.predict_affinities``); required when
        ``settings.affinity_source`` is "explicit".
    cluster : callable, optional
        Runs the clustering in place of ``clustering.segment`` (same signature), e.g. the
        dock's ``segment_off_thread``, which clusters in a helper process.
    **extra
        Passed to ``clustering.segment`` (e.g. ``embeddings_g`` for consistency).

    Returns
    -------
    ndarray of uint32
        Instance labels of the spatial shape (0 = no object).

    Examples
    --------
    Two objects in embedding space; the head calls the last two columns background:

    >>> embeddings = np.zeros((2, 16, 16), np.float32); embeddings[0, :, 8:] = 5.0
    >>> foreground = np.ones((16, 16), np.float32); foreground[:, 14:] = 0.0
    >>> settings = segmentation_settings({"loss": {"delta_v": 0.5, "delta_d": 2.0}},
    ...                                  {"foreground": True}, {"background_known": True})
    >>> labels = segment_output(embeddings, foreground, settings)
    >>> np.unique(labels).tolist(), np.unique(labels[:, 14:]).tolist()
    ([0, 1, 2], [0])
    """
    from ..clustering import segment

    if settings.affinity_source == "explicit":
        if affinities is None:
            raise SpocoInputError(
                "These settings segment the affinity head's explicit affinities (a CRAC "
                "model), but none were given: predict them with "
                "crac_segmentation.predict_affinities and pass affinities=..., or choose "
                "affinity_source='embeddings'.")
        from .crac_segmentation import segment_affinities

        return segment_affinities(affinities, settings, foreground, mask)
    return (cluster or segment)(np.asarray(embeddings),
                                **foreground_kwargs(foreground, settings, mask),
                                **settings.segment_kwargs(), **extra)


def settings_for(model_source, *, method: str = "mws", ndim: int | None = None,
                 spacing=None, **overrides) -> SegmentationSettings:
    """:func:`segmentation_settings` of a ``Trainer`` or a loaded checkpoint (``LoadedModel``).

    The one call every front end makes: the CLI and the Segment tab with a ``LoadedModel``, the
    live preview, the demo and the benchmarks with the ``Trainer``.

    Examples
    --------
    >>> from napari_spoco.core.training import Trainer, TrainingConfig
    >>> image = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    >>> labels = np.zeros((32, 32), np.uint32); labels[4:12, 4:12] = 1; labels[16:28, 16:28] = 2
    >>> config = TrainingConfig(features=(4, 8), num_groups=2, iterations=0, device="cpu",
    ...                         autosave_seconds=None)
    >>> settings = settings_for(Trainer([(image, labels)], config))
    >>> settings.method, settings.min_size, settings.use_foreground  # no background painted
    ('mws', 20, False)
    """
    architecture = getattr(model_source, "architecture", None)
    if architecture is None or callable(architecture):
        architecture = model_source.model.config
    return segmentation_settings(model_source.config, architecture, model_source.annotations,
                                 method=method, ndim=ndim, spacing=spacing, **overrides)


def training_notes(label_arrays, config) -> list:
    """What a user should know before training on these labels (e.g. no background painted).

    The same notes the segmentation settings of the trained model will carry, so the Train
    tab and ``napari-spoco train`` warn before the run instead of after it.
    """
    summary = summarize_annotations(label_arrays, config.mode, config.background_id,
                                    config.ignore_id)
    return segmentation_settings(config, {"foreground": config.foreground}, summary).notes
