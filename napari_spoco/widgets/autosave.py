"""Autosaving annotation layers to a zarr store, so that a crash loses no painting.

Every annotation layer is one array of the store. Each brush stroke, fill, undo or accepted
object marks the bounding box of its change dirty; a :class:`~.autosave_policy.WriteSchedule`
says when to write (1 s after the last edit, at most 2 s after the first unwritten one, so
painting that never pauses is still written). The dirty boxes are then copied on the main
thread (fast) and written by a worker thread (slow disks never freeze the viewer). Writes are
atomic per file (see :mod:`.autosave_store`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from superqt.utils import create_worker

from .autosave_policy import WriteSchedule, array_name_for
from .autosave_store import restore_layers, stored_array_names, write_region

__all__ = ["AnnotationAutosave", "restore_layers", "stores_written_here"]

#: Stores an autosave of this process writes to. Restore-on-open skips them: what they hold
#: is this session's own work, already in the viewer (or deliberately removed from it).
stores_written_here: set[str] = set()


def store_key(path) -> str:
    """One spelling per store, to compare paths."""
    return str(Path(path).expanduser().resolve())


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


class AnnotationAutosave(QObject):
    """Keep a zarr store in sync with a set of napari Labels layers.

    Parameters
    ----------
    store_path : str or PathLike
        The zarr store.
    parent : QObject, optional
    schedule : WriteSchedule, optional
        When to write; default 1 s debounce, 2 s maximum wait.
    clock : callable, optional
        Monotonic seconds (``time.monotonic``).
    """

    saved = Signal(str)  # the array just written
    failed = Signal(object)  # the exception

    def __init__(self, store_path, parent=None, *, schedule: WriteSchedule | None = None,
                 clock=time.monotonic):
        super().__init__(parent)
        self.store_path = str(store_path)
        stores_written_here.add(store_key(store_path))
        self.schedule = schedule or WriteSchedule()
        self._clock = clock
        self._layers = {}  # layer -> array name
        self._claimed = set()  # stored arrays this autosave may overwrite
        self._dirty = {}  # layer -> box
        self._history = {}  # layer -> (undo, redo) lengths last seen
        self._worker = None
        self._writing = {}  # layer -> box being written (merged back if the write fails)
        self.failures = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.flush)

    @property
    def busy(self) -> bool:
        """Whether edits wait to be written or a write is running."""
        return bool(self._dirty) or self._worker is not None

    @property
    def tracked_layers(self) -> list:
        """The layers this autosave writes."""
        return list(self._layers)

    def array_name(self, layer) -> str | None:
        """The store array ``layer`` is written to (None: not tracked)."""
        return self._layers.get(layer)

    def track(self, layer, image_name: str = "", array_name: str | None = None) -> str:
        """Start saving ``layer``; its whole content is written within a second.

        ``array_name``: the array ``layer`` was restored from (it continues there); otherwise
        a new name that overwrites no array of an earlier session (:func:`array_name_for`).
        """
        if layer in self._layers:
            return self._layers[layer]
        tracked = list(self._layers.values())
        if array_name is not None and array_name not in tracked:
            name = array_name
        else:
            name = array_name_for(layer.name, tracked, stored_array_names(self.store_path),
                                  self._claimed)
        self._claimed.add(name)
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
        self.schedule.edit(self._clock())
        self._arm()

    def _arm(self) -> None:
        # Restarting the timer on every edit is safe: the schedule never moves the write past
        # the maximum wait of the first unwritten edit.
        delay = self.schedule.delay(self._clock())
        if delay is not None:
            self._timer.start(math.ceil(delay * 1000))

    def flush(self) -> None:
        """Write every dirty region now (in a worker; edits made meanwhile queue behind it)."""
        if self._worker is not None or not self._dirty:
            return  # a running write re-arms the timer when it ends (_on_written)
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
        self._writing = {layer: box for layer, box in self._dirty.items() if layer in self._layers}
        self._dirty.clear()
        self.schedule.taken()
        self._worker = create_worker(
            self._write_all, jobs,
            _connect={"returned": self._on_written, "errored": self._on_failed},
        )

    def _write_all(self, jobs):
        for name, box, block, attrs, shape, dtype in jobs:
            write_region(self.store_path, name, box, block, attrs, shape, dtype)
        return [job[0] for job in jobs]

    def _on_written(self, names):
        self._worker = None
        self._writing = {}
        for name in names:
            self.saved.emit(name)
        if self._dirty:
            self._arm()

    def _on_failed(self, error):
        self._worker = None
        # Keep what was not written: the next edit (or wait()) tries again. No retry timer
        # here, so that a full or read-only disk gives one message per edit, not a stream.
        for layer, box in self._writing.items():
            self._dirty[layer] = _union(self._dirty.get(layer), box)
        self._writing = {}
        self.failures += 1
        self.failed.emit(error)

    def wait(self, timeout_ms: int = 10_000) -> None:
        """Flush and block until written (tests, closing the widget)."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        self._timer.stop()
        failures = self.failures
        clock = QElapsedTimer()
        clock.start()
        self.flush()
        while self.busy and clock.elapsed() < timeout_ms and self.failures == failures:
            QCoreApplication.processEvents()
            if self._worker is None and self._dirty:
                self.flush()
