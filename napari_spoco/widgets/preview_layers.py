"""The main-thread side of the live preview: what the user looks at, and the preview layers."""

from __future__ import annotations

import numpy as np

from ._logic import (
    PREVIEW_MAX_PIXELS_2D,
    PREVIEW_MAX_PIXELS_3D,
    output_layer_name,
    visible_region,
)
from .data_widget import OUTPUT_FLAG, is_output
from .layers import show_image, show_labels
from .preview import PreviewRequest, PreviewResult

PCA_LAYER = "embeddings (PCA)"
INSTANCES_LAYER = "instances"
PCA_OPACITY = 0.8
INSTANCES_OPACITY = 0.5


def preview_request(viewer, views, depth: int = 16) -> PreviewRequest | None:
    """The visible part of the topmost visible training image, as a :class:`PreviewRequest`.

    Parameters
    ----------
    viewer : napari.Viewer
    views : list of ImageView
        The training images.
    depth : int
        For 3D images, the slab of slices around the current one the network sees (the
        training patch depth).
    """
    if not views:
        return None
    visible = [v for v in views if v.layer.visible and v.layer in viewer.layers]
    view = visible[-1] if visible else views[0]
    layer = view.layer
    offset = viewer.dims.ndim - layer.ndim
    displayed_world = list(viewer.dims.displayed)
    displayed = [i for i, axis in enumerate(view.layer_axes) if axis + offset in displayed_world]
    if not displayed:
        return None
    corners = layer.corner_pixels[:, list(view.layer_axes)]
    point = layer.world_to_data(viewer.dims.point[-layer.ndim:])
    point = [point[a] for a in view.layer_axes]
    context = None
    budget = PREVIEW_MAX_PIXELS_2D
    if view.ndim == 3:
        context = [depth if i not in displayed else 1 for i in range(3)]
        budget = PREVIEW_MAX_PIXELS_3D
        if len(displayed) < 3:
            budget //= depth
    read, shown, origin = visible_region(view.spatial_shape, corners, point, displayed, budget,
                                         context)
    return PreviewRequest(view.array, view.channel_axis, read, shown, origin, view.scale,
                          view.translate)


def prepare_preview_layers(viewer, request: PreviewRequest, annotations) -> tuple:
    """Create empty preview layers for ``request`` under the annotation layers.

    The PCA layer starts transparent: revealing it by opacity redraws less than by visibility,
    which re-slices the layer. Label 0 is transparent anyway.
    """
    shape = tuple(s.stop - s.start for s in request.shown)
    with _selection_kept(viewer):
        pca_name, instances_name = preview_layer_names(viewer)
        pca = show_image(viewer, pca_name, np.zeros((*shape, 3), np.uint8), rgb=True,
                         scale=request.scale, translate=request.layer_translate,
                         metadata={OUTPUT_FLAG: True}, opacity=0.0, contrast_limits=(0, 255))
        labels = show_labels(viewer, instances_name, np.zeros(shape, np.uint32),
                             scale=request.scale, translate=request.layer_translate,
                             metadata={OUTPUT_FLAG: True}, opacity=INSTANCES_OPACITY)
        keep_below(viewer, [pca, labels], annotations)
    return pca, labels


def show_preview_layers(viewer, result: PreviewResult, annotations, reveal=False) -> tuple:
    """Copy a preview into the preview layers (created if the user deleted them)."""
    request = result.request
    rgb = (np.clip(result.pca, 0.0, 1.0) * 255).round().astype(np.uint8)
    instances = np.asarray(result.instances, dtype=np.uint32)
    with _selection_kept(viewer):
        pca_name, instances_name = preview_layer_names(viewer)
        pca = show_image(viewer, pca_name, rgb, rgb=True, scale=request.scale,
                         translate=request.layer_translate, metadata={OUTPUT_FLAG: True},
                         opacity=PCA_OPACITY)
        labels = show_labels(viewer, instances_name, instances, scale=request.scale,
                             translate=request.layer_translate, metadata={OUTPUT_FLAG: True},
                             opacity=INSTANCES_OPACITY)
        keep_below(viewer, [pca, labels], annotations)
    if reveal:
        pca.opacity = PCA_OPACITY
    return pca, labels


def preview_layer_names(viewer) -> tuple[str, str]:
    """Names of the two preview layers: one set, updated in place; a user's layer is kept."""
    taken = [(lyr.name, is_output(lyr)) for lyr in viewer.layers]
    return output_layer_name(PCA_LAYER, taken), output_layer_name(INSTANCES_LAYER, taken)


def keep_below(viewer, layers, annotations) -> None:
    """Move ``layers`` under the annotation layers, so previews never hide what is painted."""
    annotations = [lyr for lyr in annotations if lyr is not None and lyr in viewer.layers]
    if not annotations:
        return
    lowest = min(viewer.layers.index(lyr) for lyr in annotations)
    for layer in layers:
        index = viewer.layers.index(layer)
        if index > lowest:
            viewer.layers.move(index, lowest)
            lowest += 1


class _selection_kept:  # noqa: N801 (used as a context manager)
    """Adding a layer selects it; give the selection back (the user may be painting)."""

    def __init__(self, viewer):
        self.viewer = viewer

    def __enter__(self):
        self.active = self.viewer.layers.selection.active

    def __exit__(self, *exc):
        if self.active is not None and self.active in self.viewer.layers \
                and self.viewer.layers.selection.active is not self.active:
            self.viewer.layers.selection.active = self.active
