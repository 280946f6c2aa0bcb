"""Reading and writing arrays: tif, npy and zarr, chosen by file extension."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import SpocoInputError

SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise SpocoInputError(
            f"Cannot read or write {str(path)!r}: unknown file type {suffix or '(none)'!r}; "
            f"use one of {', '.join(SUFFIXES)}."
        )
    return suffix


def read_array(path: str | os.PathLike, lazy: bool = False):
    """Read an array from a ``.tif``/``.tiff``, ``.npy`` or ``.zarr`` path.

    Parameters
    ----------
    path : str or PathLike
        The file (or zarr directory) to read. A zarr group must hold a single array or an
        array named ``"data"``.
    lazy : bool
        For zarr, return the zarr array itself instead of loading it into memory.

    Returns
    -------
    numpy.ndarray or zarr.Array
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.exists():
        raise SpocoInputError(f"File {str(path)!r} does not exist.")
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    import zarr

    node = zarr.open(str(path), mode="r")
    if not hasattr(node, "shape"):  # a group
        keys = list(node.array_keys())
        if "data" in keys:
            node = node["data"]
        elif len(keys) == 1:
            node = node[keys[0]]
        else:
            raise SpocoInputError(
                f"Zarr group {str(path)!r} holds {len(keys)} arrays ({keys}); "
                "give the path of one array, e.g. 'store.zarr/data'."
            )
    return node if lazy else np.asarray(node[...])


def write_array(path: str | os.PathLike, array) -> Path:
    """Write ``array`` to ``.tif``, ``.npy`` or ``.zarr``, atomically for tif and npy.

    The data goes to a temporary file next to ``path`` first and is renamed into place, so an
    interrupted write never leaves a half-written file under the final name.
    """
    path = Path(path)
    suffix = _suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    if suffix == ".zarr":
        import zarr

        zarr.save_array(str(path), array, overwrite=True)
        return path
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
        else:
            import tifffile

            # minisblack: a (3, Y, X) stack is three slices, not one RGB picture
            tifffile.imwrite(tmp, array, photometric="minisblack")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
