"""Reading and writing arrays: tif, npy and zarr, chosen by file extension.

Every write is atomic (a temporary sibling renamed into place), and :func:`check_output`
refuses, before any work starts, an output that would destroy an input or that cannot be
written at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .errors import SpocoInputError

SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
#: Suffixes of checkpoint outputs (``napari-spoco train --out``, the Train tab's "save to").
CHECKPOINT_SUFFIXES = (".pt", ".pth")

#: What tifffile, numpy and zarr raise for files they cannot parse (zarr's errors are
#: ValueErrors; a truncated tif can end in struct.error or IndexError).
_READ_ERRORS = (ValueError, OSError, EOFError, KeyError, IndexError, struct.error)


def store_root(path: str | os.PathLike) -> Path:
    """The ``.zarr`` store ``path`` lies in (itself included), else ``path``; made absolute.

    An array inside a store (``a.zarr/data``) and the store itself are one file as far as
    overwriting goes: replacing either destroys the other.
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    for candidate in (path, *path.parents):
        if candidate.suffix.lower() == ".zarr":
            return candidate
    return path


def _suffix(path: Path, suffixes=SUFFIXES) -> str:
    suffix = ".zarr" if store_root(path).suffix.lower() == ".zarr" else path.suffix.lower()
    if suffix not in suffixes:
        raise SpocoInputError(
            f"Cannot read or write {str(path)!r}: unknown file type {suffix or '(none)'!r}; "
            f"use one of {', '.join(suffixes)}."
        )
    return suffix


def read_array(path: str | os.PathLike, lazy: bool = False):
    """Read an array from a ``.tif``/``.tiff``, ``.npy`` or ``.zarr`` path.

    Parameters
    ----------
    path : str or PathLike
        The file (or zarr directory) to read. A zarr group must be an OME-Zarr image (its
        level 0 is read, singleton t and c axes dropped, more channels kept where the metadata
        puts them: ``core.ome_zarr.channel_axis_from_metadata``), hold a single
        array or an array named ``"data"``; an array inside a store can be given as
        ``store.zarr/name``.
    lazy : bool
        For zarr and tif, return a lazy array (zarr, or a view of an OME-Zarr level) that
        reads only what is indexed, instead of loading it into memory.

    Returns
    -------
    numpy.ndarray or zarr.Array

    Raises
    ------
    SpocoInputError
        Unknown suffix, missing, empty, truncated or foreign file, a zarr folder without
        metadata, or an array of Python objects instead of numbers.
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.exists():
        raise SpocoInputError(f"File {str(path)!r} does not exist.")
    _check_readable(path, suffix)
    reader = {".npy": _read_npy, ".zarr": _read_zarr}.get(suffix, _read_tif)
    try:
        array = reader(path, lazy)
    except SpocoInputError:
        raise
    except _READ_ERRORS as err:
        raise _unreadable(path, suffix, err) from err
    if array.dtype == object:
        raise _objects(path)
    return array


def _check_readable(path: Path, suffix: str) -> None:
    if suffix == ".zarr":
        return
    if path.is_dir():
        raise SpocoInputError(f"{str(path)!r} is a folder, not a {suffix} file; give the file.")
    if path.stat().st_size == 0:
        raise SpocoInputError(
            f"{str(path)!r} is empty (0 bytes): it was not written completely. Export or "
            "copy it again."
        )


def _read_tif(path: Path, lazy: bool):
    import tifffile

    if not lazy:
        return tifffile.imread(path)
    import zarr

    # A zarr view of the file's pages: indexing reads only the pages (or tiles) it touches, so
    # a stack larger than memory can be predicted tile by tile.
    array = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    if not hasattr(array, "shape"):  # a pyramidal tif: level 0
        array = array[next(iter(array.array_keys()))]
    return array


def _read_npy(path: Path, lazy: bool):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        # numpy refuses object arrays (and other pickles) because unpickling can run code
        if "allow_pickle" in str(err):
            raise _objects(path) from err
        raise


def _read_zarr(path: Path, lazy: bool):
    import zarr

    node = zarr.open(str(path), mode="r")
    if not hasattr(node, "shape"):  # a group
        from .ome_zarr import multiscales, read_ome_image

        if multiscales(node.attrs)[0] is not None:  # an OME-Zarr image: its level 0
            level0 = read_ome_image(path).levels[0]
            return level0 if lazy else np.asarray(level0[...])
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


def _objects(path: Path) -> SpocoInputError:
    return SpocoInputError(
        f"{str(path)!r} holds Python objects (dtype object), not numbers; napari-spoco reads "
        "numeric arrays only. Save a numeric array, e.g. np.save(path, array.astype(np.float32))."
    )


def _unreadable(path: Path, suffix: str, err: BaseException) -> SpocoInputError:
    detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if suffix == ".zarr":
        return SpocoInputError(
            f"Cannot read {str(path)!r} as a zarr store: it has no readable zarr metadata "
            f"(zarr.json, .zarray or .zgroup) ({detail}). Give a store written by zarr, or copy "
            "it again completely."
        )
    kind = "a TIFF image" if suffix in (".tif", ".tiff") else "a .npy array"
    return SpocoInputError(
        f"Cannot read {str(path)!r} as {kind}: the file is truncated, damaged or of another "
        f"type ({detail}). Export or copy it again."
    )


# -- outputs ------------------------------------------------------------------------------

def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether writing ``a`` would replace ``b``: the same file, link or zarr store."""
    root_a, root_b = store_root(a), store_root(b)
    if root_a.resolve() == root_b.resolve():
        return True
    try:
        return os.path.samefile(root_a, root_b)  # hard links
    except OSError:
        return False


def check_output(
    path: str | os.PathLike,
    inputs: Mapping[str, str | os.PathLike | None] | Iterable = (),
    overwrite: bool = False,
    suffixes: tuple[str, ...] = SUFFIXES,
    option: str = "--out",
) -> Path:
    """Check, before any work starts, that ``path`` can be written without destroying data.

    Parameters
    ----------
    path : str or PathLike
        The output file (or ``.zarr`` store).
    inputs : mapping of name to path, or iterable of paths or of (name, path) pairs
        Files the same run reads (or writes elsewhere); ``None`` paths are skipped. The
        names (e.g. ``"--image"``) appear in the message.
    overwrite : bool
        Whether an existing output may be replaced.
    suffixes : tuple of str
        The file types this output may have.
    option : str
        How the user gave ``path`` (``"--out"``, ``"'save to'"``), for the messages.

    Returns
    -------
    pathlib.Path
        ``path`` with ``~`` expanded.

    Raises
    ------
    SpocoInputError
        Unknown suffix; ``path`` is one of ``inputs`` (a store and a path inside it count as
        one); it exists and ``overwrite`` is False; it is a folder (other than a ``.zarr``
        store being overwritten); its folder cannot be created or written to.
    """
    path = Path(path).expanduser()
    from .ome_zarr import labels_target

    # <image>.ome.zarr/labels/<name> only adds a group beside the image: it conflicts with an
    # input only if that input is this label image (or inside it).
    labels_out = labels_target(path) is not None
    # Inputs first: "--out L.npy would destroy the labels" is the message that matters most.
    for name, other in _named(inputs):
        if other is not None and labels_out and not _inside(other, path):
            continue
        if other is not None and same_file(path, other):
            raise SpocoInputError(
                f"{option} {str(path)!r} is the same file as {name} {str(other)!r}: writing it "
                "would destroy that input. Choose another output name."
            )
    if path.is_dir() and path.suffix.lower() != ".zarr" and not labels_out:
        raise SpocoInputError(
            f"{option} {str(path)!r} is a folder; give a file name inside it, e.g. "
            f"{str(path / ('output' + suffixes[0]))!r}."
        )
    _suffix(path, suffixes)
    _check_existing(path, overwrite, option)
    _check_writable_folder(path, option)
    return path


def _inside(path, folder) -> bool:
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents


def _named(inputs):
    """``(name, path)`` pairs of a mapping, of pairs, or of bare paths (named "an input")."""
    if isinstance(inputs, Mapping):
        return list(inputs.items())
    return [item if isinstance(item, tuple) and len(item) == 2 else ("an input", item)
            for item in inputs]


def _check_existing(path: Path, overwrite: bool, option: str) -> None:
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise SpocoInputError(
            f"{option} {str(path)!r} already exists; pass --overwrite (overwrite=True in "
            "Python) to replace it, or choose another name."
        )


def _check_writable_folder(path: Path, option: str) -> None:
    existing = Path(os.path.abspath(path)).parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SpocoInputError(
            f"Cannot write {option} {str(path)!r}: {str(existing)!r} is a file, not a folder. "
            "Choose an output in a folder."
        )
    # A real probe file: os.access ignores permission bits for root and can be wrong on
    # network filesystems (root squash, ACLs); only an actual write tells.
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".napari-spoco-probe-"):
            pass
    except OSError as err:
        raise SpocoInputError(
            f"Cannot write {option} {str(path)!r}: the folder {str(existing)!r} is not "
            f"writable ({err.strerror or err}). Choose an output in a folder you can write to."
        ) from err


@contextlib.contextmanager
def atomic_store(path: str | os.PathLike):
    """Yield a temporary sibling of the zarr store ``path``; rename it into place on success.

    A write that fails (or is interrupted) removes the temporary store and leaves whatever
    was at ``path`` before, so a half-written store never carries the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        _replace_store(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_store(new: Path, path: Path) -> None:
    # A folder cannot be renamed over a non-empty one: move the old store aside first, and
    # back if the second rename fails.
    if not (path.exists() or path.is_symlink()):
        os.replace(new, path)
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def write_array(path: str | os.PathLike, array) -> Path:
    """Write ``array`` to ``.tif``, ``.npy`` or ``.zarr``, atomically.

    The data goes to a temporary file (or store) next to ``path`` first and is renamed into
    place, so an interrupted write never leaves a half-written file under the final name.
    A ``path`` of the form ``<OME-Zarr image>/labels/<name>`` is written as an OME-Zarr label
    image of that image (``core.ome_zarr.write_ome_labels``).
    """
    path = Path(path)
    suffix = _suffix(path)
    from .ome_zarr import labels_target, write_ome_labels

    if labels_target(path) is not None:
        return write_ome_labels(path, array)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    if suffix == ".zarr":
        import zarr

        with atomic_store(path) as tmp:
            zarr.save_array(str(tmp), array, overwrite=True)
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
