"""Dock settings remembered between napari sessions, in one small JSON file.

What is remembered are the choices that do not describe the data: the source model and the
Segment tab's model, the devices, where to save, the live preview, the network width and
embedding size, and the clustering method with its options. Iterations, patch and batch size
follow the image (``core.run_defaults``) and are remembered only when the user changed them;
the labels mode, learning rate, loss settings, momentum and seed start from their defaults.

The file is ``dock-settings.json`` in the per-user config folder (``platformdirs``:
``~/.config/napari-spoco`` on Linux), or in ``$NAPARI_SPOCO_CONFIG_DIR``. Deleting it resets
the dock. A stored value that is not usable any more (a corrupt file, a checkpoint that was
deleted, a device this machine lacks, a number out of range) is ignored, never an error.

Only the user's own changes are written: the widgets' user-only signals (``activated``,
``textEdited``, ``clicked``, ``editingFinished``, a spin box's steps while it has the focus)
drive the writes, so settings a script or ``napari-spoco demo`` puts into the dock are not
carried into the next session.

The first part of this module (which keys, their validation, the file) is Qt-free and
unit-tested on its own; :class:`RememberedSettings` binds it to widgets by duck typing, so the
module imports no Qt either.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Overrides the per-user config folder (tests, or a user who wants the file elsewhere).
CONFIG_DIR_VARIABLE = "NAPARI_SPOCO_CONFIG_DIR"
FILE_NAME = "dock-settings.json"
FORMAT_VERSION = 1
#: How a shipped model is stored: by name, since its installed path changes with the install.
SHIPPED_PREFIX = "shipped:"
#: Keys of clustering options: ``segment.param.<method>.<option>``.
PARAM_PREFIX = "segment.param."

_log = logging.getLogger(__name__)

# -- Qt-free: which keys, which values are usable, the file ------------------------------------


def _is_int(low: int, high: int) -> Callable[[Any], bool]:
    def check(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return check


def _is_number(low: float, high: float) -> Callable[[Any], bool]:
    def check(value) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and low <= value <= high)
    return check


def _is_ints(min_len: int, max_len: int, low: int = 1) -> Callable[[Any], bool]:
    def check(value) -> bool:
        return (isinstance(value, list) and min_len <= len(value) <= max_len
                and all(_is_int(low, 1 << 20)(v) for v in value))
    return check


def _is_bool(value) -> bool:
    return isinstance(value, bool)


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip()) and len(value) <= 4096


def _is_model(value) -> bool:
    """None (the tab's default), ``shipped:NAME`` of an installed model, or an existing file."""
    return value is None or decode_model(value) is not None


#: Every remembered key and the test its stored value must pass to be used.
KEYS: dict[str, Callable[[Any], bool]] = {
    "train.source": _is_model,
    "train.device": _is_text,
    "train.iterations": _is_int(1, 10_000_000),  # only when the user changed it
    "train.patch": _is_ints(2, 3),  # only when the user changed it
    "train.batch": _is_int(1, 1024),  # only when the user changed it
    "train.save_to": _is_text,
    "train.preview": _is_bool,
    "train.preview_seconds": _is_number(0.5, 600.0),
    "train.features": _is_ints(1, 8),
    "train.embedding_dims": _is_int(2, 128),
    "segment.model": _is_model,
    "segment.device": _is_text,
    "segment.method": _is_text,
    "segment.merge": _is_bool,
    "segment.fill": _is_bool,
    "segment.foreground": _is_bool,
}


def is_valid(key: str, value) -> bool:
    """Whether ``value`` may be restored for ``key`` (an unknown key never may).

    Parameters
    ----------
    key : str
        One of :data:`KEYS`, or ``segment.param.<method>.<option>`` (a number >= 0).
    value : object
        The value as read from JSON.

    Returns
    -------
    bool
    """
    if key.startswith(PARAM_PREFIX):
        return key.count(".") == 3 and _is_number(0, 1e12)(value)
    check = KEYS.get(key)
    return check is not None and check(value)


def clean(values) -> dict:
    """The entries of ``values`` that :func:`is_valid` accepts; anything else gives ``{}``."""
    if not isinstance(values, dict):
        return {}
    return {key: value for key, value in values.items()
            if isinstance(key, str) and is_valid(key, value)}


def settings_file() -> Path:
    """``dock-settings.json`` in ``$NAPARI_SPOCO_CONFIG_DIR`` or the per-user config folder.

    Returns
    -------
    pathlib.Path
        ``platformdirs.user_config_dir("napari-spoco")`` (``~/.config/napari-spoco`` on
        Linux, ``~/Library/Application Support/napari-spoco`` on macOS,
        ``%LOCALAPPDATA%\\napari-spoco`` on Windows) unless the variable is set.
    """
    override = os.environ.get(CONFIG_DIR_VARIABLE, "").strip()
    if override:
        return Path(override).expanduser() / FILE_NAME
    try:
        import platformdirs
    except ImportError:  # pragma: no cover - installed with napari
        return Path.home() / ".config" / "napari-spoco" / FILE_NAME
    return Path(platformdirs.user_config_dir("napari-spoco", appauthor=False)) / FILE_NAME


def read_settings(path=None) -> dict:
    """The usable remembered values; ``{}`` for a missing, unreadable or corrupt file.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The file; default :func:`settings_file`.

    Returns
    -------
    dict
        Key → value, only entries that pass :func:`is_valid`.
    """
    path = Path(path) if path is not None else settings_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as err:
        _log.warning("napari-spoco: ignoring the remembered dock settings in %s: %s", path, err)
        return {}
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        return {}
    return clean(data.get("settings"))


def write_settings(values: dict, path=None) -> bool:
    """Write the usable entries of ``values`` atomically; False (logged) if that fails.

    Parameters
    ----------
    values : dict
        Key → value; entries :func:`is_valid` refuses are left out.
    path : str or os.PathLike, optional
        The file; default :func:`settings_file`.

    Returns
    -------
    bool
        Whether the file was written. A read-only home folder only costs the memory.
    """
    path = Path(path) if path is not None else settings_file()
    text = json.dumps({"version": FORMAT_VERSION, "settings": clean(values)}, indent=1,
                      sort_keys=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        _log.warning("napari-spoco: could not remember the dock settings in %s: %s", path, err)
        return False
    return True


def encode_model(path) -> str | None:
    """How a model choice is stored: None, ``shipped:NAME`` for a shipped model, else the path.

    Parameters
    ----------
    path : str or os.PathLike or None
        The checkpoint chosen; None for the tab's default (from scratch, the current model).

    Returns
    -------
    str or None
    """
    if path is None:
        return None
    from napari_spoco.models import available_models

    for info in available_models():
        if _same(info.path, path):
            return SHIPPED_PREFIX + info.name
    return str(Path(path).expanduser().absolute())


def decode_model(value) -> str | None:
    """The checkpoint file of a stored model choice, or None if it is unknown or gone.

    Parameters
    ----------
    value : object
        As :func:`encode_model` stored it.

    Returns
    -------
    str or None
        The installed file of a shipped model, or an existing checkpoint file.
    """
    if not _is_text(value):
        return None
    if value.startswith(SHIPPED_PREFIX):
        from napari_spoco.models import available_models

        name = value[len(SHIPPED_PREFIX):]
        return next((str(info.path) for info in available_models() if info.name == name), None)
    return value if Path(value).is_file() else None


def _same(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


# -- binding widgets to the file (duck-typed Qt widgets) ----------------------------------------


class RememberedSettings:
    """The remembered values of one dock: read once, each user change written through.

    Each ``bind_*`` method restores a widget from its key (if the stored value is usable and
    the widget accepts it) and then writes the key whenever the *user* changes the widget.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The file; default :func:`settings_file` (read when the dock is created).
    """

    def __init__(self, path=None):
        self.path = Path(path) if path is not None else settings_file()
        self.values = read_settings(self.path)

    def get(self, key: str, default=None):
        """The stored usable value of ``key``, else ``default``."""
        return self.values.get(key, default)

    def set(self, key: str, value) -> None:
        """Remember ``value`` under ``key`` (None forgets it); unusable values are dropped.

        The file is read again first, so another dock's changes are kept.
        """
        values = read_settings(self.path)
        values.pop(key, None)
        if value is not None and is_valid(key, value):
            values[key] = value
        self.values = values
        write_settings(values, self.path)

    def forget(self, key: str) -> None:
        """Forget ``key``: the widget starts from its default next time."""
        self.set(key, None)

    # Each restore sets the widget the way a script would (no user signal), so restoring
    # writes nothing.

    def bind_combo_text(self, key: str, combo) -> None:
        """A QComboBox remembered by its text (e.g. a device); a text it lacks is ignored."""
        value = self.get(key)
        if value is not None and combo.findText(value) >= 0:
            combo.setCurrentIndex(combo.findText(value))
        combo.activated.connect(lambda *_: self.set(key, combo.currentText()))

    def bind_combo_data(self, key: str, combo) -> None:
        """A QComboBox remembered by its item data (e.g. a method key)."""
        value = self.get(key)
        if value is not None and combo.findData(value) >= 0:
            combo.setCurrentIndex(combo.findData(value))
        combo.activated.connect(lambda *_: self.set(key, combo.currentData()))

    def bind_model_combo(self, key: str, combo, add_model: Callable[[str], None],
                         skip=()) -> None:
        """A model chooser whose item data is a checkpoint path (None: the default item).

        A remembered file that is not offered yet is added with ``add_model(path)``; a
        remembered file that no longer exists, or a shipped model no longer installed, is
        ignored. Items whose data is in ``skip`` (e.g. "choose a file…") are never stored.
        """
        path = decode_model(self.get(key))
        if path is not None:
            index = combo.findData(path)
            if index >= 0:
                combo.setCurrentIndex(index)
            else:
                add_model(path)
        combo.activated.connect(lambda *_: self.remember_model(key, combo, skip))

    def remember_model(self, key: str, combo, skip=()) -> None:
        """Store the model ``combo`` shows now (after the user chose one)."""
        data = combo.currentData()
        if data in skip:
            return
        self.set(key, encode_model(data))

    def bind_check(self, key: str, check) -> None:
        """A QCheckBox remembered by its state."""
        value = self.get(key)
        if value is not None:
            check.setChecked(value)
        check.clicked.connect(lambda *_: self.set(key, bool(check.isChecked())))

    def bind_spin(self, key: str, spin) -> None:
        """A QSpinBox/QDoubleSpinBox; a value outside its range (or a float for an int box) is
        ignored. Written as :func:`on_user_change` says."""
        value = self.get(key)
        if value is not None and spin_accepts(spin, value):
            spin.setValue(value)
        on_user_change(spin, lambda: self.set(key, spin.value()))

    def bind_line_edit(self, key: str, edit, parse: Callable[[str], Any],
                       format: Callable[[Any], str] = str) -> None:
        """A QLineEdit stored as ``parse(text)`` (text it cannot parse is not stored) and
        shown as ``format(value)``."""
        value = self.get(key)
        if value is not None:
            edit.setText(format(value))

        def edited(text):
            try:
                parsed = parse(text)
            except ValueError:
                return
            self.set(key, parsed)

        edit.textEdited.connect(edited)


def on_user_change(spin, callback: Callable[[], None]) -> None:
    """Call ``callback()`` when the user changes the spin box ``spin``.

    That is when they finish typing (Enter, or leaving the field), and on every step with the
    arrows, the arrow keys or the mouse wheel, which give the box the keyboard focus first.
    A value set by a program while the box does not have the focus calls nothing.
    """
    spin.editingFinished.connect(callback)
    spin.valueChanged.connect(lambda *_: callback() if spin.hasFocus() else None)


def spin_accepts(spin, value) -> bool:
    """Whether the spin box can show ``value`` as it is: in range, an int for an int box."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(spin.value(), int) and not isinstance(value, int):
        return False
    return spin.minimum() <= value <= spin.maximum()
