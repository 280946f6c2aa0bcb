"""The autosave controls of the Data tab: choose a zarr store, see what was saved, restore."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_spoco.core.errors import SpocoInputError

from .autosave import AnnotationAutosave, restore_layers
from .notifications import notify_error, notify_info


class AutosavePanel(QWidget):
    """Owns the :class:`AnnotationAutosave` of one viewer's annotation layers."""

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.autosave: AnnotationAutosave | None = None
        self._tracked = []  # (layer, image name), also before a store is chosen
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("no autosave: choose a .zarr store")
        self.path_edit.setReadOnly(True)
        self.choose_button = QPushButton("Choose…")
        self.restore_button = QPushButton("Restore…")
        self.restore_button.setToolTip("Add the annotation layers saved in a .zarr store")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("autosave", self.path_edit)
        buttons = QHBoxLayout()
        buttons.addWidget(self.choose_button)
        buttons.addWidget(self.restore_button)
        form.addRow("", buttons)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.status)
        self.choose_button.clicked.connect(self._choose_store)
        self.restore_button.clicked.connect(self._choose_restore)

    def track(self, layer, image_name: str) -> None:
        """Save ``layer`` (the annotations of ``image_name``) once a store is chosen."""
        if all(layer is not known for known, _ in self._tracked):
            self._tracked.append((layer, image_name))
        if self.autosave is not None:
            self.autosave.track(layer, image_name)

    def set_store(self, path) -> AnnotationAutosave:
        """Autosave every tracked annotation layer to the zarr store ``path``."""
        self.close()
        self.autosave = AnnotationAutosave(path, self)
        self.autosave.saved.connect(lambda name: self.status.setText(f"saved {name} to {path}"))
        self.autosave.failed.connect(lambda err: notify_error(err, "autosaving annotations"))
        self.path_edit.setText(str(path))
        for layer, image_name in self._tracked:
            if layer in self.viewer.layers:
                self.autosave.track(layer, image_name)
        return self.autosave

    def _choose_store(self):
        path, _ = QFileDialog.getSaveFileName(self, "Autosave annotations to", "annotations.zarr",
                                              "Zarr store (*.zarr)")
        if path:
            self.set_store(path if path.endswith(".zarr") else path + ".zarr")

    def _choose_restore(self):
        path = QFileDialog.getExistingDirectory(self, "Annotation store (.zarr folder)")
        if path:
            self.restore(path)

    def restore(self, path) -> list:
        """Add the annotation layers saved in ``path`` to the viewer."""
        try:
            saved = restore_layers(path)
        except Exception as err:  # a folder that is not a zarr store
            notify_error(SpocoInputError(
                f"{path!r} is not an annotation store written by napari-spoco ({err}); choose the "
                ".zarr folder you picked for autosave."), "restoring annotations")
            return []
        added = []
        for name, array, attrs in saved:
            added.append(self.viewer.add_labels(
                array, name=attrs.get("layer", name), scale=attrs.get("scale"),
                translate=attrs.get("translate"), metadata={"spoco_image": attrs.get("image", "")},
            ))
        notify_info(f"Restored {len(added)} annotation layer(s) from {path}.")
        return added

    def close(self) -> None:
        """Write pending edits and stop autosaving (a new store, or the widget closes)."""
        if self.autosave is not None:
            self.autosave.wait()
            self.autosave.untrack_all()
            self.autosave = None
