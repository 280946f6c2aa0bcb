"""The dock's tabs follow its shared session (``SpocoWidget.session``), not each other."""

import numpy as np
import pytest
from test_widgets_errors import write_2d_checkpoint
from test_widgets_support import messages, paint_objects, small_image, tiny, wait_until
from training_support import tiny as tiny_config

pytestmark = pytest.mark.gui


def test_tabs_react_to_changes_made_on_the_session(spoco, qtbot, notes, tmp_path):
    from napari_spoco.core.training import Trainer
    from napari_spoco.widgets.preview import ModelSnapshot
    from napari_spoco.widgets.segment_widget import CURRENT_MODEL
    from napari_spoco.widgets.session_model import EmbeddingsCache
    from napari_spoco.widgets.suggest_panel import NO_MODEL

    viewer, widget = spoco
    session, suggest, segment = widget.session, widget.data.suggest, widget.segment
    assert suggest.session is session and segment.session is session
    assert widget.train.session is session
    image, truth = small_image()
    viewer.add_image(image, name="blobs")
    viewer.add_image(image[::-1].copy(), name="flipped")
    labels = widget.data.create_labels()
    paint_objects(labels, truth, [1, 2], widget.data)
    assert not suggest.button.isEnabled() and suggest.button.toolTip() == NO_MODEL

    # A checkpoint offered on the session appears in the Segment tab's list, selected.
    path = write_2d_checkpoint(tmp_path / "offered.pt")
    session.use_model(path)
    assert segment.model_combo.currentData() == str(path)
    assert segment.model_combo.currentText() == "file: offered.pt"

    # Weights set on the session (as the Train tab does) enable Suggest next, and choosing the
    # current model on the session segments with exactly those weights.
    trainer = Trainer([(image, np.asarray(labels.data))],
                      tiny_config(iterations=2, autosave_seconds=None))
    for _ in trainer.steps():
        pass
    session.snapshot = ModelSnapshot.of(trainer)
    assert suggest.button.isEnabled() and "least sure" in suggest.button.toolTip()
    session.model = None
    assert segment.model_combo.currentText() == CURRENT_MODEL
    segment.image_combo.setCurrentText("blobs")
    assert session.image == "blobs"
    assert segment.predict() is not None
    wait_until(qtbot, lambda: segment.worker is None)
    assert messages(notes, "error") == []
    cache = session.embeddings
    assert isinstance(cache, EmbeddingsCache) and segment.cache is cache
    assert cache.image == "blobs" and cache.model == "snapshot@2"
    # the snapshot's 16 channels, not the 8 of the checkpoint chosen before
    channels = session.snapshot.architecture["out_channels"]
    assert channels != 8 and cache.embeddings.shape == (channels, *image.shape)
    assert segment.recluster_button.isEnabled() and segment.accept_button.isEnabled()

    # Choosing another image drops the embeddings: "Segment again" is off until a new predict.
    segment.image_combo.setCurrentText("flipped")
    assert session.image == "flipped" and session.embeddings is None
    assert not segment.recluster_button.isEnabled()
    assert segment.accept_button.isEnabled()  # the shown result can still be accepted from

    # Without weights Suggest next is off again (the S key still explains why).
    session.snapshot = None
    assert not suggest.button.isEnabled()
    assert suggest.suggest() is None
    assert any("train in the Train tab" in m for m in messages(notes, "error"))


def test_the_train_tab_writes_its_run_into_the_session(spoco, qtbot, notes, tmp_path):
    from napari_spoco.core.model.checkpoint import load_model
    from napari_spoco.widgets.segment_widget import CURRENT_MODEL
    from napari_spoco.widgets.session_model import TrainingPhase

    viewer, widget = spoco
    session = widget.session
    image, truth = small_image()
    viewer.add_image(image, name="blobs")
    paint_objects(widget.data.create_labels(), truth, [1, 2], widget.data)
    widget.use_model(write_2d_checkpoint(tmp_path / "other.pt"))  # Segment tab: a file
    assert widget.segment.model_combo.currentText() == "file: other.pt"
    tiny(widget, tmp_path / "trained.pt", iterations=3)
    phases = []
    session.events.training.connect(lambda new, old: phases.append((new.phase, new.step)))

    assert widget.train.start() is not None
    assert session.training.phase is TrainingPhase.RUNNING and session.training.iterations == 3
    wait_until(qtbot, lambda: widget.train.worker is None, timeout=120_000)
    assert messages(notes, "error") == []
    assert phases[0] == (TrainingPhase.RUNNING, 0) and phases[-1] == (TrainingPhase.IDLE, 3)
    assert [step for _, step in phases] == sorted(step for _, step in phases)  # no step lost
    assert session.checkpoint == tmp_path / "trained.pt" == widget.train.latest_checkpoint
    assert session.snapshot is not None and session.snapshot.iteration == 3
    assert load_model(session.checkpoint).iteration == 3
    # the dock makes the fresh model the Segment tab's, and Suggest next usable
    assert session.model is None and widget.segment.model_combo.currentText() == CURRENT_MODEL
    assert widget.data.suggest.button.isEnabled()


def test_choosing_a_source_file_asks_for_it_once(spoco, monkeypatch, tmp_path):
    # Inserting the chosen file before "choose a file…" shifts the current row; Qt reports
    # that as a new index, which used to open the file dialog a second time.
    from qtpy.QtWidgets import QFileDialog

    from napari_spoco.widgets.train_settings import CHOOSE_FILE

    _, widget = spoco
    settings = widget.train.settings
    path = write_2d_checkpoint(tmp_path / "source.pt")
    asked = []

    def choose(*args, **kwargs):
        asked.append(args)
        return str(path), ""

    monkeypatch.setattr(QFileDialog, "getOpenFileName", choose)
    settings.source_combo.setCurrentIndex(settings.source_combo.findData(CHOOSE_FILE))
    assert len(asked) == 1
    assert settings.source_path() == str(path)
