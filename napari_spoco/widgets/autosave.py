"""Autosaving annotation layers to a zarr store, so that a crash loses no painting.

Every annotation layer is one array of the store (named after the layer). After each brush
stroke, fill or accepted object the bounding box of the change is marked dirty; one second after
the last change the dirty boxes are copied (on the main thread, fast) and written by a worker
thread (slow disks never freeze the viewer).

Crash safety: zarr's local store writes each chunk to a temporary file and renames it into place
(zarr-python 2 and 3), so a chunk on disk is always either its old or its new content, never
torn. A crash during a save can leave a stroke that spans several chunks partly saved, and loses
at most the last second of work.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from superqt.utils import create_worker

from ._logic import safe_store_name

#: Seconds of quiet after the last edit before saving.
DEBOUNCE_MS = 1000


def _atom_box(atom, shape):
    """Bounding box (tuple of slices) of one napari Labels history atom."""
    key = getattr(atom, "slice_key", None)
    if key is not None:
        return tuple(
            slice(*k.indices(s)[:2]) if isinstance(k, slice) else slice(int(k), int(k) + 1)
            for k, s in zip(key, shape)
        )
    indices = atom[0]
    if len(indices) == 0 or np.size(indices[0]) == 0:
        return None
    return tuple(slice(int(np.min(i)), int(np.max(i)) + 1) for i in indices)


def _union(box_a, box_b):
    if box_a is None:
        return box_b
    if box_b is None:
        return box_a
    return tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box_a, box_b))


def _create(group, name, shape, dtype):
    chunks = tuple(min(s, 256 if len(shape) == 2 else 64) for s in shape)
    create = getattr(group, "create_array", None)
    if create is None:  # zarr 2
        create = group.create_dataset
    return create(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=0)


def _write(store_path, name, box, block, attrs, shape, dtype):
    import zarr

    group = zarr.open_group(store_path, mode="a")
    array = group[name] if name in group else _create(group, name, shape, dtype)
    if tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(dtype):
        # The layer was replaced by one of another shape: start its array afresh.
        del group[name]
        array = _create(group, name, shape, dtype)
    array.attrs.update(attrs)
    array[box] = block
    return name


class AnnotationAutosave(QObject):
    """Keep a zarr store in sync with a set of napari Labels layers."""

    saved = Signal(str)  # the layer name just written
    failed = Signal(object)  # the exception

    def __init__(self, store_path, parent=None):
        super().__init__(parent)
        self.store_path = str(store_path)
        self._layers = {}  # layer -> array name
        self._dirty = {}  # layer -> box
        self._history = {}  # layer -> (undo, redo) lengths last seen
        self._worker = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.flush)

    @property
    def busy(self) -> bool:
        """Whether edits wait to be written or a write is running."""
        return bool(self._dirty) or self._worker is not None

    def track(self, layer, image_name: str = "") -> str:
        """Start saving ``layer``; its whole content is written once now."""
        if layer in self._layers:
            return self._layers[layer]
        name = safe_store_name(layer.name, list(self._layers.values()))
        self._layers[layer] = name
        self._history[layer] = self._history_lengths(layer)
        layer.metadata["spoco_image"] = image_name
        layer.events.paint.connect(self._on_paint)
        layer.events.set_data.connect(self._on_set_data)
        layer.events.data.connect(self._on_data)
        self._mark(layer, tuple(slice(0, s) for s in layer.data.shape))
        return name

    def untrack_all(self) -> None:
        """Stop listening to every layer (pending edits are still written by ``flush``)."""
        for layer in list(self._layers):
            for event, slot in ((layer.events.paint, self._on_paint),
                                (layer.events.set_data, self._on_set_data),
                                (layer.events.data, self._on_data)):
                event.disconnect(slot)
        self._layers.clear()

    def _history_lengths(self, layer):
        return (len(getattr(layer, "_undo_history", ())), len(getattr(layer, "_redo_history", ())))

    def _on_paint(self, event):
        layer = event.source
        self._history[layer] = self._history_lengths(layer)
        box = None
        for atom in event.value:
            box = _union(box, _atom_box(atom, layer.data.shape))
        if box is not None:
            self._mark(layer, box)

    def _on_set_data(self, event):
        # Undo and redo emit no paint event; the history lengths tell that one happened.
        layer = event.source
        lengths = self._history_lengths(layer)
        if lengths != self._history.get(layer):
            self._history[layer] = lengths
            self._mark(layer, tuple(slice(0, s) for s in layer.data.shape))

    def _on_data(self, event):
        layer = event.source
        self._mark(layer, tuple(slice(0, s) for s in layer.data.shape))

    def _mark(self, layer, box) -> None:
        self._dirty[layer] = _union(self._dirty.get(layer), box)
        self._timer.start()

    def flush(self) -> None:
        """Write every dirty region now (in a worker; later edits queue behind it)."""
        if self._worker is not None or not self._dirty:
            if self._dirty:
                self._timer.start()
            return
        jobs = []
        for layer, box in self._dirty.items():
            if layer not in self._layers:
                continue
            block = np.array(layer.data[box], copy=True)
            attrs = {"layer": layer.name, "image": layer.metadata.get("spoco_image", ""),
                     "scale": [float(v) for v in layer.scale],
                     "translate": [float(v) for v in layer.translate]}
            jobs.append((self._layers[layer], box, block, attrs, tuple(layer.data.shape),
                         str(layer.data.dtype)))
        self._dirty.clear()
        self._worker = create_worker(
            self._write_all, jobs,
            _connect={"returned": self._on_written, "errored": self._on_failed},
        )

    def _write_all(self, jobs):
        for name, box, block, attrs, shape, dtype in jobs:
            _write(self.store_path, name, box, block, attrs, shape, dtype)
        return [job[0] for job in jobs]

    def _on_written(self, names):
        self._worker = None
        for name in names:
            self.saved.emit(name)
        if self._dirty:
            self._timer.start()

    def _on_failed(self, error):
        self._worker = None
        self.failed.emit(error)

    def wait(self, timeout_ms: int = 10_000) -> None:
        """Flush and block until written (tests, closing the widget)."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        self._timer.stop()
        clock = QElapsedTimer()
        clock.start()
        self.flush()
        while self.busy and clock.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
            if self._worker is None and self._dirty:
                self.flush()


def restore_layers(store_path):
    """``(name, array, attrs)`` of every array in an autosave store, to re-add as Labels."""
    import zarr

    group = zarr.open_group(str(store_path), mode="r")
    return [(name, np.asarray(array[...]), dict(array.attrs)) for name, array in group.arrays()]
