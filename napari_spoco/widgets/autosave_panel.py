"""The autosave controls of the Data tab: where annotations are saved, restore, choose a store.

Autosave is on from the start: each annotation layer goes to the automatic store of its image
(:func:`~.autosave_policy.default_store_path`: next to the image file, else in the per-user
data folder), shown in the dock; **Choose…** sends every layer to one store instead. When an
image is opened whose automatic store exists from an earlier session, its layers are restored
(image opened from a file) or offered with a button (an image without a file, which a name
alone identifies less surely).
"""

from __future__ import annotations

import time
from pathlib import Path

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_spoco.core.errors import SpocoInputError

from .autosave import AnnotationAutosave, restore_layers, store_key, stores_written_here
from .autosave_policy import default_store_path, user_data_dir
from .autosave_store import stored_array_names
from .narrow import WrappingLabel
from .notifications import notify_error, notify_info

STORE_KEY = "spoco_store"  # layer metadata: the store a restored layer came from
ARRAY_KEY = "spoco_array"  # ... and its array there


def image_source(image) -> str | None:
    """The file an image layer was opened from (None: made in memory, a sample, a name)."""
    source = getattr(image, "source", None)
    path = getattr(source, "path", None)
    return str(path) if path else None


class AutosavePanel(QWidget):
    """Owns the :class:`AnnotationAutosave` objects of one viewer's annotation layers."""

    def __init__(self, viewer, parent=None, data_dir=None):
        super().__init__(parent)
        self.viewer = viewer
        self.data_dir = data_dir  # None: user_data_dir(), read when a store is needed
        self.chosen_store: str | None = None
        self._autosaves: dict[str, AnnotationAutosave] = {}  # store key -> autosave
        self._tracked = []  # (layer, image layer or name), to move them to a chosen store
        self._handled = set()  # store keys already restored or offered
        self._failing = set()  # store keys whose last write failed (told once)
        self.closed = False
        self.offered: tuple | None = None  # (store, image name, array names) offered
        self.store_label = WrappingLabel("")  # a long path wraps instead of widening the dock
        self.store_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.choose_button = QPushButton("Choose…")
        self.choose_button.setToolTip("Save every annotation layer to one .zarr store of yours")
        self.restore_button = QPushButton("Restore…")
        self.restore_button.setToolTip("Add the annotation layers saved in a .zarr store")
        self.found_button = QPushButton("Restore autosaved")
        self.found_button.setVisible(False)
        self.status = WrappingLabel("")
        buttons = QHBoxLayout()
        buttons.addWidget(self.choose_button)
        buttons.addWidget(self.restore_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.store_label)
        layout.addLayout(buttons)
        layout.addWidget(self.found_button)
        layout.addWidget(self.status)
        self.choose_button.clicked.connect(self._choose_store)
        self.restore_button.clicked.connect(self._choose_restore)
        self.found_button.clicked.connect(self._restore_offered)
        self._show_stores()

    # -- where layers are saved ----------------------------------------------------------------

    @property
    def autosave(self) -> AnnotationAutosave | None:
        """The autosave of the chosen store, else the first automatic one (None: nothing yet)."""
        if self.chosen_store is not None:
            return self._autosaves.get(store_key(self.chosen_store))
        return next(iter(self._autosaves.values()), None)

    def store_for(self, image) -> Path:
        """Where the annotations of ``image`` (a layer or a name) are saved."""
        if self.chosen_store is not None:
            return Path(self.chosen_store)
        name = getattr(image, "name", image) or "annotations"
        return default_store_path(name, image_source(image), data_dir=self.data_dir)

    def track(self, layer, image) -> AnnotationAutosave | None:
        """Autosave ``layer``, the annotations of ``image`` (an image layer or its name)."""
        if self.closed:
            return None  # the dock shut down; layers removed as the viewer closes re-pair
        if all(layer is not known for known, _ in self._tracked):
            self._tracked.append((layer, image))
        for autosave in self._autosaves.values():
            if autosave.array_name(layer) is not None:
                return autosave  # a layer keeps its store (pairing it anew moves nothing)
        store = self.store_for(image)
        autosave = self._autosave_for(store)
        same_store = layer.metadata.get(STORE_KEY) == store_key(store)
        autosave.track(layer, getattr(image, "name", image),
                       layer.metadata.get(ARRAY_KEY) if same_store else None)
        self._show_stores()
        return autosave

    def _autosave_for(self, store) -> AnnotationAutosave:
        key = store_key(store)
        if key not in self._autosaves:
            autosave = AnnotationAutosave(store, self)
            autosave.saved.connect(lambda name, key=key: self._on_saved(name, key))
            autosave.failed.connect(lambda err, path=store: self._on_failed(err, path))
            self._autosaves[key] = autosave
        return self._autosaves[key]

    def _on_saved(self, name, key):
        self._failing.discard(key)
        self.status.setText(f"saved {name} at {time.strftime('%H:%M:%S')}")

    def _on_failed(self, error, store):
        self.status.setText(f"NOT saved: writing {store} failed ({error})")
        if store_key(store) not in self._failing:  # once per failure, not once per stroke
            self._failing.add(store_key(store))
            cause = getattr(error, "original", error)
            if isinstance(cause, OSError):  # full disk, read-only folder: the user can fix it
                error = SpocoInputError(
                    f"Could not autosave annotations to {str(store)!r}: "
                    f"{cause.strerror or cause}. Your layers are still in the viewer; choose "
                    "another store with 'Choose…' in the SPOCO Data tab.")
            notify_error(error, f"autosaving annotations to {store}")

    def set_store(self, path) -> AnnotationAutosave:
        """Autosave every tracked annotation layer to the zarr store ``path`` from now on."""
        self._stop_all()
        self.chosen_store = str(path)
        autosave = self._autosave_for(path)
        for layer, image in self._tracked:
            if layer in self.viewer.layers:
                self.track(layer, image)
        self._show_stores()
        return autosave

    def _show_stores(self) -> None:
        lines = []
        for autosave in self._autosaves.values():
            names = ", ".join(layer.name for layer in autosave.tracked_layers)
            lines.append(f"{autosave.store_path}" + (f"  ({names})" if names else ""))
        if not lines:
            folder = user_data_dir() if self.data_dir is None else self.data_dir
            text = (f"automatic: next to each image file, or in {folder}; starts when an "
                    "annotation layer is chosen")
            lines = [text]
        self.store_label.setText("autosave: " + "\n".join(lines))

    def _choose_store(self):
        path, _ = QFileDialog.getSaveFileName(self, "Autosave annotations to", "annotations.zarr",
                                              "Zarr store (*.zarr)")
        if path:
            self.set_store(path if path.endswith(".zarr") else path + ".zarr")

    # -- restoring -----------------------------------------------------------------------------

    def image_opened(self, image) -> None:
        """Restore (image file) or offer (other images) the annotations autosaved for ``image``.

        Stores this session writes hold nothing the viewer lacks, and are skipped.
        """
        if self.closed:
            return
        store = default_store_path(image.name, image_source(image), data_dir=self.data_dir)
        key = store_key(store)
        if key in stores_written_here or key in self._handled:
            return
        if any(layer.metadata.get(STORE_KEY) == key for layer in self.viewer.layers):
            return
        names = stored_array_names(store)
        if not names:
            return
        self._handled.add(key)
        if image_source(image) is not None:
            # Not inside the layer-inserted event that called us: add layers once it is over.
            QTimer.singleShot(0, lambda: self._restore_if_alive(store, image, names))
            return
        self.offered = (str(store), image.name, names)
        self.found_button.setText(f"Restore {len(names)} layer(s) autosaved for "
                                  f"{image.name!r}")
        self.found_button.setVisible(True)
        notify_info(f"Annotations autosaved for {image.name!r} in an earlier session are in "
                    f"{store}: press '{self.found_button.text()}' in the SPOCO Data tab to add "
                    "them.")

    def _restore_if_alive(self, store, image, names):
        try:
            self.isVisible()  # raises once napari has deleted the dock
        except RuntimeError:
            return
        if image in self.viewer.layers:
            self.restore(store, image, names)

    def _restore_offered(self):
        if self.offered is not None:
            store, image_name, names = self.offered
            self.offered = None
            self.found_button.setVisible(False)
            image = next((lyr for lyr in self.viewer.layers if lyr.name == image_name),
                         image_name)
            # Only the earlier session's arrays: those written since are in the viewer already.
            self.restore(store, image, names)

    def _choose_restore(self):
        path = QFileDialog.getExistingDirectory(self, "Annotation store (.zarr folder)")
        if path:
            self.restore(path)

    def restore(self, path, image=None, names=None) -> list:
        """Add the annotation layers saved in ``path`` to the viewer and autosave them on.

        ``image``: the image layer (or name) they annotate; default, the image each array names.
        ``names``: the arrays to restore; default all.
        """
        try:
            saved = restore_layers(path)
        except Exception as err:  # a folder that is not a zarr store
            notify_error(SpocoInputError(
                f"{str(path)!r} is not an annotation store written by napari-spoco ({err}); "
                "choose a .zarr folder that autosave wrote."), "restoring annotations")
            return []
        added = []
        for name, array, attrs in saved:
            if names is not None and name not in names:
                continue
            image_name = attrs.get("image", "")
            layer = self.viewer.add_labels(
                array, name=attrs.get("layer", name), scale=attrs.get("scale"),
                translate=attrs.get("translate"),
                metadata={"spoco_image": image_name, STORE_KEY: store_key(path), ARRAY_KEY: name},
            )
            added.append(layer)
            target = image if image is not None else next(
                (lyr for lyr in self.viewer.layers if lyr.name == image_name), None)
            if target is not None:
                self.track(layer, target)
        self._handled.add(store_key(path))
        notify_info(f"Restored {len(added)} annotation layer(s) from {path}.")
        return added

    def wait(self, timeout_ms: int = 10_000) -> None:
        """Write every pending edit now and wait until it is on disk."""
        for autosave in self._autosaves.values():
            autosave.wait(timeout_ms)

    def close(self) -> None:
        """Write pending edits and stop autosaving for good (the dock closes)."""
        self.closed = True
        self._stop_all()

    def _stop_all(self) -> None:
        for autosave in self._autosaves.values():
            autosave.wait()
            autosave.untrack_all()
        self._autosaves.clear()
        self._show_stores()
