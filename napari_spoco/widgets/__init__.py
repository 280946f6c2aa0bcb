"""napari dock widgets: thin Qt layers that read layers, call the core in workers, write layers.

Qt-free rules (ids, regions, schedules) live in :mod:`._logic` and :mod:`.preview`. The package
imports Qt only when :class:`SpocoWidget` is first used, so the clustering helper process
(``python -m napari_spoco.widgets.clustering_process``) starts without Qt or napari.
"""

__all__ = ["SpocoWidget"]


def __getattr__(name):
    if name == "SpocoWidget":
        from .spoco_widget import SpocoWidget

        return SpocoWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
