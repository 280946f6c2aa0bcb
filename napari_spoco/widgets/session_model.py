"""One dock session's shared state, evented and free of Qt and napari.

The Data, Train and Segment tabs (and the Data tab's "Suggest next" panel) used to hold this
state themselves and reach into each other for it. Now :class:`SpocoSession` holds it, the
Train tab writes to it, and the other tabs connect to its ``events`` (psygnal, like napari's
``EventedModel``: ``session.events.snapshot.connect(callback)``). Each field has one signal,
emitted with ``(new, old)`` only when the value really changes, so a tab that writes the value
it was just told about does not start a loop.

Only psygnal, the standard library and numpy are imported here: the state and its rules can
be tested without a viewer or a display.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import evented

from napari_spoco.core.errors import SpocoInputError

if TYPE_CHECKING:
    from .preview import ModelSnapshot

__all__ = ["EmbeddingsCache", "SpocoSession", "TrainingPhase", "TrainingState"]


class TrainingPhase(str, Enum):
    """Where a training run stands (``str`` values, for messages and logs)."""

    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"


_ACTIVE = (TrainingPhase.RUNNING, TrainingPhase.PAUSED, TrainingPhase.STOPPING)


@dataclass(frozen=True)
class TrainingState:
    """The phase of the training run and its step; each transition returns a new state.

    Frozen and compared by value, so a report of the step already shown changes nothing.

    Parameters
    ----------
    phase : TrainingPhase
        Idle (no run), running, paused (between two steps), or stopping (stop requested, the
        checkpoint is being saved).
    step : int
        The last training step reported (kept when the run ends).
    iterations : int
        The steps the run was started for.
    """

    phase: TrainingPhase = TrainingPhase.IDLE
    step: int = 0
    iterations: int = 0

    @property
    def active(self) -> bool:
        """Whether a run exists (running, paused or stopping)."""
        return self.phase in _ACTIVE

    def started(self, iterations: int) -> TrainingState:
        """A new run of ``iterations`` steps, from step 0."""
        if self.active:
            raise SpocoInputError(f"Training is already {self.phase.value}: stop it (and wait "
                                  "until it has saved) before starting a new run.")
        return TrainingState(TrainingPhase.RUNNING, 0, int(iterations))

    def at(self, step: int) -> TrainingState:
        """The same run, now at ``step``."""
        self._require_run("report a training step")
        return replace(self, step=int(step))

    def paused(self) -> TrainingState:
        """Paused after the current step (a stopping run keeps stopping)."""
        self._require_run("pause")
        if self.phase is TrainingPhase.RUNNING:
            return replace(self, phase=TrainingPhase.PAUSED)
        return self

    def resumed(self) -> TrainingState:
        """Running again (a stopping run keeps stopping)."""
        self._require_run("resume")
        if self.phase is TrainingPhase.PAUSED:
            return replace(self, phase=TrainingPhase.RUNNING)
        return self

    def stopping(self) -> TrainingState:
        """Stop requested: the run ends after the current step and saves its checkpoint."""
        self._require_run("stop")
        return replace(self, phase=TrainingPhase.STOPPING)

    def ended(self) -> TrainingState:
        """No run any more (finished, stopped or failed); the last step is kept."""
        return replace(self, phase=TrainingPhase.IDLE)

    def _require_run(self, action: str) -> None:
        if not self.active:
            raise SpocoInputError(f"Cannot {action}: no training is running. Press Train "
                                  "first.")


@dataclass(frozen=True, eq=False)
class EmbeddingsCache:
    """The Segment tab's last prediction, kept so that re-clustering needs no new prediction.

    Compared by identity (``eq=False``): it holds arrays, and a new prediction is a new cache.

    Parameters
    ----------
    image : str
        Name of the image layer that was predicted.
    model : str
        Which model predicted it: a checkpoint path, or ``"snapshot@<iteration>"``.
    view : object
        The ``ImageView`` that was predicted (scale, translate, channel axis, layer).
    embeddings : array
        The pixel embeddings, ``(channels, *spatial)``.
    foreground : array or None
        The foreground probability, when the model predicts one.
    source : object
        The loaded model or snapshot (its clustering settings, for re-clustering).
    blocks : int or None
        Number of blocks when the image was segmented block by block (re-clustering then
        predicts again), else None.
    """

    image: str
    model: str
    view: Any
    embeddings: Any
    foreground: Any = None
    source: Any = None
    blocks: int | None = None

    @property
    def blockwise(self) -> bool:
        """Whether the image was segmented block by block (no embeddings kept in memory)."""
        return bool(self.blocks)


@evented(equality_operators={
    # A snapshot holds tensors and a cache holds arrays: a new one is a change, and equal
    # values would be expensive (or ambiguous) to compare.
    "snapshot": operator.is_,
    "embeddings": operator.is_,
})
@dataclass(eq=False)
class SpocoSession:
    """The state the tabs of one SPOCO dock share.

    Parameters
    ----------
    models : tuple of str
        Checkpoint files offered in this session (``SpocoWidget.use_model``, a checkpoint
        dropped onto napari, a file chosen in the Segment tab), oldest first.
    model : str or None
        The model the Segment tab segments with: a checkpoint path, or None for the newest
        training snapshot ("current model").
    image : str or None
        The image layer the Segment tab segments.
    snapshot : ModelSnapshot or None
        The newest weights of the training run (a live preview or the end of training);
        "Suggest next" and the Segment tab's current model use it.
    checkpoint : pathlib.Path or None
        The last checkpoint training wrote (the Train tab exports it).
    training : TrainingState
        The phase and step of the training run.
    embeddings : EmbeddingsCache or None
        The Segment tab's last prediction; dropped when ``model`` or ``image`` changes.
    """

    models: tuple = ()
    model: str | None = None
    image: str | None = None
    snapshot: ModelSnapshot | None = None
    checkpoint: Path | None = None
    training: TrainingState = field(default_factory=TrainingState)
    embeddings: EmbeddingsCache | None = None

    def __post_init__(self):
        # Connected first, so the cache is gone before any tab hears of the new choice.
        self.events.model.connect(self._choice_changed)
        self.events.image.connect(self._choice_changed)

    def _choice_changed(self, *args) -> None:
        # Embeddings of another image, or of another model, must not be re-clustered as if they
        # were this one's. A new snapshot of the current model keeps them: re-clustering while
        # training goes on stays possible, as before.
        self.invalidate()

    # -- models -------------------------------------------------------------------------------

    def add_model(self, path) -> str:
        """Offer the checkpoint ``path`` (once); returns it as the string the tabs use."""
        path = str(path)
        if path not in self.models:
            self.models = (*self.models, path)
        return path

    def use_model(self, path) -> None:
        """Offer the checkpoint ``path`` and make it the model to segment with."""
        self.model = self.add_model(path)

    # -- embeddings ---------------------------------------------------------------------------

    def invalidate(self) -> bool:
        """Drop the cached embeddings; returns whether there were any."""
        had = self.embeddings is not None
        self.embeddings = None
        return had

    # -- training -----------------------------------------------------------------------------

    def start_training(self, iterations: int) -> None:
        """A run of ``iterations`` steps has started (raises if one is active)."""
        self.training = self.training.started(iterations)

    def training_step(self, step: int) -> None:
        """The run reported ``step``."""
        self.training = self.training.at(step)

    def pause_training(self) -> None:
        """The run pauses after its current step."""
        self.training = self.training.paused()

    def resume_training(self) -> None:
        """The paused run goes on."""
        self.training = self.training.resumed()

    def stop_training(self) -> None:
        """The run stops after its current step, then saves."""
        self.training = self.training.stopping()

    def training_ended(self) -> None:
        """The run is over (finished, stopped, or failed)."""
        self.training = self.training.ended()

    def trained(self, snapshot, checkpoint) -> None:
        """The run ended with the weights ``snapshot``, saved at ``checkpoint``."""
        self.snapshot = snapshot
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
