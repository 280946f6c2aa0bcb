"""The dock's shared session state (``widgets.session_model``), driven without a viewer or Qt."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.widgets.session_model import (
    EmbeddingsCache,
    SpocoSession,
    TrainingPhase,
    TrainingState,
)

FIELDS = ("models", "model", "image", "snapshot", "checkpoint", "training", "embeddings")


def record(session):
    """Every event the session emits, as ``(field, new value)``, in order."""
    log = []
    for name in FIELDS:
        getattr(session.events, name).connect(
            lambda new, old, name=name: log.append((name, new)))
    return log


def a_cache(image="blobs", model="/m.pt"):
    return EmbeddingsCache(image=image, model=model, view=None,
                           embeddings=np.zeros((4, 8, 8), np.float32))


def test_events_fire_once_per_real_change_and_not_for_equal_values():
    session = SpocoSession()
    log = record(session)
    session.use_model("/models/a.pt")
    assert log == [("models", ("/models/a.pt",)), ("model", "/models/a.pt")]
    log.clear()
    session.use_model(Path("/models/a.pt"))  # the same file, as a Path: nothing changes
    session.add_model("/models/a.pt")
    session.model = "/models/a.pt"
    assert log == []
    session.add_model("/models/b.pt")  # offered, not chosen
    assert log == [("models", ("/models/a.pt", "/models/b.pt"))]
    assert session.model == "/models/a.pt"
    log.clear()

    # A snapshot is compared by identity: a new object is a change even if it compares equal.
    first, second = {"iteration": 1}, {"iteration": 1}
    session.snapshot = first
    session.snapshot = first
    session.snapshot = second
    assert log == [("snapshot", first), ("snapshot", second)]
    log.clear()
    session.trained(second, "/out/model.pt")
    assert log == [("checkpoint", Path("/out/model.pt"))]
    session.trained(second, Path("/out/model.pt"))
    assert len(log) == 1 and session.checkpoint == Path("/out/model.pt")


def test_cached_embeddings_are_dropped_when_the_image_or_the_model_changes():
    session = SpocoSession(model="/m.pt", image="blobs")
    log = record(session)
    cache = a_cache()
    session.embeddings = cache
    session.embeddings = cache  # same cache again: no event
    assert log == [("embeddings", cache)] and session.embeddings is cache
    log.clear()

    session.image = "blobs"  # unchanged choice: the cache stays
    session.model = "/m.pt"
    session.snapshot = object()  # newer weights of the current model do not drop it either
    assert session.embeddings is cache
    assert [name for name, _ in log] == ["snapshot"]
    log.clear()

    # the cache goes first, so a tab hearing of the new image already sees it gone
    session.image = "other"
    assert session.embeddings is None
    assert log == [("embeddings", None), ("image", "other")]

    session.embeddings = a_cache(image="other")
    log.clear()
    session.use_model("/n.pt")
    assert session.embeddings is None
    assert log == [("models", ("/n.pt",)), ("embeddings", None), ("model", "/n.pt")]

    session.embeddings = a_cache()
    assert session.invalidate() is True and session.embeddings is None
    log.clear()
    assert session.invalidate() is False  # nothing to drop: no event
    assert log == []


def test_the_embeddings_cache_is_compared_by_identity_and_knows_a_blockwise_result():
    cache = a_cache()
    same_values = a_cache()
    assert cache != same_values  # by identity: no element-wise array comparison
    assert not cache.blockwise
    blocks = EmbeddingsCache(image="big", model="snapshot@3", view=None, embeddings=None,
                             blocks=12)
    assert blocks.blockwise


def test_training_state_transitions():
    session = SpocoSession()
    log = record(session)
    assert session.training == TrainingState() and not session.training.active

    session.start_training(100)
    assert session.training == TrainingState(TrainingPhase.RUNNING, 0, 100)
    session.training_step(1)
    session.training_step(1)  # the same report twice: one event
    session.training_step(2)
    session.pause_training()
    session.pause_training()  # already paused: no event
    assert session.training == TrainingState(TrainingPhase.PAUSED, 2, 100)
    session.training_step(3)  # a step finishing while pausing keeps the run paused
    assert session.training.phase is TrainingPhase.PAUSED
    session.resume_training()
    session.stop_training()
    session.pause_training()  # a stop request is not undone by Pause or Resume
    session.resume_training()
    assert session.training == TrainingState(TrainingPhase.STOPPING, 3, 100)
    assert session.training.active
    session.training_ended()
    assert session.training == TrainingState(TrainingPhase.IDLE, 3, 100)

    phases = [(new.phase.value, new.step) for name, new in log if name == "training"]
    assert phases == [("running", 0), ("running", 1), ("running", 2), ("paused", 2),
                      ("paused", 3), ("running", 3), ("stopping", 3), ("idle", 3)]

    # no run: pausing, stopping or reporting a step is refused; a new run starts from 0
    for action in (session.pause_training, session.resume_training, session.stop_training,
                   lambda: session.training_step(4)):
        with pytest.raises(SpocoInputError, match="no training is running"):
            action()
    session.start_training(5)
    assert session.training == TrainingState(TrainingPhase.RUNNING, 0, 5)
    with pytest.raises(SpocoInputError, match="already running"):
        session.start_training(5)


def test_two_sessions_do_not_share_state():
    first, second = SpocoSession(), SpocoSession()
    heard = []
    second.events.model.connect(lambda new, old: heard.append(new))
    first.use_model("/a.pt")
    first.start_training(3)
    assert second.models == () and second.model is None and heard == []
    assert second.training.phase is TrainingPhase.IDLE


BLOCK_GUI = """
import sys
for name in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'superqt', 'vispy',
             'magicgui'):
    sys.modules[name] = None  # any import of them now fails
from napari_spoco.widgets.session_model import SpocoSession
session = SpocoSession()
session.use_model('/a.pt')
session.start_training(2)
loaded = sorted(m for m in sys.modules if m.split('.')[0] in
                ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'torch')
                and sys.modules[m] is not None)
print('loaded:', loaded)
"""


def test_importing_the_session_model_imports_neither_qt_nor_napari_nor_torch():
    run = subprocess.run([sys.executable, "-c", BLOCK_GUI], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "loaded: []"
