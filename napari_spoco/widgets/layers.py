"""Reading napari layers in the core's layout, and writing result layers in place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels

from napari_spoco.core.errors import SpocoInputError

from ._logic import spatial_axes

#: Channel modes the Data tab offers: where an image layer keeps its channels.
CHANNELS_NONE = "none"
CHANNELS_FIRST = "first axis"
CHANNELS_RGB = "RGB (last axis)"
CHANNEL_MODES = (CHANNELS_NONE, CHANNELS_FIRST, CHANNELS_RGB)


@dataclass
class ImageView:
    """An image layer seen as the core sees images.

    Attributes
    ----------
    array : array-like
        ``(C,) [Z,] Y, X``: channels first (RGB moved there) or no channel axis.
    channel_axis : int or None
        0 or None, for the core.
    spatial_shape : tuple of int
    layer_axes : tuple of int
        The layer's dimensions that are spatial (napari counts an RGB axis as no dimension).
    scale, translate : tuple of float
        Spatial scale and translate of the layer.
    """

    layer: Image
    array: object
    channel_axis: int | None
    spatial_shape: tuple
    layer_axes: tuple
    scale: tuple
    translate: tuple

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)


def channel_mode_for(layer: Image) -> str:
    """The channel mode a freshly chosen image most likely needs.

    An OME-Zarr image opened by napari-spoco's reader with several channels keeps them on its
    first axis and says so in ``metadata["channel_axis"]`` (``_reader.read_ome_zarr``): that is
    "first axis". Otherwise an RGB layer is "RGB (last axis)" and any other layer "none".
    """
    if getattr(layer, "rgb", False):
        return CHANNELS_RGB
    metadata = getattr(layer, "metadata", None) or {}
    return CHANNELS_FIRST if metadata.get("channel_axis") == 0 else CHANNELS_NONE


def image_view(layer: Image, channel_mode: str) -> ImageView:
    """Describe ``layer`` for the core, or raise ``SpocoInputError`` if the mode cannot apply."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(int(s) for s in data.shape)
    if channel_mode == CHANNELS_RGB:
        if not layer.rgb:
            raise SpocoInputError(
                f"Image layer {layer.name!r} is not RGB; choose channels 'none' or 'first axis'."
            )
        array, channel_axis = _channels_first(data), 0
        spatial = shape[:-1]
        layer_axes = tuple(range(len(spatial)))
    elif channel_mode == CHANNELS_FIRST:
        if getattr(layer, "rgb", False):
            raise SpocoInputError(
                f"Image layer {layer.name!r} is RGB; choose channels 'RGB (last axis)'."
            )
        if len(shape) < 3:
            raise SpocoInputError(
                f"Image layer {layer.name!r} of shape {shape} has no channel axis to spare; "
                "choose channels 'none'."
            )
        array, channel_axis = data, 0
        spatial = shape[1:]
        layer_axes = spatial_axes(len(shape), 0)
    else:
        if getattr(layer, "rgb", False):
            raise SpocoInputError(
                f"Image layer {layer.name!r} is RGB; choose channels 'RGB (last axis)'."
            )
        array, channel_axis, spatial = data, None, shape
        layer_axes = tuple(range(len(shape)))
    if len(spatial) not in (2, 3):
        raise SpocoInputError(
            f"Image layer {layer.name!r} has {len(spatial)} spatial axes (shape {shape}, "
            f"channels {channel_mode!r}); napari-spoco works on 2D and 3D images. Set the "
            "channel mode, or split time points into separate layers."
        )
    scale = tuple(float(layer.scale[a]) for a in layer_axes)
    translate = tuple(float(layer.translate[a]) for a in layer_axes)
    return ImageView(layer, array, channel_axis, spatial, layer_axes, scale, translate)


def is_lazy(data) -> bool:
    """Whether layer data is read on demand (dask, zarr...), not an array in memory."""
    return not isinstance(data, np.ndarray)


def _channels_first(data):
    """An RGB layer's data with channels first; a lazy array stays lazy (dask)."""
    if not is_lazy(data):
        return np.moveaxis(data, -1, 0)
    import dask.array as da

    return da.moveaxis(data if isinstance(data, da.Array) else da.from_array(data), -1, 0)


def check_labels_fit(view: ImageView, labels: Labels) -> None:
    """Raise ``SpocoInputError`` unless ``labels`` has the image's spatial shape."""
    shape = tuple(labels.data.shape)
    if shape != view.spatial_shape:
        raise SpocoInputError(
            f"Labels layer {labels.name!r} has shape {shape} but image {view.layer.name!r} has "
            f"spatial shape {view.spatial_shape}. Choose the labels layer made for this image, "
            "or press 'New' next to 'labels' to create one of the right shape."
        )


def show_image(viewer, name: str, data, *, rgb=False, scale=None, translate=None, **kwargs):
    """Add an image layer called ``name``, or update the existing one in place."""
    layer = _existing(viewer, name, Image, data, rgb)
    if layer is None:
        return viewer.add_image(data, name=name, rgb=rgb, scale=scale, translate=translate,
                                **kwargs)
    _place(layer, scale, translate)
    _set_data(layer, data)
    return layer


def show_labels(viewer, name: str, data, *, scale=None, translate=None, contour=None,
                **kwargs):
    """Add a Labels layer called ``name``, or update the existing one in place.

    ``contour`` (outline thickness; ``add_labels`` takes none) and ``kwargs`` style a new
    layer only: an updated layer keeps what the user set.
    """
    layer = _existing(viewer, name, Labels, data, False)
    if layer is None:
        layer = viewer.add_labels(data, name=name, scale=scale, translate=translate, **kwargs)
        if contour is not None:
            layer.contour = contour
        return layer
    _place(layer, scale, translate)
    _set_data(layer, data)
    return layer


def _set_data(layer, data) -> None:
    """Copy into the layer's own array when shapes and dtypes agree, else replace it.

    Copying plus ``refresh`` costs about half the main-thread time of assigning
    ``layer.data``, which also recomputes the viewer's dimensions and the layer's caches.
    """
    current = layer.data
    if (isinstance(current, np.ndarray) and isinstance(data, np.ndarray)
            and current.shape == data.shape and current.dtype == data.dtype
            and current.flags.writeable):
        current[...] = data
        layer.refresh()
    else:
        layer.data = data


def _existing(viewer, name, kind, data, rgb):
    if name not in viewer.layers:
        return None
    layer = viewer.layers[name]
    data_ndim = np.ndim(data) - (1 if rgb else 0)
    if isinstance(layer, kind) and layer.ndim == data_ndim and getattr(layer, "rgb", rgb) == rgb:
        return layer
    # Another kind or dimensionality cannot be updated in place: replace it.
    viewer.layers.remove(layer)
    return None


def _place(layer, scale, translate) -> None:
    if scale is not None and tuple(layer.scale) != tuple(scale):
        layer.scale = scale
    if translate is not None and tuple(layer.translate) != tuple(translate):
        layer.translate = translate
