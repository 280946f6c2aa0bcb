"""Reading and writing annotation autosave stores (zarr); no Qt, so any process can restore.

A store is a zarr group; each annotation layer is one array of it, named after the layer, with
the layer's name, image, scale and translate in its attributes.

Crash safety: zarr's local store writes every chunk and metadata file to a temporary file and
renames it into place with ``os.replace`` (zarr-python 2 and 3; ``tests/test_autosave.py``
checks it), so a file on disk is always its old or its new content, never torn. A crash during
a write can leave a stroke that spans several chunks partly saved; the rest follows with the
next write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _create(group, name, shape, dtype):
    chunks = tuple(min(s, 256 if len(shape) == 2 else 64) for s in shape)
    create = getattr(group, "create_array", None)
    if create is None:  # zarr 2
        create = group.create_dataset
    return create(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=0)


def write_region(store_path, name, box, block, attrs, shape, dtype) -> str:
    """Write ``block`` into the region ``box`` of array ``name`` (created if missing).

    Parameters
    ----------
    store_path : str or PathLike
        The zarr store (created if missing).
    name : str
        The array.
    box : tuple of slice
        Where ``block`` goes.
    block : numpy.ndarray
        The layer's data in ``box``.
    attrs : dict
        Attributes stored with the array (layer name, image, scale, translate).
    shape, dtype
        The whole layer's shape and dtype.

    Returns
    -------
    str
        ``name``.
    """
    import zarr

    group = zarr.open_group(str(store_path), mode="a")
    array = group[name] if name in group else _create(group, name, shape, dtype)
    if tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(dtype):
        # The layer was replaced by one of another shape: start its array afresh.
        del group[name]
        array = _create(group, name, shape, dtype)
    array.attrs.update(attrs)
    array[box] = block
    return name


def stored_array_names(store_path) -> list[str]:
    """Names of the arrays in the store ``store_path`` ([] when there is no store)."""
    if not Path(store_path).is_dir():
        return []
    import zarr

    try:
        group = zarr.open_group(str(store_path), mode="r")
    except Exception:  # a folder that is no zarr group holds no autosaved layer
        return []
    return sorted(name for name, _ in group.arrays())


def restore_layers(store_path) -> list[tuple[str, np.ndarray, dict]]:
    """``(array name, data, attrs)`` of every array in an autosave store, to re-add as Labels.

    The dock's **Restore** and restore-on-open both come here, and so does the kill test.
    """
    import zarr

    group = zarr.open_group(str(store_path), mode="r")
    return [(name, np.asarray(array[...]), dict(array.attrs))
            for name, array in sorted(group.arrays())]
