"""The SPOCO dock widget: Data, Train and Segment tabs sharing one viewer and one model."""

from __future__ import annotations

import functools
import logging

from psygnal import EmitLoopError
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QScrollArea, QTabWidget, QVBoxLayout, QWidget

from ._session import dropped_models
from .data_widget import DataWidget
from .keys import viewer_keys
from .segment_widget import SegmentWidget
from .session_model import SpocoSession
from .train_widget import TrainWidget
from .workers import start_function_worker, warm_up_imports


def _stop_training(train, *args) -> None:
    trainer = getattr(train, "trainer", None)
    if trainer is not None:
        trainer.stop()


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(widget)
    return area


class SpocoWidget(QWidget):
    """Annotate a few objects, fine-tune live, inspect and accept.

    The tabs share one :class:`.session_model.SpocoSession` (``self.session``): the Train tab
    writes the run's state, snapshot and checkpoint to it, the Segment tab and "Suggest next"
    follow its events; no tab reaches into another for them.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari when the widget is opened from the Plugins menu.
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = SpocoSession()
        self.data = DataWidget(napari_viewer, session=self.session)
        self.train = TrainWidget(napari_viewer, self.data, session=self.session)
        self.segment = SegmentWidget(napari_viewer, self.data, session=self.session)
        self.tabs = QTabWidget()
        self.tabs.addTab(_scrolled(self.data), "Data")
        self.tabs.addTab(_scrolled(self.train), "Train")
        self.tabs.addTab(_scrolled(self.segment), "Segment")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        self.setMinimumWidth(420)
        self.train.finished.connect(self._on_trained)
        # The reader opens this dock first, then offers the checkpoint: no stale pick-up here.
        dropped_models.dropped.connect(self.use_model)
        # If napari closes without closing the dock first, still stop a running training (it
        # saves its checkpoint); only the Python side of the widgets is used then.
        self.destroyed.connect(functools.partial(_stop_training, self.train))
        self.warm_up_seconds = None
        self._warm_up = start_function_worker(
            warm_up_imports, on_return=self._on_warm, on_error=self._on_warm_failed)

    def _on_warm(self, seconds):
        self.warm_up_seconds = seconds

    def _on_warm_failed(self, error):
        # Nothing is lost: the imports then happen when training starts.
        logging.getLogger(__name__).warning("napari-spoco: warm-up failed: %s", error)
        self.warm_up_seconds = float("nan")

    @property
    def warming_up(self) -> bool:
        """Whether the imports done when the dock opens are still running."""
        return self.warm_up_seconds is None and self._warm_up is not None

    def use_model(self, path) -> None:
        """Make the checkpoint ``path`` the model to fine-tune and to segment with."""
        try:
            # The Train tab's source model is its own choice; the Segment tab follows the session.
            self.train.settings.add_model(path)
            self.session.use_model(path)
        except (RuntimeError, EmitLoopError):  # this dock's Qt side is gone (napari closed it)
            dropped_models.dropped.disconnect(self.use_model)

    def _on_trained(self, result):
        # After a run the Segment tab offers the fresh model; its snapshot is the current one
        # (and its clustering settings come from core.segmentation, like the CLI's).
        self.session.model = None

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Stop training, write pending annotations, let the warm-up finish (viewer closes)."""
        import time

        from qtpy.QtCore import QCoreApplication

        self.train.shutdown(timeout_s)
        deadline = time.monotonic() + timeout_s
        while self.warming_up and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.01)
        self.data.autosave.close()
        viewer_keys(self.viewer).restore()
        from .clustering_process import stop as stop_clustering_process

        stop_clustering_process()  # scoped to the dock; a later request starts it again
        try:
            dropped_models.dropped.disconnect(self.use_model)
        except (TypeError, ValueError, RuntimeError):
            pass

    def closeEvent(self, event):  # noqa: N802 (Qt name)
        self.shutdown()
        super().closeEvent(event)
