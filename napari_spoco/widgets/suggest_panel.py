"""The Data tab's "Suggest next" row: centre the view on the object worth painting next.

The scoring and the choice are ``core.uncertainty`` (``uncertainty_scores``, ``suggest_next``);
prediction and clustering run in a worker thread, the layers change on the main thread.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from napari_spoco.core.errors import SpocoInputError

from .keys import viewer_keys
from .narrow import WrappingLabel
from .notifications import report_error
from .session_model import SpocoSession
from .workers import start_function_worker

#: Free in napari for Labels and Image layers (Shapes uses S for select, but the highlight is
#: a Points layer and the annotation layer stays active).
SUGGEST_KEY = "s"
HIGHLIGHT_NAME = "suggested object"
UNCERTAINTY_NAME = "uncertainty (f/g)"
NO_MODEL = ("There is no model to suggest from yet: paint a few objects and background, train "
            "in the Train tab (a preview or the end of training makes the model current), then "
            "press Suggest next again.")
SUGGEST_TIP = ("Centre the view on the predicted object the model is least sure of (its "
               "segmentation changes most under small changes of contrast and noise) that is "
               "not painted")


def compute_suggestion(snapshot, image, channel_axis, painted, background_id):
    """Worker: segment with f, score each segment (``uncertainty.DEFAULT_SIGNAL``), pick one."""
    from napari_spoco.core.inference.uncertainty import suggest_next, uncertainty_scores

    result = uncertainty_scores(snapshot, image, channel_axis=channel_axis, device="cpu")
    suggestion = suggest_next(result.segments, result.scores, painted,
                              background_id=background_id)
    return result, suggestion


class SuggestPanel(QWidget):
    """A button (and the S key) that suggests the next object, and an uncertainty layer toggle.

    It suggests with ``session.snapshot`` (the newest training weights, see
    :class:`.session_model.SpocoSession`); the button is enabled once there is one. The S key
    stays bound without one and then says what to do.
    """

    def __init__(self, viewer, data_widget, parent=None, session: SpocoSession | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.data = data_widget
        self.session = SpocoSession() if session is None else session
        self.worker = None
        self.last = None  # (UncertaintyResult, Suggestion, view)
        self.button = QPushButton("Suggest next (S)")
        self.show_map = QCheckBox("show uncertainty")
        self.show_map.setToolTip("Show as a layer how much each pixel's embedding varies under "
                                 "the jitters (standard deviation, in units of δd)")
        self.status = WrappingLabel("")
        row = QHBoxLayout()
        row.addWidget(self.button)
        row.addWidget(self.show_map)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)
        self.button.clicked.connect(lambda: self.suggest())
        self.show_map.toggled.connect(lambda _: self._show_map())
        viewer_keys(viewer).bind(SUGGEST_KEY, lambda v: self.suggest())
        self.session.events.snapshot.connect(self._on_snapshot)
        self._on_snapshot(self.session.snapshot)

    def _on_snapshot(self, snapshot, old=None):
        # A disabled button without a reason is a dead end: its tooltip says what to do.
        self.button.setEnabled(snapshot is not None)
        self.button.setToolTip(SUGGEST_TIP if snapshot is not None else NO_MODEL)

    def suggest(self):
        """Start scoring the first pair's image in a worker; the view moves when it is done."""
        if self.worker is not None:
            return None
        try:
            snapshot = self.session.snapshot
            if snapshot is None:
                raise SpocoInputError(NO_MODEL)
            pairs = self.data.pairs()
            view, labels = pairs[0]
            _check_fits(view, snapshot)
        except SpocoInputError as err:
            report_error(self.status, err, "suggesting the next object")
            return None
        self.status.setText("scoring the predicted objects…")
        painted = np.array(labels.data, copy=True)
        self.worker = start_function_worker(
            compute_suggestion, snapshot, view.array, view.channel_axis, painted,
            self.data.background_id,
            on_return=lambda out: self._on_done(out, view, labels),
            on_error=lambda err: report_error(self.status, err, "suggesting the next object"),
            on_finish=self._on_finish)
        return self.worker

    def _on_finish(self):
        self.worker = None

    def _on_done(self, out, view, labels):
        result, suggestion = out
        self.last = (result, suggestion, view)
        self.status.setText(suggestion.reason)
        self._show_map()
        if suggestion.segment_id is None:
            return
        world = [t + c * s for t, c, s in zip(view.translate, suggestion.centre, view.scale)]
        if len(world) == 3:  # a 3D stack: go to the object's slice
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, world[0])
        scene = getattr(self.viewer, "scene", None)  # napari 0.9 moved the camera there
        camera = scene.camera if scene is not None else self.viewer.camera
        camera.center = tuple(world[-2:]) if len(world) == 2 else tuple(world)
        points = np.array([suggestion.centre])
        if HIGHLIGHT_NAME in self.viewer.layers:
            layer = self.viewer.layers[HIGHLIGHT_NAME]
            layer.data = points
        else:
            from .data_widget import OUTPUT_FLAG

            layer = self.viewer.add_points(points, name=HIGHLIGHT_NAME, size=12,
                                           face_color="transparent", border_color="yellow",
                                           scale=view.scale, translate=view.translate,
                                           metadata={OUTPUT_FLAG: True})
        self.viewer.layers.selection.active = labels  # keep painting in the annotations

    def _show_map(self):
        if self.last is None:
            return
        result, _, view = self.last
        if UNCERTAINTY_NAME in self.viewer.layers:
            layer = self.viewer.layers[UNCERTAINTY_NAME]
            layer.data = result.pixel_map
        elif self.show_map.isChecked():
            from .data_widget import OUTPUT_FLAG

            layer = self.viewer.add_image(result.pixel_map, name=UNCERTAINTY_NAME,
                                          colormap="magma", blending="additive", opacity=0.6,
                                          scale=view.scale, translate=view.translate,
                                          metadata={OUTPUT_FLAG: True})
        else:
            return
        layer.visible = self.show_map.isChecked()


def _check_fits(view, snapshot) -> None:
    """Suggest next holds the embeddings of f and g in memory: refuse an image too large."""
    from napari_spoco.core.inference.blockwise import needs_blockwise

    channels = int(snapshot.architecture.get("out_channels", 16))
    if needs_blockwise(view.spatial_shape, 2 * channels, lazy=False):
        raise SpocoInputError(
            f"Image {view.layer.name!r} {view.spatial_shape} is too large for Suggest next, "
            "which holds two sets of its embeddings in memory. Paint and suggest on a cropped "
            "region (e.g. a layer made of a slice of it), then segment the whole image in the "
            "Segment tab, which works block by block."
        )
