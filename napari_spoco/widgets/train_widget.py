"""The Train tab: start, pause, resume and stop training in a worker, with a live preview."""

from __future__ import annotations

import gc
import time

from napari.layers import Labels
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.run_defaults import smallest_shape
from napari_spoco.core.training.distributed import device_line

from ._logic import progress_text
from .export_button import ExportButton
from .loss_plot import LossPlot
from .narrow import WrappingLabel
from .notifications import notify_info, notify_warning, report_error
from .preview import PreviewRequest, PreviewResult, PreviewSchedule
from .preview_layers import prepare_preview_layers, preview_request, show_preview_layers
from .session_model import SpocoSession
from .train_settings import TrainSettings
from .workers import (
    PreviewFailed,
    TrainerReady,
    TrainingFinished,
    start_function_worker,
    start_training_worker,
)


class TrainWidget(QWidget):
    """Training controls, progress, loss curve and live preview.

    The run's phase and step, its newest snapshot and its checkpoint are written to
    ``session`` (a :class:`.session_model.SpocoSession`, a new one when not given), where the
    other tabs read them.
    """

    finished = Signal(object)  # TrainingFinished
    preview_shown = Signal(object)  # PreviewResult

    def __init__(self, viewer, data_widget, parent=None, session: SpocoSession | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.data = data_widget
        self.session = SpocoSession() if session is None else session
        self.settings = TrainSettings()
        self.start_button = QPushButton("Train")
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.push_button = QPushButton("Push annotations")
        self.push_button.setToolTip(
            "Send what you painted since training started to the running training")
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("not started")
        self.loss_plot = LossPlot()
        self.status = WrappingLabel("")

        buttons = QHBoxLayout()
        for button in (self.start_button, self.pause_button, self.stop_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.settings)
        layout.addLayout(buttons)
        layout.addWidget(self.push_button)
        self.export_button = ExportButton(self)
        layout.addWidget(self.export_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.loss_plot)
        layout.addWidget(self.status)
        layout.addStretch()

        self.worker = None
        self.trainer = None
        self.schedule = PreviewSchedule()
        self.last_report = None
        self.first_preview_seconds = None
        self._views = []
        self._labels_layers = []
        self._pending = []  # "pause"/"stop" pressed before the trainer existed
        self._started_at = None
        self._reveal_preview = False

        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.push_button.clicked.connect(self.push_annotations)
        self.settings.preview_check.toggled.connect(self._on_preview_settings)
        self.settings.preview_spin.valueChanged.connect(self._on_preview_settings)
        self.data.pairs_changed.connect(self._suggest_patch)
        self._view_timer = QTimer(self)
        self._view_timer.setSingleShot(True)
        self._view_timer.setInterval(150)
        self._view_timer.timeout.connect(self.post_preview_request)
        camera = _camera(viewer)
        for event in (camera.events.center, camera.events.zoom,
                      viewer.dims.events.current_step, viewer.dims.events.ndisplay,
                      viewer.dims.events.order):
            event.connect(self._on_view_changed)
        self._update_buttons()
        self._suggest_patch()

    def _on_view_changed(self, event=None):
        if self.running:
            self._view_timer.start()

    # -- state ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a training worker is alive (also while paused)."""
        return self.worker is not None

    @property
    def latest_checkpoint(self):
        """The last checkpoint this session's training wrote (``session.checkpoint``)."""
        return self.session.checkpoint

    def _update_buttons(self):
        self.pause_button.setEnabled(self.running)
        self.stop_button.setEnabled(self.running)
        self.push_button.setEnabled(self.running)
        paused = self.trainer is not None and self.trainer.paused
        self.pause_button.setText("Resume" if paused else "Pause")

    def _suggest_patch(self):
        try:
            views = [view for view, _ in self._quiet_pairs()]
        except SpocoInputError:
            return
        if views:
            self.settings.suggest_patch(smallest_shape(v.spatial_shape for v in views))

    def _quiet_pairs(self):
        from .layers import image_view

        pairs = []
        for row in self.data.rows:
            if row.image_layer() is not None:
                pairs.append((image_view(row.image_layer(),
                                         self.data.channel_combo.currentText()), None))
        return pairs

    # -- start / pause / stop ------------------------------------------------------------------

    def start(self):
        """Start training on the Data tab's pairs (a notification says what is missing)."""
        if self.running:
            notify_warning("Training is already running: press Pause/Resume, or Stop it before "
                           "starting a new run.")
            return None
        try:
            arrays, channel_axis, ndim, views = self.data.training_pairs()
            config = self.settings.config(ndim, channel_axis, self.data.background_id,
                                          shapes=[view.spatial_shape for view in views],
                                          spacings=[view.scale for view in views])
            source = self.settings.source_path()
            save_path = self.settings.save_path()
            self.session.start_training(config.iterations)  # last: it refuses a second run
        except SpocoInputError as err:
            report_error(self.status, err, "starting training")
            return None
        from napari_spoco.core.inference.segmentation import training_notes
        from napari_spoco.core.training import Trainer

        for note in training_notes(arrays, config):
            notify_warning(note)
        # Python's full garbage collection scans every object of napari's large heap (0.2 s on
        # a slow CPU) whichever thread triggers it, and training allocates enough to trigger
        # it often. While training runs, the objects that exist now (napari, Qt, torch) are
        # kept out of its reach (gc.freeze), so those collections stay short; reference
        # counting still frees them, and _on_finish hands them back to the collector.
        gc.freeze()
        self._views = views
        self._labels_layers = [row.labels_layer() for row in self.data.rows]
        self._pending = []
        self.trainer = None
        self.last_report = None
        self.first_preview_seconds = None
        self.loss_plot.clear()
        self.progress.setRange(0, config.iterations)
        self.progress.setValue(0)
        self.progress.setFormat("preparing data…")
        self.schedule = PreviewSchedule(self.settings.preview_spin.value(),
                                        self.settings.preview_check.isChecked())
        self.post_preview_request()
        if self.schedule.enabled:
            self._prepare_preview_layers()
        self._started_at = time.perf_counter()

        def make_trainer():
            return Trainer(arrays, config, source=source, autosave_path=save_path)

        self.worker = start_training_worker(
            make_trainer, self.schedule, save_path,
            on_yield=self._on_yield, on_return=self._on_return, on_error=self._on_error,
            on_finish=self._on_finish,
        )
        self.status.setText(f"training on {len(arrays)} image(s)…")
        self._update_buttons()
        return self.worker

    def toggle_pause(self):
        """Pause a running training, or resume a paused one."""
        if not self.running:
            return
        if self.trainer is None:
            self._pending.append("pause")
            return
        if self.trainer.paused:
            self.trainer.resume()
            self.session.resume_training()
            self.status.setText("training resumed")
        else:
            self.trainer.pause()
            self.session.pause_training()
            self.status.setText("paused after the current step: paint, push, or resume")
        self._update_buttons()

    def pause(self):
        if self.running and (self.trainer is None or not self.trainer.paused):
            self.toggle_pause()

    def resume(self):
        if self.running and self.trainer is not None and self.trainer.paused:
            self.toggle_pause()

    def stop(self):
        """Stop after the current step; the checkpoint is saved where 'save to' says."""
        if not self.running:
            return
        if self.trainer is None:
            self._pending.append("stop")
        else:
            self.trainer.stop()
        self.session.stop_training()
        self.status.setText("stopping after the current step, then saving…")

    def push_annotations(self):
        """Hand the current annotations to the running training (from its next step on)."""
        if self.trainer is None:
            notify_warning("No training is running: press Train first.")
            return None
        trainer = self.trainer
        labels = [layer.data.copy() if isinstance(layer, Labels) else None
                  for layer in self._labels_layers]

        def push():
            # set_labels waits for the running step: never on the main thread.
            for index, array in enumerate(labels):
                if array is not None:
                    trainer.set_labels(index, array)
            return len(labels)

        return start_function_worker(
            push, on_return=lambda n: notify_info(f"Training now uses the annotations of {n} "
                                                  "image(s)."),
            on_error=lambda err: report_error(self.status, err, "pushing annotations"),
        )

    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """Stop a running training and wait until it has saved (the widget or viewer closes).

        Returns whether the worker ended within ``timeout_s``.
        """
        from qtpy.QtCore import QCoreApplication

        if not self.running:
            return True
        self.stop()
        deadline = time.monotonic() + timeout_s
        while self.worker is not None and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.01)
        return self.worker is None

    # -- worker signals -----------------------------------------------------------------------

    def _on_yield(self, item):
        if isinstance(item, TrainerReady):
            self.trainer = item.trainer
            from napari_spoco.core.model.input_scale import describe_input_scale

            scale_line = describe_input_scale(self.trainer.config, self.trainer.annotations)
            self.status.setText(f"{self.status.text()}  Device: {device_line(self.trainer)}"
                                + (f"; {scale_line}" if scale_line else ""))
            for action in self._pending:
                (self.trainer.pause if action == "pause" else self.trainer.stop)()
                if action == "pause":  # a pending stop is in the session since Stop was pressed
                    self.session.pause_training()
            self._pending = []
            self._update_buttons()
        elif isinstance(item, PreviewResult):
            self.show_preview(item)
        elif isinstance(item, PreviewFailed):
            self.settings.preview_check.setChecked(False)
            report_error(self.status, item.error,
                         "computing the live preview (previews are now off)")
        else:
            self._show_report(item)

    def _show_report(self, report):
        self.last_report = report
        self.progress.setMaximum(report.iterations)
        self.progress.setValue(report.iteration)
        self.progress.setFormat(progress_text(report.iteration, report.iterations, report.loss,
                                              report.seconds_per_step))
        self.loss_plot.add(report.iteration, report.loss)
        self.session.training_step(report.iteration)

    def _on_return(self, result: TrainingFinished):
        self.session.trained(result.snapshot, result.path)
        reason = {"iterations": "finished", "stopped": "stopped", "lr": "converged (lr floor)"}
        word = reason.get(result.reason, "ended")
        self.status.setText(f"{word} at iteration {result.iteration}; saved {result.path}")
        self.progress.setFormat(f"{word} at {result.iteration}")
        notify_info(f"Training {word} at iteration {result.iteration}; model saved to "
                    f"{result.path}.")
        self.finished.emit(result)

    def _on_error(self, error):
        self.progress.setFormat("failed")
        report_error(self.status, error, "training")

    def _on_finish(self):
        gc.unfreeze()
        self.worker = None
        self.trainer = None
        self.session.training_ended()
        self._update_buttons()

    # -- live preview ----------------------------------------------------------------------

    def _on_preview_settings(self, *args):
        self.schedule.enabled = self.settings.preview_check.isChecked()
        self.schedule.interval = self.settings.preview_spin.value()

    def preview_request(self) -> PreviewRequest | None:
        """Describe the part of a training image the user looks at, or None."""
        patch = self.settings.patch_edit.text().split(",")
        depth = int(patch[0]) if patch and patch[0].strip().isdigit() else 16
        return preview_request(self.viewer, self._views, depth)

    def post_preview_request(self):
        """Tell the training thread what to preview next (the newest view wins)."""
        if not self._views:
            return
        try:
            self.schedule.post(self.preview_request())
        except Exception as err:  # never let a camera event raise into napari
            report_error(self.status, err, "following the view for the live preview")

    def _prepare_preview_layers(self):
        # Adding a napari layer costs 0.1-0.6 s of main-thread time (more with software
        # OpenGL): paid when Train is pressed, each preview is then an in-place update.
        if self.schedule.request is not None:
            prepare_preview_layers(self.viewer, self.schedule.request, self._labels_layers)
            self._reveal_preview = True

    def show_preview(self, result: PreviewResult):
        """Write a preview into the "embeddings (PCA)" and "instances" layers (main thread)."""
        show_preview_layers(self.viewer, result, self._labels_layers, reveal=self._reveal_preview)
        self._reveal_preview = False
        if result.snapshot is not None:
            self.session.snapshot = result.snapshot
        if self.first_preview_seconds is None and self._started_at is not None:
            self.first_preview_seconds = time.perf_counter() - self._started_at
        self.status.setText(
            f"preview at iteration {result.iteration} ({result.seconds:.2f} s to compute)")
        self.preview_shown.emit(result)


def _camera(viewer):
    # napari 0.9 moved the camera to viewer.scene; older versions keep viewer.camera.
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera
