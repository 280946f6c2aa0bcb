"""Viewer-wide key bindings the dock owns while it is open, and gives back when it closes.

napari has one keymap per viewer. The dock binds a few keys there (N, G, S, Shift-A) so they
work whichever layer is selected; binding with ``overwrite=True`` would otherwise replace a
binding the user or another plugin made for as long as napari runs. :class:`ViewerKeys`
remembers what each of our bindings replaced, and :meth:`ViewerKeys.restore` (called by the
dock's ``shutdown``) puts it back, or unbinds the key when it was free.
"""

from __future__ import annotations

import weakref

_BY_VIEWER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ViewerKeys:
    """The dock's bindings on one viewer's keymap."""

    def __init__(self, viewer):
        self._viewer = weakref.ref(viewer)
        self._replaced: dict = {}

    def bind(self, key: str, func) -> None:
        """Bind ``key`` to ``func`` (``func(viewer)``), remembering what it replaces."""
        previous = self._viewer().bind_key(key, func, overwrite=True)
        self._replaced.setdefault(key, previous)  # the first one is what was there before us

    def restore(self) -> None:
        """Give every key back its binding from before the dock (None: unbound)."""
        viewer = self._viewer()
        if viewer is not None:
            for key, previous in self._replaced.items():
                viewer.bind_key(key, previous, overwrite=True)
        self._replaced.clear()


def viewer_keys(viewer) -> ViewerKeys:
    """The one :class:`ViewerKeys` of ``viewer`` (shared by the dock's tabs)."""
    if viewer not in _BY_VIEWER:
        _BY_VIEWER[viewer] = ViewerKeys(viewer)
    return _BY_VIEWER[viewer]
