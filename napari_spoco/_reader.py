"""npe2 reader for napari-spoco checkpoints: dropping a ``.pt`` file loads it as the model.

A bioimage.io model package (``.zip``) loads the same way (see ``core/model/bioimageio_import.py``).

A checkpoint holds a network, not an image, so the reader returns napari's "nothing to add"
sentinel ``[(None,)]`` after handing the checkpoint to the SPOCO dock widget (opening the dock
when it is not open yet). A file that is not a napari-spoco checkpoint gives a notification that
says so, instead of napari's generic "no reader" error.

An OME-Zarr image folder (``*.zarr`` with ``multiscales`` metadata) opens as one image layer,
lazily and with its pyramid and voxel size, plus one labels layer per listed label image
(its level 0 read into memory, so it can be painted and autosaved). Its
channels stay in that one layer, on the first axis where OME-Zarr puts ``c``, instead of
napari's ``channel_axis`` split into one layer per channel: the SPOCO dock segments one image
layer, and a multi-channel model needs all channels in it (channel mode "first axis"). The
layer's ``metadata["channel_axis"]`` records the axis (None for one channel).
"""

from __future__ import annotations

import os

SUFFIXES = (".pt", ".pth")
#: bioimage.io model packages: a zip, or its rdf.yaml / bioimageio.yaml
PACKAGE_SUFFIXES = (".zip", "rdf.yaml", "bioimageio.yaml")
DOCK_WIDGET = "SPOCO"
PLUGIN = "napari-spoco"


def get_reader(path):
    """Return :func:`read_checkpoint` for a single ``.pt``/``.pth`` path or bioimage.io
    package (``.zip`` or ``rdf.yaml``), else None (also for zips that are no such package)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if os.path.isdir(path) and str(path).rstrip("/\\").lower().endswith(".zarr"):
        from napari_spoco.core.ome_zarr import is_ome_group

        # plain zarr stores are not ours: napari's own reader opens them
        return read_ome_zarr if is_ome_group(path) else None
    if not os.path.isfile(path):
        return None
    if str(path).lower().endswith(SUFFIXES):
        return read_checkpoint
    if str(path).lower().endswith(PACKAGE_SUFFIXES):
        from napari_spoco.core.model.bioimageio_import import is_bioimageio_package

        # other zips and YAML files are not ours: let napari try its other readers
        return read_checkpoint if is_bioimageio_package(path) else None
    return None


def read_checkpoint(path):
    """Validate the checkpoint, make it the current model, and add no layer.

    Returns
    -------
    list
        ``[(None,)]``, napari's marker for "read successfully, nothing to show".
    """
    from napari_spoco.core.errors import CheckpointError
    from napari_spoco.core.model.checkpoint import load_checkpoint
    from napari_spoco.widgets._session import dropped_models
    from napari_spoco.widgets.notifications import notify_error, notify_info

    if isinstance(path, (list, tuple)):
        path = path[0]
    try:
        load_checkpoint(path)
    except CheckpointError as err:
        notify_error(err, f"opening {os.path.basename(path)}")
        return [(None,)]
    except Exception as err:  # torch's loaders raise many kinds for foreign bytes
        notify_error(CheckpointError(
            f"Cannot open {os.path.basename(path)!r} as a model: it is not a napari-spoco "
            f"checkpoint ({type(err).__name__}: {err}). Drop a .pt file written by "
            "napari-spoco training."), f"opening {os.path.basename(path)}")
        return [(None,)]
    _ensure_dock_widget()
    dropped_models.offer(path)
    notify_info(f"Loaded model {os.path.basename(path)}: it is now the model to fine-tune "
                "and to segment with.")
    return [(None,)]


def read_ome_zarr(path):
    """Layer data tuples for an OME-Zarr image and the label images listed beside it.

    Returns
    -------
    list of tuple
        ``(levels, kwargs, "image")`` (channels, if any, on the axis the metadata gives, kept
        in this one layer), then ``(array, kwargs, "labels")`` for each label image (level 0,
        in memory: napari paints no pyramid). An image that cannot be read gives a
        notification and ``[(None,)]``.
    """
    from napari_spoco.core.errors import SpocoInputError
    from napari_spoco.widgets.notifications import notify_error

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = str(path).rstrip("/\\")
    name = os.path.basename(path)
    try:
        layers = [_ome_layer(path, name, "image")]
        layers += [_ome_layer(os.path.join(path, "labels", label), label, "labels")
                   for label in _listed_labels(path)]
    except SpocoInputError as err:
        notify_error(err, f"opening {name}")
        return [(None,)]
    return layers


def _ome_layer(path, name, kind):
    import numpy as np

    from napari_spoco.core.ome_zarr import read_ome_image

    image = read_ome_image(path)
    channel_axis = image.channel_axis
    scale = list(image.voxel_size or (1.0,) * len(image.spatial_axes))
    if channel_axis is not None:
        scale.insert(channel_axis, 1.0)  # channels are no distance
    levels = image.levels
    if kind == "labels":
        # Labels are for painting (and autosave, training): napari paints neither a pyramid
        # nor the read-only store, so level 0 is read into memory and the rest left out.
        levels = [np.asarray(levels[0])]
    kwargs = {
        "name": name,
        "scale": tuple(scale),
        "axis_labels": image.axes,
        "multiscale": len(levels) > 1,
        "metadata": {"channel_axis": channel_axis, "ome_axes": image.axes, "path": path},
    }
    if kind == "image":
        # x is never colour in OME-Zarr: napari would guess RGB for a width of 3 or 4
        kwargs["rgb"] = False
    return (levels if len(levels) > 1 else levels[0], kwargs, kind)


def _listed_labels(path) -> list:
    import zarr

    from napari_spoco.core.ome_zarr import is_ome_group

    folder = os.path.join(path, "labels")
    if not os.path.isdir(folder):
        return []
    attrs = dict(zarr.open_group(folder, mode="r").attrs)
    names = (attrs.get("ome") or {}).get("labels") or attrs.get("labels") or []
    # a name listed but missing (removed by hand) is skipped, not a failure to open the image
    return [n for n in names if is_ome_group(os.path.join(folder, n))]


def _ensure_dock_widget() -> None:
    # The reader has no viewer argument; the current viewer is the one the file was dropped on.
    try:
        import napari

        viewer = napari.current_viewer()
    except ImportError:  # pragma: no cover - napari is a dependency
        return
    if viewer is None or getattr(viewer, "window", None) is None:
        return
    from napari_spoco.widgets import SpocoWidget

    if any(isinstance(w, SpocoWidget) for w in _dock_contents(viewer)):
        return
    viewer.window.add_plugin_dock_widget(PLUGIN, DOCK_WIDGET)


def _dock_contents(viewer):
    docks = getattr(viewer.window, "dock_widgets", None) or {}
    return list(docks.values()) if hasattr(docks, "values") else []
