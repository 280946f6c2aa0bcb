"""OME-Zarr images (NGFF 0.4 and 0.5): level 0, the pyramid, axes and voxel size; labels beside.

``io.read_array`` reads an OME-Zarr image group through :func:`read_ome_image` (its level 0)
and ``io.write_array`` writes into ``<image>.ome.zarr/labels/<name>`` through
:func:`write_ome_labels`. Singleton ``t`` and ``c`` axes are dropped (napari-spoco segments one
time point; one channel is no channel axis), so a ``(1, 1, Z, Y, X)`` image reads as
``(Z, Y, X)``. More channels stay on the axis the metadata names ``c`` (or types
``"channel"``), and that axis is the channel axis (:func:`channel_axis_from_metadata`), so the
command line needs no ``--channel-axis`` for them. Adding labels never touches the image's
arrays or its attributes, and the ``labels`` group's list is replaced atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SpocoInputError

#: Axis names napari-spoco understands, and the types they must have when a type is given.
KNOWN_AXES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


@dataclass
class OmeImage:
    """An OME-Zarr image as napari-spoco reads it.

    Attributes
    ----------
    levels : list
        The resolution levels, finest first, as lazy arrays with singleton t/c removed.
    axes : tuple of str
        Names of the axes of every level (e.g. ``("c", "z", "y", "x")``).
    voxel_size : tuple of float or None
        Level-0 scale of the spatial axes (``[Z,] Y, X``), None if not recorded.
    units : tuple of str or None
        Units of the spatial axes when given.
    zarr_format : int
        2 (NGFF 0.4) or 3 (NGFF 0.5).
    """

    levels: list
    axes: tuple
    voxel_size: tuple | None
    units: tuple | None
    zarr_format: int

    @property
    def channel_axis(self) -> int | None:
        """Index of the channel axis (type ``"channel"`` or name ``c``) in each level, None
        without one; a single channel is dropped on reading, so it gives None too."""
        return self.axes.index("c") if "c" in self.axes else None

    @property
    def spatial_axes(self) -> tuple:
        return tuple(a for a in self.axes if a in "zyx")


class _Squeezed:
    """A lazy view of a zarr array without some singleton axes (no data is read until indexed)."""

    def __init__(self, array, drop: tuple[int, ...]):
        self.array, self.drop = array, tuple(drop)
        self.shape = tuple(s for i, s in enumerate(array.shape) if i not in self.drop)
        self.dtype, self.ndim = array.dtype, len(self.shape)
        self.chunks = tuple(c for i, c in enumerate(array.chunks) if i not in self.drop)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (self.ndim - len(key) + 1)
            key = key[:at] + fill + key[at + 1:]
        key = list(key) + [slice(None)] * (self.ndim - len(key))
        full = []
        for axis in range(self.array.ndim):
            full.append(0 if axis in self.drop else key.pop(0))
        return np.asarray(self.array[tuple(full)])

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def __len__(self):
        return self.shape[0]


def multiscales(attrs) -> tuple[list | None, dict]:
    """The ``multiscales`` list of a group's attributes (0.5 nests it under ``"ome"``)."""
    attrs = dict(attrs)
    ome = dict(attrs.get("ome") or {})
    return (ome.get("multiscales") or attrs.get("multiscales")), (ome or attrs)


def is_ome_group(path) -> bool:
    """Whether ``path`` is a zarr group with OME ``multiscales`` metadata."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception:  # not a zarr store at all: the caller reports that
        return False
    return not hasattr(node, "shape") and multiscales(node.attrs)[0] is not None


def read_ome_image(path) -> OmeImage:
    """Read the metadata and the lazy levels of the OME-Zarr image group at ``path``.

    Raises
    ------
    SpocoInputError
        No ``multiscales`` metadata, unknown or repeated axes, a time series, a dataset that
        is missing, or levels whose number of axes differs from the axes listed.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r")
    scales, _ = multiscales(group.attrs)
    if not scales:
        raise SpocoInputError(
            f"Zarr group {str(path)!r} has no OME 'multiscales' metadata, so it is not an "
            "OME-Zarr image; give the path of one array inside it (e.g. 'store.zarr/data') or "
            "write the image with ome-zarr."
        )
    first = scales[0]
    axes = tuple(_axis_name(axis, path) for axis in first.get("axes") or ())
    if not axes or len(set(axes)) != len(axes):
        raise SpocoInputError(
            f"OME-Zarr {str(path)!r} lists axes {list(axes)}: each of t, c, z, y, x may "
            "appear once and y, x are required. Fix the 'axes' of its multiscales metadata."
        )
    if not {"y", "x"} <= set(axes):
        raise SpocoInputError(f"OME-Zarr {str(path)!r} has no y and x axes ({list(axes)}).")
    levels, level0_scale = [], None
    for index, dataset in enumerate(first.get("datasets") or ()):
        try:
            array = group[dataset["path"]]
        except KeyError as err:
            raise SpocoInputError(
                f"OME-Zarr {str(path)!r} lists dataset {dataset.get('path')!r}, which is "
                "missing; copy the store again completely."
            ) from err
        if array.ndim != len(axes):
            raise SpocoInputError(
                f"Level {dataset['path']!r} of {str(path)!r} has {array.ndim} axes but the "
                f"metadata lists {len(axes)} ({list(axes)})."
            )
        if index == 0:
            level0_scale = _scale(dataset, first)
        levels.append(array)
    if not levels:
        raise SpocoInputError(f"OME-Zarr {str(path)!r} lists no datasets in its multiscales.")
    shape0 = levels[0].shape
    if "t" in axes and shape0[axes.index("t")] > 1:
        raise SpocoInputError(
            f"OME-Zarr {str(path)!r} is a time series ({shape0[axes.index('t')]} time points); "
            "napari-spoco segments one time point: save the one you need as its own image."
        )
    drop = tuple(i for i, a in enumerate(axes) if a in "tc" and shape0[i] == 1)
    kept = tuple(a for i, a in enumerate(axes) if i not in drop)
    views = [level if not drop else _Squeezed(level, drop) for level in levels]
    spatial = [i for i, a in enumerate(axes) if a in "zyx"]
    voxel = None if level0_scale is None else tuple(float(level0_scale[i]) for i in spatial)
    units = tuple(dict(first["axes"][i]).get("unit", "") if isinstance(first["axes"][i], dict)
                  else "" for i in spatial)
    return OmeImage(views, kept, voxel, units if any(units) else None,
                    int(group.metadata.zarr_format))


def channel_axis_from_metadata(path, given=None, option: str = "--channel-axis") -> int | None:
    """The channel axis of the image at ``path`` as its OME metadata gives it.

    The axis is counted in the array ``io.read_array`` returns (singleton t and c dropped), so
    a ``(2, Z, Y, X)`` ``czyx`` image gives 0 and a single-channel one None.

    Parameters
    ----------
    path : str or PathLike
        The image file; for anything but an OME-Zarr image ``given`` is returned unchanged.
    given : int or None
        The channel axis the user gave (negative allowed), checked against the metadata.
    option : str
        How the user gave it, for the message.

    Returns
    -------
    int or None
        ``given`` when it agrees with the metadata, else the metadata's channel axis.

    Raises
    ------
    SpocoInputError
        ``given`` names another axis than the metadata's channel axis.

    Examples
    --------
    >>> import tempfile, os, zarr
    >>> from ome_zarr.writer import write_image
    >>> path = os.path.join(tempfile.mkdtemp(), "a.ome.zarr")
    >>> _ = write_image(np.zeros((2, 8, 8), np.float32), zarr.open_group(path, mode="w"),
    ...                 axes="cyx", scale_factors=())
    >>> channel_axis_from_metadata(path), channel_axis_from_metadata(path, given=-3)
    (0, -3)
    """
    from .validation import check_channel_axis

    if path is None or not Path(path).exists() or not is_ome_group(path):
        return given
    image = read_ome_image(path)
    axis = image.channel_axis
    if given is None:
        return axis
    shape = tuple(image.levels[0].shape)
    check_channel_axis(shape, given)
    if axis is not None and given % len(shape) == axis:
        return given
    where = (f"its channel axis is {axis} (c, {shape[axis]} channels)" if axis is not None
             else "it has no channel axis (one channel or none)")
    named = image.axes[given % len(shape)]
    raise SpocoInputError(
        f"{option} {given} contradicts the OME metadata of {str(path)!r}: its axes are "
        f"{''.join(image.axes)} (shape {shape}), so axis {given} is {named!r}, and {where}. "
        f"Drop {option} to use the metadata's channel axis, or fix the image's 'axes' metadata."
    )


def common_channel_axis(paths, given=None, option: str = "--channel-axis") -> int | None:
    """The one channel axis of several images (training takes one for all), by metadata.

    Each OME-Zarr image among ``paths`` is checked with :func:`channel_axis_from_metadata`;
    ``given`` wins when it agrees with all of them, else their common channel axis is
    returned (``given``, possibly None, when none is an OME-Zarr image).

    Raises
    ------
    SpocoInputError
        ``given`` contradicts an image's metadata, or two OME-Zarr images put their channels
        differently (or one has channels and the other none).
    """
    found = {}
    for path in paths:
        if path is not None and Path(path).exists() and is_ome_group(path):
            found[str(path)] = channel_axis_from_metadata(path, given, option)
    if given is not None or not found:
        return given
    if len(set(found.values())) > 1:
        listed = ", ".join(f"{p!r}: {'none' if a is None else a}" for p, a in found.items())
        raise SpocoInputError(
            f"The OME-Zarr images put their channels on different axes ({listed}); training "
            "uses one channel axis for all images. Give images with the same channels."
        )
    return next(iter(found.values()))


def _axis_name(axis, path) -> str:
    name = axis.get("name") if isinstance(axis, dict) else axis
    name = str(name).lower()
    kind = axis.get("type") if isinstance(axis, dict) else None
    if kind == "channel" and name not in KNOWN_AXES:
        # NGFF lets the channel axis have any name ("ch", "channel"); its type says what it is
        name = "c"
    if name not in KNOWN_AXES or (kind is not None and kind != KNOWN_AXES[name]):
        raise SpocoInputError(
            f"OME-Zarr {str(path)!r} has an axis {name!r} of type {kind!r}; napari-spoco reads "
            "the axes t (time), c (channel), z, y, x (space). Rename the axes in its metadata."
        )
    return name


def _scale(dataset, multiscale) -> list | None:
    """The dataset's scale combined with a multiscale-wide one, if any."""
    scale = None
    for transforms in (dataset.get("coordinateTransformations"),
                       multiscale.get("coordinateTransformations")):
        for transform in transforms or ():
            if transform.get("type") == "scale":
                values = [float(v) for v in transform["scale"]]
                scale = values if scale is None else [a * b for a, b in zip(scale, values)]
    return scale


def labels_target(path) -> tuple[Path, str] | None:
    """``(image group, name)`` when ``path`` is ``<OME-Zarr image>/labels/<name>``, else None."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    if path.parent.name != "labels" or not path.name:
        return None
    image = path.parent.parent
    return (image, path.name) if image.exists() and is_ome_group(image) else None


def write_ome_labels(path, labels) -> Path:
    """Write ``labels`` as the OME-Zarr label image ``<image>/labels/<name>`` (``path``).

    The label image is written to a temporary group next to it and renamed into place, then
    its name is added to the ``labels`` group's list; the image's own arrays and attributes
    are never written. Its axes and scale are the image's, without the channel axis.
    """
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_labels

    from .io import _replace_store

    image_path, name = labels_target(path)
    image = read_ome_image(image_path)
    spatial = image.spatial_axes
    if hasattr(labels, "chunks") and not isinstance(labels, np.ndarray):
        # a zarr (or dask) array, e.g. blockwise output: copied chunk by chunk, never loaded
        import dask.array as da

        labels = labels if isinstance(labels, da.Array) else da.from_zarr(labels)
    else:
        labels = np.asarray(labels)
    shape = tuple(image.levels[0].shape[image.axes.index(a)] for a in spatial)
    if labels.shape != shape:
        raise SpocoInputError(
            f"Labels of shape {labels.shape} cannot go into {str(image_path)!r}: its image "
            f"has the spatial shape {shape} ({''.join(spatial)})."
        )
    fmt = FormatV05() if image.zarr_format == 3 else FormatV04()
    final = image_path / "labels" / name
    final.parent.mkdir(exist_ok=True)
    tmp = final.parent / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        store = zarr.open_group(str(tmp), mode="w", zarr_format=image.zarr_format)
        scale = None if image.voxel_size is None else dict(zip(spatial, image.voxel_size))
        write_labels(labels, store, name=name, fmt=fmt, axes=list(spatial),
                     scale=scale, scale_factors=(),
                     label_metadata={"source": {"image": "../../"}})
        _replace_store(tmp / "labels" / name, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _list_label(image_path, name, image.zarr_format)
    return final


def _list_label(image_path: Path, name: str, zarr_format: int) -> None:
    """Add ``name`` to the ``labels`` group's list, replacing its metadata file atomically.

    The new metadata (``zarr.json`` for zarr v3, ``.zattrs`` for v2) is written to a temporary
    file in the same folder and renamed over the old one, so a crash or a full disk leaves the
    old list intact instead of a truncated JSON file that would hide every label image. Every
    other key of the metadata is kept; names already listed keep their order.
    """
    import zarr

    folder = image_path / "labels"
    metadata = folder / ("zarr.json" if zarr_format == 3 else ".zattrs")
    if not (folder / ("zarr.json" if zarr_format == 3 else ".zgroup")).exists():
        zarr.open_group(str(folder), mode="a", zarr_format=zarr_format)  # a new, empty group
    document = json.loads(metadata.read_text()) if metadata.exists() else {}
    if zarr_format == 3:
        attrs = document.setdefault("attributes", {})
        ome = attrs.setdefault("ome", {"version": "0.5"})
    else:
        ome = document
    listed = list(ome.get("labels") or [])
    if name in listed:
        return
    ome["labels"] = listed + [name]
    _replace_json(metadata, document)


def _replace_json(path: Path, document: dict) -> None:
    """Write ``document`` to ``path`` through a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _write_text(tmp, json.dumps(document, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the rename makes it the metadata


def read_voxel_size(path) -> tuple | None:
    """The voxel size ``[Z,] Y, X`` a file records, or None: OME-Zarr scale, ImageJ TIFF
    spacing and resolution. Plain zarr and npy record none.

    Examples
    --------
    >>> import tempfile, tifffile, numpy as np, os
    >>> path = os.path.join(tempfile.mkdtemp(), "stack.tif")
    >>> tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), imagej=True,
    ...                  resolution=(4.0, 4.0), metadata={"spacing": 2.0, "axes": "ZYX"})
    >>> read_voxel_size(path)
    (2.0, 0.25, 0.25)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():  # reading the image itself reports that
        return None
    if suffix in (".tif", ".tiff"):
        try:
            return _tif_voxel_size(path)
        except (ValueError, OSError, KeyError, IndexError, ZeroDivisionError):
            return None  # a tag tifffile cannot parse: the voxel size is unknown
    if is_ome_group(path):
        return read_ome_image(path).voxel_size
    return None


def _tif_voxel_size(path: Path) -> tuple | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        tags = page.tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return None
        (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
        if not (xn and yn):
            return None
        yx = (yd / yn, xd / xn)
        meta = tif.imagej_metadata or {}
        series = tif.series[0]
        if "Z" not in series.axes:
            return yx
        spacing = meta.get("spacing")
        return None if spacing is None else (float(spacing), *yx)


def check_voxel_size(voxel_size, ndim: int) -> tuple:
    """``voxel_size`` as ``ndim`` positive floats (``SpocoInputError`` saying what is wrong).

    Examples
    --------
    >>> check_voxel_size([2, 0.5, 0.5], 3)
    (2.0, 0.5, 0.5)
    """
    values = tuple(float(v) for v in voxel_size)
    if len(values) != ndim or min(values) <= 0:
        raise SpocoInputError(
            f"--voxel-size {' '.join(map(str, voxel_size))} must be {ndim} positive numbers "
            f"({'Z Y X' if ndim == 3 else 'Y X'}) for {ndim}D images."
        )
    return values


def read_pyramid(path) -> list:
    """The resolution levels of an image for display, finest first, as lazy arrays.

    An OME-Zarr image gives all its levels (singleton t/c dropped as in ``io.read_array``);
    any other file one level, ``io.read_array(path, lazy=True)``.

    Examples
    --------
    >>> import tempfile, os
    >>> from napari_spoco.core.io import write_array
    >>> path = write_array(os.path.join(tempfile.mkdtemp(), "a.npy"), np.zeros((4, 4)))
    >>> [level.shape for level in read_pyramid(path)]
    [(4, 4)]
    """
    from .io import read_array

    if Path(path).exists() and is_ome_group(path):
        return read_ome_image(path).levels
    return [read_array(path, lazy=True)]
