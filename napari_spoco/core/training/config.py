"""Every setting of a SPOCO training run, with the defaults of the paper and the specification."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SpocoInputError
from ..loss.crac import METHODS as TRAINING_METHODS
from ..loss.crac import CracSettings, edge_offsets
from ..model.unet import LEGACY_ARCHITECTURE_DEFAULTS, architecture_config, complete_architecture
from ..run_defaults import (  # noqa: F401 (DEFAULT_LR, FINE_TUNE_LR_DIVISOR: re-exported)
    DEFAULT_LR,
    FINE_TUNE_LR_DIVISOR,
    default_consistency_weight,
    default_learning_rate,
    source_learning_rate,
)
from ..validation import check_channel_axis
from .adversarial import AdversarialSettings


@dataclass
class LossSettings:
    """Parameters of :class:`~napari_spoco.core.loss.SpocoLoss` except the label conventions.

    The label conventions (``mode``, ``background_id``, ``ignore_id``) are shared with the data
    and live in :class:`TrainingConfig`. ``w_ucon`` None is decided when the run starts:
    1 from scratch, 10 when fine-tuning on sparse labels
    (``run_defaults.default_consistency_weight``, the rule of every front end).
    """

    delta_v: float = 0.5
    delta_d: float = 2.0
    kernel_threshold: float = 0.9
    alpha: float = 1.0
    beta: float = 1.0
    w_reg: float = 1e-3
    w_obj: float = 1.0
    w_upush: float = 1.0
    w_ucon: float | None = None
    max_anchors: int = 20
    anchor_stop_fraction: float = 0.05
    anchor_at_mean: bool = False


@dataclass
class TrainingConfig:
    """All settings of a training run; ``None`` means "decided from the data or the source".

    Attributes
    ----------
    ndim : int or None
        2 or 3 spatial dimensions; None: from the source model, else from the first image
        (its dimensions minus the channel axis).
    in_channels : int or None
        Image channels; None: from the first image.
    channel_axis : int or None
        Axis of the channels in the images; None for single-channel images.
    features, norm, num_groups, anisotropic_levels, out_channels
        The U-Net (see :class:`~napari_spoco.core.model.unet.UNet`); ignored when fine-tuning, where
        the source's architecture is used and written back here.
    foreground : bool
        Train a foreground head beside the embeddings (``core/loss/foreground.py``); segmentation
        then clusters only the predicted foreground. Kept when fine-tuning: a source without
        the head gets a new one.
    foreground_weight : float
        Weight of the foreground loss in the total.
    foreground_lr : float
        Adam learning rate of the foreground head (one linear layer, see
        ``training.parameter_groups``), and of a CRAC affinity head new on a fine-tuning
        source that had none; the rest of the network uses ``lr``.
    foreground_ring : int
        Unlabeled pixels this close to a labeled object count as background in the
        foreground loss (0: off; ``foreground.foreground_loss``).
    loss : LossSettings
        Loss parameters and weights.
    mode : {"sparse", "dense"}
        Label convention: 0 = unlabeled (sparse) or 0 = background (dense).
    background_id, ignore_id : int or None
        Label id painted as background (one more object), and id excluded from every term.
    anisotropic : bool or None
        3D augmentation keeps rotations and scaling in-plane; None: decided by the data
        (``run_defaults.default_anisotropic``: every stack has ``Z ≤ min(Y, X) / 2``).
    augment : bool
        Geometric and photometric augmentation on/off.
    patch_shape : tuple of int or None
        Spatial training patch; None: 256² in 2D and 32×64² in 3D, clipped to the images.
        (The Train tab, the command line and the demo fill this, ``batch_size`` and
        ``iterations`` from the images and the device with ``run_defaults``; the values here
        are only the Python API's fallbacks.)
    batch_size : int
        Patches per optimizer step.
    iterations : int
        Optimizer steps of the run (a resumed run continues up to this number).
    lr : float or None
        Adam learning rate; None: 2e-4 from scratch, the source's lr / 10 when fine-tuning
        (``run_defaults.default_learning_rate``, the rule of every front end).
    weight_decay : float
        Adam weight decay (L2, as in the paper).
    momentum : float
        m of the momentum network update ``g <- m g + (1 - m) f``.
    reduce_lr_on_plateau : bool or None
        Multiply lr by ``lr_factor`` when the smoothed loss has not improved for
        ``lr_patience`` steps; None: on from scratch, off when fine-tuning (the paper fine-tunes
        with a fixed lr).
    lr_factor, lr_patience, min_lr
        The plateau schedule; training stops once lr falls below ``min_lr``.
    loss_smoothing : float
        Weight of the past in the exponential average of the loss the schedule watches.
    normalization : {"fit", "source"}
        When fine-tuning: refit the intensity statistics on the new images (the paper
        normalises each dataset globally) or keep the source model's.
    seed : int
        Seeds the initial weights, patch sampling, augmentation and anchor draws.
    device : str
        "auto", "cpu", "cuda", "cuda:1", "mps".
    mixed_precision : bool or None
        Autocast f's forward pass to bfloat16 (float16 with a gradient scaler on GPUs without
        bfloat16); None (default): on for CUDA only, False: always float32, True: also on the
        CPU (``distributed.amp_dtype``).
    autosave_seconds : float or None
        Save to the autosave path at least this often (crash safety); None: never by time.
    autosave_iterations : int or None
        Also save every this many steps; None: never by count.
    adversarial : AdversarialSettings or None
        The optional WGAN-GP critic term (appendix A.1, see ``core/training/adversarial.py``);
        None (the default, and what checkpoints without this key load as) switches it off.
    method : {"spoco", "crac", "both"}
        Training objective: the SPOCO loss, the CRAC affinity losses (``core/loss/crac.py``,
        adds an affinity head), or their sum.
    affinity_channels : int
        Channels of the affinity head; set from the edge layout for "crac"/"both" (0: none).
    crac : CracSettings
        Weights and confidence schedule of the CRAC loss.
    """

    ndim: int | None = None
    in_channels: int | None = None
    channel_axis: int | None = None
    features: tuple[int, ...] = (16, 32, 64, 128)
    norm: str | None = "group"
    num_groups: int = 8
    anisotropic_levels: int = 0
    out_channels: int = 16
    foreground: bool = True
    foreground_weight: float = 1.0
    foreground_lr: float = 2e-3
    foreground_ring: int = 1
    loss: LossSettings = field(default_factory=LossSettings)
    mode: str = "sparse"
    background_id: int | None = None
    ignore_id: int | None = None
    anisotropic: bool | None = None
    augment: bool = True
    patch_shape: tuple[int, ...] | None = None
    batch_size: int = 4
    iterations: int = 10_000
    lr: float | None = None
    weight_decay: float = 1e-5
    momentum: float = 0.999
    reduce_lr_on_plateau: bool | None = None
    lr_factor: float = 0.2
    lr_patience: int = 1000
    min_lr: float = 1e-6
    loss_smoothing: float = 0.98
    normalization: str = "fit"
    seed: int = 0
    device: str = "auto"
    autosave_seconds: float | None = 60.0
    autosave_iterations: int | None = None
    adversarial: AdversarialSettings | None = None
    method: str = "spoco"
    affinity_channels: int = 0
    crac: CracSettings = field(default_factory=CracSettings)
    mixed_precision: bool | None = None
    input_scale: float | str | None = None
    object_size: float | None = None

    def __post_init__(self):
        if isinstance(self.crac, dict):
            self.crac = _build(CracSettings, self.crac, "crac")
        if isinstance(self.loss, dict):
            self.loss = _build(LossSettings, self.loss, "loss")
        if isinstance(self.adversarial, dict):
            self.adversarial = _build(AdversarialSettings, self.adversarial, "adversarial")
        self.features = tuple(int(f) for f in self.features)
        if self.patch_shape is not None:
            self.patch_shape = tuple(int(s) for s in self.patch_shape)
        self.validate()

    def validate(self) -> None:
        """Raise ``SpocoInputError`` for values no training can use."""
        problems = []
        if self.ndim not in (None, 2, 3):
            problems.append(f"ndim must be 2 or 3, got {self.ndim}")
        if self.method not in TRAINING_METHODS:
            problems.append(f"method must be one of {TRAINING_METHODS}, got {self.method!r}")
        problems += self.crac.validate()
        if self.mode not in ("sparse", "dense"):
            problems.append(f"mode must be 'sparse' or 'dense', got {self.mode!r}")
        if not isinstance(self.foreground, bool):
            problems.append(f"foreground must be True or False, got {self.foreground!r}")
        if not self.foreground_weight >= 0:
            problems.append(f"foreground_weight must be >= 0, got {self.foreground_weight}")
        if isinstance(self.foreground_ring, bool) or not isinstance(self.foreground_ring, int) \
                or self.foreground_ring < 0:
            problems.append(f"foreground_ring must be a whole number of pixels >= 0, got "
                            f"{self.foreground_ring!r}")
        if not self.foreground_lr > 0:
            problems.append(f"foreground_lr must be positive, got {self.foreground_lr}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {self.batch_size}")
        if self.iterations < 0:
            problems.append(f"iterations must be at least 0, got {self.iterations}")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        elif self.lr is not None and self.lr < self.min_lr:
            problems.append(
                f"lr {self.lr:g} is below min_lr {self.min_lr:g}, where training stops; lower "
                "min_lr too"
            )
        if not 0.0 <= self.momentum < 1.0:
            problems.append(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 < self.lr_factor < 1.0:
            problems.append(f"lr_factor must be in (0, 1), got {self.lr_factor}")
        if not 0.0 <= self.loss_smoothing < 1.0:
            problems.append(f"loss_smoothing must be in [0, 1), got {self.loss_smoothing}")
        if self.normalization not in ("fit", "source"):
            problems.append(f"normalization must be 'fit' or 'source', got {self.normalization!r}")
        seconds = self.autosave_seconds
        if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
            # NaN compared False with every elapsed time and silently switched autosave off
            problems.append(
                f"autosave_seconds must be a number of seconds > 0 (or None: no timed "
                f"autosave), got {seconds}"
            )
        if self.autosave_iterations is not None and not self.autosave_iterations >= 1:
            problems.append(
                f"autosave_iterations must be at least 1 (or None), got {self.autosave_iterations}"
            )
        if self.input_scale not in (None, "auto") and not (
                isinstance(self.input_scale, (int, float)) and self.input_scale > 0):
            problems.append(f"input_scale must be a positive number, 'auto' (from the painted "
                            f"objects' size) or None (1), got {self.input_scale!r}")
        if self.patch_shape is not None and min(self.patch_shape, default=0) < 1:
            problems.append(f"patch_shape must be positive sizes, got {self.patch_shape}")
        if (
            self.background_id is not None
            and self.background_id == self.ignore_id
        ):
            problems.append("background_id and ignore_id must differ")
        if problems:
            raise SpocoInputError("Invalid training settings: " + "; ".join(problems) + ".")

    @property
    def architecture(self) -> dict:
        """The ``UNet.config`` these settings describe (needs ``ndim`` and ``in_channels``)."""
        return architecture_config(self)

    def use_architecture(self, architecture: dict) -> None:
        """Overwrite the network settings with a ``UNet.config`` (e.g. a source model's)."""
        for key, value in architecture.items():
            setattr(self, key, tuple(value) if key == "features" else value)

    def loss_kwargs(self) -> dict:
        """Keyword arguments of ``SpocoLoss`` (an undecided ``w_ucon``: that of a run from
        scratch, which is what a config no trainer resolved describes)."""
        loss = dataclasses.asdict(self.loss)
        if loss["w_ucon"] is None:
            loss["w_ucon"] = default_consistency_weight(fine_tuning=False)
        return dict(
            loss,
            mode=self.mode,
            background_id=self.background_id,
            ignore_id=self.ignore_id,
        )

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> TrainingConfig:
        """Inverse of :meth:`to_dict`; keys this version does not know raise ``SpocoInputError``.

        Architecture keys a config written before they existed lacks take the value the
        network of that time had (no foreground head), not today's default; so does the
        foreground loss's ring (none before it existed), so that a resumed run keeps its loss.
        """
        data = {**LEGACY_ARCHITECTURE_DEFAULTS, **dict(data)}
        data.setdefault("foreground_ring", 0)
        return _build(cls, data, "training config")

    def replace(self, **changes: Any) -> TrainingConfig:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _build(cls, data: dict, what: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SpocoInputError(
            f"Unknown {what} settings {unknown}; known: {sorted(names)}. The file may come from "
            "a newer napari-spoco: update it."
        )
    return cls(**data)


# -- resolving unset settings from the data and a source model ----------------------------

def as_pairs(pairs) -> list:
    if isinstance(pairs, tuple) and len(pairs) == 2 and hasattr(pairs[0], "shape"):
        pairs = [pairs]
    pairs = list(pairs)
    if not pairs:
        raise SpocoInputError("No training data: give at least one (image, labels) pair.")
    for index, pair in enumerate(pairs):
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise SpocoInputError(
                f"Training pair {index} is not an (image, labels) pair; give a list of "
                "(image, labels) tuples."
            )
    return pairs


def adopt_source(config: TrainingConfig, checkpoint: dict, path: str) -> TrainingConfig:
    """Take the source's architecture, check it fits the data settings, derive the lr."""
    config = config.replace()
    architecture = dict(checkpoint["architecture"])
    if config.ndim is not None and config.ndim != architecture["ndim"]:
        raise SpocoInputError(
            f"The source model {path!r} is a {architecture['ndim']}D network but the images "
            f"are {config.ndim}D. Fine-tune a {config.ndim}D model or train from scratch (if "
            "an image axis holds channels, set the channel axis)."
        )
    if config.in_channels is not None and config.in_channels != architecture["in_channels"]:
        raise SpocoInputError(
            f"The source model {path!r} takes {architecture['in_channels']} channel(s) but the "
            f"images have {config.in_channels}. Use images with those channels, or train from "
            "scratch."
        )
    foreground = config.foreground
    config.use_architecture(complete_architecture(architecture))
    config.foreground = foreground  # a source without the head gets one (see load_source_state)
    if config.lr is None:
        config.lr = default_learning_rate(fine_tuning=True,
                                          source_lr=source_learning_rate(checkpoint))
    if config.reduce_lr_on_plateau is None:
        config.reduce_lr_on_plateau = False
    if config.loss.w_ucon is None:
        config.loss = dataclasses.replace(
            config.loss, w_ucon=default_consistency_weight(fine_tuning=True, mode=config.mode))
    return config


def resolve_affinity_channels(config: TrainingConfig) -> TrainingConfig:
    """CRAC modes: one affinity-head channel per offset of the mutex watershed's edge layout."""
    if config.method != "spoco" and not config.affinity_channels:
        return config.replace(
            affinity_channels=len(edge_offsets(config.ndim, bool(config.anisotropic))))
    return config


def resolve_defaults(config: TrainingConfig) -> TrainingConfig:
    """From scratch: the default learning rate and its plateau schedule; then validate."""
    config = config.replace()
    if config.lr is None:
        config.lr = default_learning_rate(fine_tuning=False)
    if config.reduce_lr_on_plateau is None:
        config.reduce_lr_on_plateau = True
    if config.loss.w_ucon is None:
        config.loss = dataclasses.replace(config.loss, w_ucon=default_consistency_weight())
    config.validate()
    return config


def take_image_settings(config: TrainingConfig, pairs: list) -> TrainingConfig:
    """Set (or check) ``ndim`` and ``in_channels`` from the first image of raw pairs."""
    config = config.replace()
    shape = tuple(np.shape(pairs[0][0]))
    check_channel_axis(shape, config.channel_axis)  # before shape[channel_axis] below
    image_dims = len(shape) - (config.channel_axis is not None)
    if config.ndim is None:
        if image_dims not in (2, 3):
            raise SpocoInputError(
                f"The image has shape {shape}: {image_dims} spatial axes with channel axis "
                f"{config.channel_axis}. Give 2D (Y, X) or 3D (Z, Y, X) images, and set the "
                "channel axis if one axis holds channels."
            )
        config.ndim = image_dims
    elif image_dims != config.ndim:
        raise SpocoInputError(
            f"The images are {image_dims}D (shape {shape}, channel axis {config.channel_axis}) "
            f"but the model is {config.ndim}D. Use a {config.ndim}D model for these images, or "
            "set the channel axis if one image axis holds channels."
        )
    channels = 1 if config.channel_axis is None else shape[config.channel_axis]
    if config.in_channels is None:
        config.in_channels = int(channels)
    elif channels != config.in_channels:
        raise SpocoInputError(
            f"The model takes {config.in_channels} input channel(s) but the images have "
            f"{channels}. Use images with the channels the model was trained on, or train a "
            "new model."
        )
    return config


def take_data_settings(config: TrainingConfig, data) -> TrainingConfig:
    """Take the settings of a prepared ``TrainingData``, checking them against the model."""
    if config.ndim is not None and config.ndim != data.ndim:
        raise SpocoInputError(
            f"The training data are {data.ndim}D but the model is {config.ndim}D; use a "
            f"{data.ndim}D model or prepare the data for {config.ndim}D."
        )
    if config.in_channels is not None and config.in_channels != data.in_channels:
        raise SpocoInputError(
            f"The model takes {config.in_channels} input channel(s) but the training images "
            f"have {data.in_channels}; use images with the channels the model was trained on."
        )
    return config.replace(
        ndim=int(data.ndim), in_channels=int(data.in_channels), channel_axis=data.channel_axis,
        mode=data.mode, background_id=data.background_id, ignore_id=data.ignore_id,
        patch_shape=tuple(data.patch_shape), anisotropic=bool(data.anisotropic))


def resolve_config(config: TrainingConfig, pairs, source_checkpoint: dict | None = None,
                   source_path: str | None = None) -> TrainingConfig:
    """The run's settings before its data are prepared; ``config`` itself is not changed.

    The one order in which the settings are decided: what the images (or prepared
    ``TrainingData``) say (dimensionality, channels), then what a source checkpoint brings
    (architecture, a tenth of its learning rate), then the from-scratch defaults. Each step
    returns a new config, so the result depends only on the arguments.

    Parameters
    ----------
    config : TrainingConfig
        What the user chose (None fields are decided here).
    pairs : list of (image, labels) or TrainingData
    source_checkpoint : dict, optional
        The fine-tuning source (``load_checkpoint``), and ``source_path`` its name for
        messages.

    Returns
    -------
    TrainingConfig

    Examples
    --------
    >>> pairs = [(np.zeros((32, 32), np.float32), np.zeros((32, 32), np.uint32))]
    >>> chosen = TrainingConfig()
    >>> resolved = resolve_config(chosen, pairs)
    >>> (resolved.ndim, resolved.in_channels, resolved.lr), (chosen.ndim, chosen.lr)
    ((2, 1, 0.0002), (None, None))
    """
    from .data import TrainingData

    if isinstance(pairs, TrainingData):
        config = take_data_settings(config, pairs)
    else:
        config = take_image_settings(config, pairs)
    if source_checkpoint is not None:
        config = adopt_source(config, source_checkpoint, str(source_path))
    config = resolve_input_scale(config, pairs, source_checkpoint)
    return resolve_defaults(config)


def resolve_input_scale(config: TrainingConfig, pairs, source_checkpoint: dict | None = None
                        ) -> TrainingConfig:
    """The grid the network trains on (``config.input_scale`` becomes a number).

    A number is kept; prepared ``TrainingData`` keeps its own scale; None (the default) is 1,
    the images' own grid; ``"auto"`` resamples the painted objects to the size the source was
    trained on (:func:`~napari_spoco.core.run_defaults.default_input_scale`; 1 from scratch).

    Why "auto" is not the default: on the synthetic transfer pair it repairs the source model's
    cut cells before training, but sparse fine-tuning on the resampled grid merged cells more
    than at scale 1 (docs/results.md, "Object size").
    """
    from ..inference.segmentation import summarize_annotations
    from ..run_defaults import default_input_scale, source_object_size
    from .data import TrainingData

    if isinstance(pairs, TrainingData):
        return config.replace(input_scale=pairs.input_scale)
    if config.input_scale is None:
        return config.replace(input_scale=1.0)
    if config.input_scale != "auto":
        return config.replace(input_scale=float(config.input_scale))
    source_size = 0.0 if source_checkpoint is None else source_object_size(source_checkpoint)
    if not source_size > 0:
        return config.replace(input_scale=1.0)
    summary = summarize_annotations((labels for _, labels in pairs), config.mode,
                                    config.background_id, config.ignore_id)
    return config.replace(input_scale=default_input_scale(
        source_size, summary["median_object_size"], summary["n_objects"], config.ndim))


def settle_config(config: TrainingConfig, data) -> TrainingConfig:
    """What the prepared data decided (patch clipped to the images, anisotropy), and the CRAC
    affinity head that depends on it; ``config`` itself is not changed."""
    config = config.replace(patch_shape=tuple(data.patch_shape),
                            anisotropic=bool(data.anisotropic),
                            input_scale=float(data.input_scale),
                            object_size=float(data.network_object_size()))
    return resolve_affinity_channels(config)
