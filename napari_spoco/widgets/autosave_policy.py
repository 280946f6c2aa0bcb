"""When annotation autosave writes, and where its store lives: plain rules, no Qt, no napari.

The Qt side (:mod:`.autosave`) only asks a :class:`WriteSchedule` how long to wait and arms a
timer with that; the dock (:mod:`.autosave_panel`) asks :func:`default_store_path` where an
image's annotations go. Both are unit-tested with a fake clock and fake folders.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from ._logic import safe_store_name

#: Quiet time after the last edit before writing: a burst of strokes becomes one write.
DEBOUNCE_S = 1.0
#: Longest an edit waits while edits keep coming. With a write taking well under a second this
#: puts every stroke on disk within 3 s, however long the user keeps painting.
MAX_WAIT_S = 2.0

#: Name ending of automatic stores, so that a folder listing says what they are.
STORE_SUFFIX = ".spoco-annotations.zarr"
#: Overrides the per-user data folder (tests, or a user who wants the stores elsewhere).
DATA_DIR_VARIABLE = "NAPARI_SPOCO_DATA_DIR"


class WriteSchedule:
    """Debounce with a maximum wait: when the edits not yet written are due to be written.

    A write is due ``debounce_s`` after the last edit, but never later than ``max_wait_s``
    after the first edit that is not on disk yet. Without the maximum, painting that never
    pauses for ``debounce_s`` would never be written.

    Parameters
    ----------
    debounce_s : float
        Quiet time after the last edit.
    max_wait_s : float
        Longest time from the first unwritten edit to its write; at least ``debounce_s``.

    Notes
    -----
    Times are seconds of any monotonic clock, passed in by the caller, so tests drive the
    schedule with a fake clock.
    """

    def __init__(self, debounce_s: float = DEBOUNCE_S, max_wait_s: float = MAX_WAIT_S):
        if not (math.isfinite(debounce_s) and debounce_s > 0):
            raise ValueError(f"debounce_s must be a positive number of seconds, not {debounce_s}")
        if not (math.isfinite(max_wait_s) and max_wait_s >= debounce_s):
            raise ValueError(f"max_wait_s ({max_wait_s}) must be at least debounce_s "
                             f"({debounce_s})")
        self.debounce_s = float(debounce_s)
        self.max_wait_s = float(max_wait_s)
        self.first_unsaved: float | None = None
        self.last_edit: float | None = None

    @property
    def pending(self) -> bool:
        """Whether edits wait to be written."""
        return self.first_unsaved is not None

    def edit(self, now: float) -> None:
        """Record an edit made at ``now``."""
        if self.first_unsaved is None:
            self.first_unsaved = now
        self.last_edit = now

    def due_at(self) -> float | None:
        """When the pending edits must be written (None: nothing pending)."""
        if self.first_unsaved is None:
            return None
        return min(self.last_edit + self.debounce_s, self.first_unsaved + self.max_wait_s)

    def delay(self, now: float) -> float | None:
        """Seconds from ``now`` until the write is due (0 when overdue; None: nothing pending)."""
        due = self.due_at()
        return None if due is None else max(0.0, due - now)

    def taken(self) -> None:
        """The pending edits were copied for writing; later edits start a new wait."""
        self.first_unsaved = None
        self.last_edit = None


def user_data_dir() -> Path:
    """The per-user folder for stores of images that have no writable folder of their own.

    ``$NAPARI_SPOCO_DATA_DIR`` if set; else ``platformdirs``' user data folder for
    ``napari-spoco`` (installed with napari); else ``~/.local/share/napari-spoco``.
    """
    override = os.environ.get(DATA_DIR_VARIABLE, "").strip()
    if override:
        return Path(override).expanduser()
    try:
        import platformdirs
    except ImportError:
        return Path.home() / ".local" / "share" / "napari-spoco"
    return Path(platformdirs.user_data_dir("napari-spoco", appauthor=False))


def is_writable_folder(path: Path) -> bool:
    """Whether ``path`` is an existing folder this process may create files in."""
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def default_store_path(image_name: str, source_path=None, *, data_dir=None,
                       writable: Callable[[Path], bool] = is_writable_folder) -> Path:
    """Where the annotations of an image are autosaved unless the user chooses a store.

    Parameters
    ----------
    image_name : str
        The image layer's name.
    source_path : str or PathLike, optional
        The file the image layer was opened from (napari's ``layer.source.path``).
    data_dir : str or PathLike, optional
        Folder for images without a writable folder; default :func:`user_data_dir`.
    writable : callable
        Tells whether a folder may be written (replaced in tests).

    Returns
    -------
    pathlib.Path
        ``<image file>.spoco-annotations.zarr`` next to the image file when its folder is
        writable; else ``<data_dir>/autosave/<image name>.spoco-annotations.zarr``.

    Notes
    -----
    Next to the image, the store is named after the image *file*, not the layer: reopening the
    file gives the same store even if the layer was renamed, which restoring on open relies on.
    """
    if source_path:
        source = Path(source_path)
        existing = source.parent / f"{source.name}{STORE_SUFFIX}"
        if writable(source.parent) and (not existing.exists() or writable(existing)):
            return existing
    folder = Path(data_dir) if data_dir is not None else user_data_dir()
    return folder / "autosave" / f"{safe_store_name(image_name)}{STORE_SUFFIX}"


def array_name_for(layer_name: str, tracked=(), stored=(), claimed=()) -> str:
    """The store array for a newly tracked layer: never one that holds someone else's work.

    Parameters
    ----------
    layer_name : str
        The annotation layer's name.
    tracked : iterable of str
        Arrays other layers of this autosave write to.
    stored : iterable of str
        Arrays already in the store.
    claimed : iterable of str
        Stored arrays this autosave may overwrite (it wrote them, or restored layers from them).

    Notes
    -----
    An array written in an earlier session and not restored may be the only copy of that
    work; a fresh layer of the same name (e.g. a new empty layer after a crash) therefore gets
    a new array (``name_2``) instead of overwriting it.
    """
    taken = set(tracked) | (set(stored) - set(claimed))
    return safe_store_name(layer_name, sorted(taken))
