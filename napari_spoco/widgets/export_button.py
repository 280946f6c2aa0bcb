"""The Train tab's "Export for bioimage.io…" button: the current model as a model package."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog, QPushButton

from napari_spoco.core.errors import SpocoInputError

from .notifications import notify_info, report_error
from .workers import start_function_worker


def current_model_path(train_widget) -> str | None:
    """The checkpoint to export: the last one trained here, else the chosen source model."""
    if train_widget.latest_checkpoint is not None:
        return str(train_widget.latest_checkpoint)
    return train_widget.settings.source_path()


class ExportButton(QPushButton):
    """Exports the Train tab's current model (see :func:`current_model_path`) in a worker."""

    def __init__(self, train_widget, parent=None):
        super().__init__("Export for bioimage.io…", parent)
        self.setToolTip("Write the current model (the last trained, else the source model) as "
                        "a bioimage.io model package (.zip) to share or run in other tools")
        self.train_widget = train_widget
        self.worker = None
        self.last_export = None  # Path of the last package written
        self.clicked.connect(lambda: self.export())

    def export(self, out: str | None = None):
        """Export to ``out`` (asks with a file dialog when not given); returns the worker."""
        status = self.train_widget.status
        checkpoint = current_model_path(self.train_widget)
        if checkpoint is None:
            report_error(status, SpocoInputError(
                "There is no model to export yet: train one, or choose a source model."),
                "exporting")
            return None
        if out is None:
            suggested = str(Path(checkpoint).with_suffix(".zip"))
            out, _ = QFileDialog.getSaveFileName(self, "Export for bioimage.io", suggested,
                                                 "bioimage.io package (*.zip)")
            if not out:
                return None
        if not out.lower().endswith(".zip"):
            out += ".zip"
        self.setEnabled(False)
        status.setText(f"exporting {Path(checkpoint).name} to {out}…")

        def export():
            from napari_spoco.core.model.bioimageio_export import export_bioimageio

            return export_bioimageio(checkpoint, out, overwrite=True)

        self.worker = start_function_worker(
            export, on_return=self._done,
            on_error=lambda err: report_error(status, err, "exporting for bioimage.io"),
            on_finish=self._finished)
        return self.worker

    def _done(self, path):
        self.last_export = path
        self.train_widget.status.setText(f"exported {path}")
        notify_info(f"Exported the model for bioimage.io to {path}.")

    def _finished(self):
        self.worker = None
        self.setEnabled(True)
