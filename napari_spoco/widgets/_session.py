"""Where a checkpoint dropped onto napari waits for the SPOCO dock widget.

An npe2 reader gets file paths, not the viewer or the widget; the reader therefore loads the
checkpoint, hands it to :data:`dropped_models`, and every open SPOCO widget (connected to its
signal) makes it the current model. The reader opens the dock before offering the checkpoint,
so a freshly opened widget receives it too.
"""

from __future__ import annotations

from pathlib import Path

from psygnal import Signal


class DroppedModels:
    """The latest checkpoint opened through the reader, and a signal for widgets."""

    dropped = Signal(object)  # pathlib.Path of the checkpoint

    def __init__(self):
        self.latest: Path | None = None

    def offer(self, path) -> None:
        """Record ``path`` as the newest model and tell the widgets."""
        self.latest = Path(path)
        self.dropped.emit(self.latest)


dropped_models = DroppedModels()
