"""SPOCO training as a stoppable generator: f learns by Adam, g follows f as a moving average.

``Trainer.steps()`` yields a :class:`TrainingReport` after every optimizer step, so the command
line can drive a progress bar and the napari widget a worker thread, both with the same code.
Another thread may call :meth:`Trainer.pause`, :meth:`Trainer.resume`, :meth:`Trainer.stop`,
:meth:`Trainer.set_labels` and :meth:`Trainer.save` at any time: they take effect between steps.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import CheckpointError, SpocoInputError
from ..loss.crac import CracLoss, edge_offsets
from ..loss.foreground import foreground_loss, split_output
from ..loss.spoco import SpocoLoss
from ..model.checkpoint import (
    check_architecture,
    load_checkpoint,
    load_source_state,
    load_state,
    save_checkpoint,
)
from ..model.frozen_norm import statistics_tile
from ..model.momentum import make_momentum_copy, momentum_update
from ..model.normalization import Normalization
from ..model.unet import UNet, complete_architecture
from . import distributed
from .adversarial import Critic, WganGp, default_crop_shape, kernel_scale, object_masks
from .config import (
    LossSettings,
    TrainingConfig,
    as_pairs,
    resolve_config,
    settle_config,
)
from .data import TrainingData

__all__ = ["LossSettings", "Trainer", "TrainingConfig", "TrainingReport"]


@dataclass
class TrainingReport:
    """What one optimizer step did.

    Attributes
    ----------
    iteration : int
        Steps done so far (1 after the first step).
    iterations : int
        Steps the run will do at most.
    loss : float
        Weighted total loss of this step.
    terms : dict of str to float
        Unweighted loss terms ``pull push reg obj u_push u_con``, plus ``fg`` (foreground
        head, when the network has one), ``adv`` (generator term -E[D(fake)]) and ``critic``
        (critic loss) when the adversarial term is on.
    smoothed_loss : float
        Exponential average of the total loss (what the lr schedule watches).
    lr : float
        Learning rate after this step (the schedule may just have lowered it).
    seconds_per_step : float
        Wall time of this step.
    eta_seconds : float
        Estimated time to the iteration limit at the recent speed.
    device : str
        Where the networks run.
    """

    iteration: int
    iterations: int
    loss: float
    terms: dict[str, float]
    smoothed_loss: float
    lr: float
    seconds_per_step: float
    eta_seconds: float
    device: str


@dataclass
class _LossTracker:
    """Bias-corrected exponential averages of the loss (weight ``beta``) and the step time."""

    beta: float
    loss_avg: float = 0.0
    time_avg: float = 0.0
    count: int = 0
    time_beta: float = 0.9

    def update(self, loss: float, seconds: float) -> None:
        self.count += 1
        self.loss_avg = self.beta * self.loss_avg + (1 - self.beta) * loss
        self.time_avg = self.time_beta * self.time_avg + (1 - self.time_beta) * seconds

    @property
    def loss(self) -> float:
        return self.loss_avg / (1 - self.beta**self.count) if self.count else math.nan

    @property
    def seconds(self) -> float:
        return self.time_avg / (1 - self.time_beta**self.count) if self.count else math.nan


def parameter_groups(model: UNet, config: TrainingConfig,
                     new_affinity_head: bool = False) -> list[dict]:
    """Adam groups: the network, the foreground head at ``config.foreground_lr``, the CRAC
    affinity head (its own group, so that the layout depends on the architecture only).

    Adam moves a weight by at most about its learning rate per step, so at the embedding
    network's 2e-4 (a tenth of the source's when fine-tuning) a fresh foreground head could
    shift its logits by a few tenths in a thousand steps: it ranked pixels right long before it
    was calibrated (background at p = 0.4, measured on StarDist nuclei after 300 steps). One
    linear layer tolerates a far larger step.

    The affinity head learns at ``config.lr`` with the network it is trained with, except when
    it is new on a fine-tuning source that had none (``new_affinity_head``): at the source's
    lr / 10 it stays near its random start, since 265 steps at 1e-4 move a weight by about
    0.03 at most against an initial sd of 0.15. On issue 14's transfer pair its explicit
    affinities then segmented far worse than the same network's embeddings (adapted Rand error
    0.74 vs 0.14), so a new head takes ``config.foreground_lr`` too.
    """
    heads = []
    if model.foreground_head is not None:
        heads.append((list(model.foreground_head.parameters()), config.foreground_lr))
    if model.affinity_head is not None:
        heads.append((list(model.affinity_head.parameters()),
                      config.foreground_lr if new_affinity_head else config.lr))
    head_ids = {id(p) for params, _ in heads for p in params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in head_ids]}]
    groups += [{"params": params, "lr": lr} for params, lr in heads]
    return groups


class Trainer:
    """Train a SPOCO embedding network from scratch or fine-tune a source model.

    Parameters
    ----------
    pairs : sequence of (image, labels) or TrainingData
        Training images ``(C,) [Z,] Y, X`` with labels of their spatial shape, or a prepared
        :class:`~napari_spoco.core.training.data.TrainingData`.
    config : TrainingConfig, optional
        Settings; defaults otherwise. Unset values (``None``) are filled from the source model
        or the data; :attr:`config` holds the resolved settings.
    source : str or PathLike, optional
        Checkpoint to fine-tune: f and g start from its weights, its architecture is used, and
        the default learning rate is its lr / 10 with a fixed schedule.
    autosave_path : str or PathLike, optional
        Where :meth:`steps` saves every ``config.autosave_seconds`` /
        ``config.autosave_iterations`` and when it ends, so a crash loses at most that much.

    Raises
    ------
    SpocoInputError
        For unusable data (see ``data.validate_pair``), settings, or a source model of another
        dimensionality or channel count than the images.
    CheckpointError
        For an unreadable source checkpoint.

    Examples
    --------
    Two steps of a tiny network on a 32×32 image with two painted objects:

    >>> image = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    >>> labels = np.zeros((32, 32), np.uint32); labels[4:12, 4:12] = 1; labels[16:28, 16:28] = 2
    >>> config = TrainingConfig(features=(4, 8), num_groups=2, patch_shape=(16, 16),
    ...                         batch_size=1, iterations=2, device="cpu", autosave_seconds=None)
    >>> trainer = Trainer([(image, labels)], config)
    >>> reports = list(trainer.steps())
    >>> [r.iteration for r in reports], trainer.stop_reason, reports[-1].device
    ([1, 2], 'iterations', 'cpu')
    >>> sorted(reports[-1].terms)
    ['fg', 'obj', 'pull', 'push', 'reg', 'u_con', 'u_push']
    """

    def __init__(self, pairs, config: TrainingConfig | None = None, source=None,
                 autosave_path=None, *, _normalization: Normalization | None = None):
        config = config or TrainingConfig()
        self.source = None if source is None else Path(source)
        self.autosave_path = None if autosave_path is None else Path(autosave_path)
        self.dist = distributed.current_context()  # a torchrun process group, if any
        self.device = distributed.rank_device(resolve_device(config.device), self.dist)
        distributed.check_supported(config, self.dist)
        self.amp_dtype = distributed.amp_dtype(self.device, config.mixed_precision)
        source_ckpt = None if source is None else load_checkpoint(source)
        prepared = isinstance(pairs, TrainingData)
        if not prepared:
            pairs = as_pairs(pairs)
        config = resolve_config(config, pairs, source_ckpt, source)
        normalization = _normalization
        if normalization is None and source_ckpt is not None \
                and config.normalization == "source":
            normalization = Normalization.from_dict(dict(source_ckpt["normalization"]))
        self.data = pairs if prepared else self._build_data(pairs, config, normalization)
        config = settle_config(config, self.data)  # needs the anisotropy the data decided
        self.config = config

        with torch.random.fork_rng(devices=[]):
            # Seeding inside a fork keeps the caller's global RNG untouched.
            torch.manual_seed(config.seed)
            self.model = UNet.from_config(config.architecture)
            # drawn after f's weights, so enabling the critic leaves f's initialisation as it was
            critic = None if config.adversarial is None else Critic(
                config.ndim, config.adversarial.features)
        if source_ckpt is not None:
            load_source_state(self.model, source_ckpt["model_state"], str(source))
        self.momentum_model = make_momentum_copy(self.model)
        if source_ckpt is not None and "momentum_state" in source_ckpt:
            load_source_state(self.momentum_model, source_ckpt["momentum_state"], str(source))
        # prediction resamples images to the grid the networks learn on (model.input_scale)
        self.model.input_scale = self.momentum_model.input_scale = config.input_scale
        # and group norm's statistics in prediction are those of tiles of this shape
        self.model.statistics_tile = self.momentum_model.statistics_tile = statistics_tile(
            config.patch_shape)
        self.model.to(self.device)
        self.momentum_model.to(self.device)
        # DDP averages f's gradients over the ranks; self.model stays the bare network
        self._forward_model = distributed.wrap_model(self.model, self.dist, self.device)
        self.scaler = distributed.make_scaler(self.device, self.amp_dtype)

        self.loss_fn = SpocoLoss(**config.loss_kwargs())
        self.crac_loss = None if config.method == "spoco" else CracLoss(
            edge_offsets(config.ndim, bool(config.anisotropic)), config.loss.delta_d,
            config.crac, config.mode, config.background_id, config.ignore_id)
        self.adversarial = None if critic is None else WganGp(
            critic.to(self.device), config.adversarial, seed=config.seed + 1)
        new_affinity_head = source_ckpt is not None and self.model.affinity_head is not None \
            and not complete_architecture(source_ckpt["architecture"])["affinity_channels"]
        self.optimizer = torch.optim.Adam(
            parameter_groups(self.model, config, new_affinity_head), lr=config.lr,
            weight_decay=config.weight_decay,
        )
        self.scheduler = None
        if config.reduce_lr_on_plateau:
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience
            )
        self.rng = np.random.default_rng(config.seed)
        self.loss_generator = torch.Generator().manual_seed(
            distributed.loss_seed(config.seed, self.dist))
        self.iteration = 0
        self.stop_reason: str | None = None
        self._tracker = _LossTracker(config.loss_smoothing)
        self._lock = threading.RLock()
        self._control = threading.Condition()
        self._paused = False
        self._held = False
        self._stop_requested = False

    # -- construction helpers -------------------------------------------------------------

    @staticmethod
    def _build_data(pairs, config: TrainingConfig, normalization):
        data = TrainingData(
            pairs,
            ndim=config.ndim,
            channel_axis=config.channel_axis,
            patch_shape=config.patch_shape,
            mode=config.mode,
            background_id=config.background_id,
            ignore_id=config.ignore_id,
            anisotropic=config.anisotropic,
            normalization=normalization,
            augment=config.augment,
            input_scale=1.0 if config.input_scale is None else config.input_scale,
        )
        return data  # it clips the patch and decides anisotropy: settle_config records them

    @classmethod
    def from_checkpoint(cls, path, pairs, iterations: int | None = None,
                        device: str | None = None, autosave_path=None) -> Trainer:
        """Continue a saved run at its iteration, with its optimizer, schedule and RNG state.

        Parameters
        ----------
        path : str or PathLike
            A checkpoint written by :meth:`save`.
        pairs : sequence of (image, labels) or TrainingData
            The training data (normally the same as before; new labels are allowed).
        iterations : int, optional
            New iteration limit; default the saved run's.
        device : str, optional
            Override the saved device setting.
        autosave_path : str or PathLike, optional
            As for the constructor.
        """
        checkpoint = load_checkpoint(path)
        config = TrainingConfig.from_dict(dict(checkpoint["config"]))
        if iterations is not None:
            config.iterations = int(iterations)
        if device is not None:
            config.device = device
        check_architecture(checkpoint, config.architecture, str(path))
        trainer = cls(pairs, config, autosave_path=autosave_path,
                      _normalization=Normalization.from_dict(dict(checkpoint["normalization"])))
        trainer._restore(checkpoint, str(path))
        return trainer

    def _restore(self, checkpoint: dict, path: str) -> None:
        load_state(self.model, checkpoint["model_state"], path)
        load_state(self.momentum_model, checkpoint["momentum_state"], path)
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer_state"])
            if self.scheduler is not None and checkpoint.get("scheduler_state") is not None:
                self.scheduler.load_state_dict(checkpoint["scheduler_state"])
            rng_state = checkpoint["rng_state"]
            self.rng.bit_generator.state = rng_state["numpy"]
            self.loss_generator.set_state(rng_state["loss"])
            if self.dist.rank > 0:  # the checkpoint holds rank 0's anchor stream
                self.loss_generator.manual_seed(distributed.loss_seed(
                    self.config.seed, self.dist, int(checkpoint["iteration"])))
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise CheckpointError(
                f"{path!r} holds a model but not a resumable training state ({err}); fine-tune "
                "from it as a source model instead of resuming."
            ) from err
        if self.adversarial is not None and "adversarial_state" in checkpoint:
            self.adversarial.load_state_dict(dict(checkpoint["adversarial_state"]))
        self.iteration = int(checkpoint["iteration"])
        tracker = checkpoint.get("loss_tracker", {})
        for name in ("loss_avg", "time_avg", "count"):
            if name in tracker:
                setattr(self._tracker, name, tracker[name])

    # -- running ----------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        """Current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def normalization(self) -> Normalization:
        """Intensity statistics of the training images (stored in checkpoints)."""
        return self.data.normalization

    @property
    def annotations(self) -> dict:
        """:func:`~.segmentation.summarize_annotations` of the current training labels."""
        return self.data.annotation_summary()

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` holds the training between steps."""
        return self._paused

    @property
    def held(self) -> bool:
        """Whether :meth:`steps` is waiting between steps because of :meth:`pause`.

        After ``pause()`` the step in progress still finishes; ``held`` turns True once it has,
        so a caller can show "paused" only when the training really is idle.
        """
        return self._held

    def pause(self) -> None:
        """Hold :meth:`steps` before its next step until :meth:`resume` or :meth:`stop`."""
        with self._control:
            self._paused = True

    def resume(self) -> None:
        """Let a paused :meth:`steps` go on."""
        with self._control:
            self._paused = False
            self._control.notify_all()

    def stop(self) -> None:
        """End :meth:`steps` after the current step (also when paused). Safe from any thread."""
        with self._control:
            self._stop_requested = True
            self._control.notify_all()

    def set_labels(self, index: int, labels) -> None:
        """Replace the labels of training pair ``index``; used from the next step on."""
        with self._lock:
            self.data.set_labels(index, labels)

    def steps(self) -> Iterator[TrainingReport]:
        """Train until ``config.iterations`` steps, :meth:`stop`, or lr below ``min_lr``.

        Yields
        ------
        TrainingReport
            After every optimizer step.

        Notes
        -----
        :attr:`stop_reason` says why it ended: ``"iterations"``, ``"stopped"`` or ``"lr"``.
        A stop requested before the first step is honoured (nothing runs) and then cleared,
        so calling ``steps()`` again continues the run.
        """
        self.stop_reason = None
        last_save = time.monotonic()
        try:
            while self.iteration < self.config.iterations:
                if not self._wait_until_running():
                    self.stop_reason = "stopped"
                    break
                report = self._step()
                yield report
                if self.lr < self.config.min_lr:
                    self.stop_reason = "lr"
                    break
                if self._autosave_due(last_save):
                    self.save(self.autosave_path)
                    last_save = time.monotonic()
            else:
                self.stop_reason = "iterations"
        finally:
            with self._control:
                self._stop_requested = False
        if self.autosave_path is not None:
            self.save(self.autosave_path)

    def _wait_until_running(self) -> bool:
        with self._control:
            self._held = self._paused and not self._stop_requested
            self._control.wait_for(lambda: self._stop_requested or not self._paused)
            self._held = False
            return not self._stop_requested

    def _autosave_due(self, last_save: float) -> bool:
        if self.autosave_path is None:
            return False
        every = self.config.autosave_iterations
        if every and self.iteration % every == 0:
            return True
        seconds = self.config.autosave_seconds
        return seconds is not None and time.monotonic() - last_save >= seconds

    def _step(self) -> TrainingReport:
        with self._lock:
            start = time.perf_counter()
            self.model.train()
            # g normalises with its own batch statistics, like f (see momentum.py).
            self.momentum_model.train()
            x_f, x_g, labels = distributed.rank_batch(self.data, self.config.batch_size,
                                                      self.rng, self.dist)
            x_f = distributed.pin(x_f, self.device).to(self.device, non_blocking=True)
            x_g = distributed.pin(x_g, self.device).to(self.device, non_blocking=True)
            # autocast covers the networks only; the loss promotes to float32 (loss.py)
            with distributed.autocast(self.device, self.amp_dtype):
                out_f, affinity_logits = self._forward_model(x_f, with_affinities=True)
                with torch.no_grad():
                    out_g = self.momentum_model(x_g)
            emb_f, foreground_logit = split_output(out_f, self.model.foreground)
            emb_g, _ = split_output(out_g, self.model.foreground)
            emb_f, emb_g = emb_f.float(), emb_g.float()
            if foreground_logit is not None:
                foreground_logit = foreground_logit.float()
            total, terms = self._embedding_losses(emb_f, emb_g, labels, affinity_logits)
            if foreground_logit is not None:
                config = self.config
                terms["fg"] = foreground_loss(foreground_logit, labels, config.mode,
                                              config.background_id, config.ignore_id,
                                              config.foreground_ring)
                total = total + config.foreground_weight * terms["fg"]
            if self.adversarial is not None:
                total, terms = self._add_adversarial(emb_f, labels, total, terms)
            values = torch.stack([total.detach(), *(t.detach() for t in terms.values())])
            # the mean over ranks: every rank reports, schedules and stops on the same numbers
            values = distributed.average_values(values.cpu().tolist(), self.dist)
            if not all(map(math.isfinite, values)):
                raise SpocoInputError(
                    f"The loss became non-finite at iteration {self.iteration + 1} "
                    f"({dict(zip(['total', *terms], values))}); the weights were left as they "
                    "were. Lower the learning rate or check the images for extreme values"
                    + (" (or set mixed_precision=False)." if self.amp_dtype else ".")
                )
            self.optimizer.zero_grad(set_to_none=True)
            # float16: a step whose gradients overflow is skipped (warned), never applied
            distributed.scaled_step(self.scaler, self.optimizer, total, self.iteration + 1)
            momentum_update(self.momentum_model, self.model, self.config.momentum)
            self.iteration += 1
            seconds = time.perf_counter() - start
            self._tracker.update(values[0], seconds)
            if self.scheduler is not None:
                self.scheduler.step(self._tracker.loss)
            remaining = self.config.iterations - self.iteration
            return TrainingReport(
                iteration=self.iteration,
                iterations=self.config.iterations,
                loss=values[0],
                terms=dict(zip(terms, values[1:])),
                smoothed_loss=self._tracker.loss,
                lr=self.lr,
                seconds_per_step=seconds,
                eta_seconds=remaining * self._tracker.seconds,
                device=str(self.device),
            )

    def _embedding_losses(self, emb_f, emb_g, labels, affinity_logits):
        """SPOCO's terms, CRAC's (``config.method``: "crac"), or their sum ("both")."""
        method = self.config.method
        total, terms = 0.0, {}
        if method != "crac":
            total, terms = self.loss_fn(emb_f, emb_g, labels, generator=self.loss_generator)
        if method != "spoco":
            crac_total, crac_terms = self.crac_loss(
                emb_f, affinity_logits.float(), labels, self.iteration, self.config.iterations)
            total, terms = total + crac_total, {**terms, **crac_terms}
        return total, terms

    def _add_adversarial(self, emb_f, labels, total, terms):
        """Train the critic on this step's masks; add zeta * (-E[D(fake)]) after the warm-up.

        Reports the unweighted generator term ``adv`` and the critic loss ``critic`` (with its
        gradient penalty) of the last critic iteration; both are 0 for a batch without objects.
        """
        settings, loss = self.config.adversarial, self.config.loss
        fake, real = object_masks(
            emb_f, labels, kernel_scale(loss.delta_v, loss.kernel_threshold),
            background_id=self.config.background_id,
            ignore_id=self.config.ignore_id, max_objects=settings.max_objects,
            crop_shape=settings.crop_shape or default_crop_shape(self.config.ndim),
            generator=self.adversarial.generator,
        )
        if fake.shape[0] == 0:
            zero = total.detach() * 0
            return total, {**terms, "adv": zero, "critic": zero}
        critic_loss = self.adversarial.train_critic(real, fake)
        active = self.iteration >= settings.warmup_iterations and settings.weight > 0
        with torch.set_grad_enabled(active):
            adv = self.adversarial.generator_loss(fake if active else fake.detach())
        if active:
            total = total + settings.weight * adv
        return total, {**terms, "adv": adv, "critic": total.new_tensor(critic_loss)}

    # -- saving -------------------------------------------------------------------------------

    def checkpoint_payload(self) -> dict:
        """Everything a checkpoint holds (model, momentum model, optimizer, config, RNG)."""
        with self._lock:
            return {
                "architecture": self.model.config,
                "model_state": self.model.state_dict(),
                "momentum_state": self.momentum_model.state_dict(),
                "normalization": self.normalization.to_dict(),
                "config": self.config.to_dict(),
                "annotations": self.annotations,
                "loss": self.loss_fn.config,
                "iteration": self.iteration,
                "optimizer_state": self.optimizer.state_dict(),
                "scheduler_state": None if self.scheduler is None else self.scheduler.state_dict(),
                "rng_state": {
                    "numpy": self.rng.bit_generator.state,
                    "loss": self.loss_generator.get_state(),
                },
                "loss_tracker": {
                    "loss_avg": self._tracker.loss_avg,
                    "time_avg": self._tracker.time_avg,
                    "count": self._tracker.count,
                },
                "source": None if self.source is None else os.fspath(self.source),
                **({} if self.adversarial is None
                   else {"adversarial_state": self.adversarial.state_dict()}),
            }

    def save(self, path) -> Path:
        """Write a checkpoint atomically (safe to call from another thread between steps).

        In a distributed run only rank 0 writes; the other ranks return the path unwritten.
        """
        if not self.dist.is_main:
            return Path(path)
        return save_checkpoint(path, self.checkpoint_payload())
