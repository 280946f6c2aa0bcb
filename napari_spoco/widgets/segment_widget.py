"""The Segment tab: predict a whole image or stack, cluster, re-cluster, accept objects."""

from __future__ import annotations

import atexit
import shutil
import threading

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_spoco.core.devices import available_devices
from napari_spoco.core.errors import SpocoInputError

from ._logic import (
    INSTANCES_CONTOUR,
    INSTANCES_CONTOUR_OPACITY,
    accept_indices,
    next_free_label,
    object_at,
    result_layer_names,
    segment_buttons,
)
from .clustering_form import ClusteringForm
from .data_widget import OUTPUT_FLAG, is_output
from .keys import viewer_keys
from .layers import channel_mode_for, image_view, show_image, show_labels
from .narrow import WrappingLabel, fit_combos, wrap_rows
from .notifications import notify_info, notify_warning, report_error
from .preview_layers import keep_below
from .remembered_settings import RememberedSettings
from .session_model import EmbeddingsCache, SpocoSession
from .train_settings import shipped_models
from .workers import Progress, predict_and_segment, recluster, start_function_worker

CURRENT_MODEL = "current model (from training)"
PAIRED = "paired annotations (Data tab)"
CHOOSE_FILE = "choose a checkpoint…"
ACCEPT_KEY = "Shift-A"


class SegmentWidget(QWidget):
    """Predict embeddings with the current model or a checkpoint, cluster, accept objects.

    The model, device and clustering choices of earlier sessions are restored from
    ``remembered`` (default: the per-user settings file, see :mod:`.remembered_settings`).
    The chosen image and model, the models offered, the newest training snapshot ("current
    model") and the cached embeddings live in ``session`` (a
    :class:`.session_model.SpocoSession`, a new one when not given); the model list and the
    buttons follow its events.
    """

    def __init__(self, viewer, data_widget, parent=None,
                 remembered: RememberedSettings | None = None,
                 session: SpocoSession | None = None):
        super().__init__(parent)
        self.remembered = RememberedSettings() if remembered is None else remembered
        self.session = SpocoSession() if session is None else session
        self.viewer = viewer
        self.data = data_widget
        self.image_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_combo.addItem(CURRENT_MODEL, None)
        for name, path, _ in shipped_models():
            self.model_combo.addItem(f"shipped: {name}", str(path))
        self.model_combo.addItem(CHOOSE_FILE, CHOOSE_FILE)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", *available_devices()])
        self.predict_button = QPushButton("Predict and segment")
        self.predict_button.setToolTip("Predict embeddings of the whole image, tile by tile, "
                                       "then cluster them")
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.progress.setFormat("%v/%m tiles")
        self.clustering = ClusteringForm()
        self.recluster_button = QPushButton("Segment again")
        self.recluster_button.setToolTip("Cluster the cached embeddings with the settings above "
                                         "(no new prediction)")
        self.annotation_combo = QComboBox()
        self.object_spin = QSpinBox()
        self.object_spin.setRange(0, 2**31 - 1)
        self.object_spin.setToolTip("Id of the predicted object to accept (in the instances layer)")
        self.accept_button = QPushButton("Accept")
        self.accept_cursor_button = QPushButton("Accept the object under the cursor (Shift+A)")
        self.status = WrappingLabel("")

        form = wrap_rows(QFormLayout())
        form.addRow("image", self.image_combo)
        form.addRow("model", self.model_combo)
        form.addRow("device", self.device_combo)
        predict_row = QHBoxLayout()
        predict_row.addWidget(self.predict_button)
        predict_row.addWidget(self.cancel_button)
        accept_form = wrap_rows(QFormLayout())
        accept_form.addRow("into annotations", self.annotation_combo)
        accept_row = QHBoxLayout()
        accept_row.addWidget(self.object_spin)
        accept_row.addWidget(self.accept_button)
        accept_form.addRow("predicted id", accept_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(predict_row)
        layout.addWidget(self.progress)
        layout.addWidget(self.clustering)
        layout.addWidget(self.recluster_button)
        layout.addLayout(accept_form)
        layout.addWidget(self.accept_cursor_button)
        layout.addWidget(self.status)
        layout.addStretch()
        fit_combos(self)  # long layer or file names must not widen the dock

        self.worker = None
        self.instances_layer = None
        self._progress = Progress()
        self._cancel = threading.Event()
        self._timer = QTimer(self)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)

        self.predict_button.clicked.connect(self.predict)
        self.cancel_button.clicked.connect(self.cancel)
        self.recluster_button.clicked.connect(self.recluster)
        self.accept_button.clicked.connect(lambda: self.accept())
        self.accept_cursor_button.clicked.connect(lambda: self.accept_under_cursor())
        self.model_combo.currentIndexChanged.connect(self._on_model_chosen)
        self.image_combo.currentTextChanged.connect(self._on_image_chosen)
        events = self.session.events
        events.models.connect(self._on_models)
        events.model.connect(self._show_model)
        events.embeddings.connect(self._update_buttons)
        self._on_models(self.session.models)
        self._show_model(self.session.model)
        self.remembered.bind_model_combo("segment.model", self.model_combo, self.add_model,
                                         skip=(CHOOSE_FILE,))
        self.remembered.bind_combo_text("segment.device", self.device_combo)
        self.clustering.remember(self.remembered, "segment")
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_choices)
        viewer_keys(viewer).bind(ACCEPT_KEY, lambda v: self.accept_under_cursor())
        self._refresh_choices()
        self._update_buttons()

    @property
    def cache(self) -> EmbeddingsCache | None:
        """The cached embeddings of the last prediction (``session.embeddings``)."""
        return self.session.embeddings

    # -- choices --------------------------------------------------------------------------------

    def _refresh_choices(self, event=None):
        for combo, kind in ((self.image_combo, Image), (self.annotation_combo, Labels)):
            keep = combo.currentText()
            names = [lyr.name for lyr in self.viewer.layers
                     if isinstance(lyr, kind) and not is_output(lyr)]
            if kind is Labels:
                names.insert(0, PAIRED)
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if keep in names:
                combo.setCurrentText(keep)
            combo.blockSignals(False)
        # Rebuilt with signals blocked: the session still learns which image is chosen now.
        self._on_image_chosen(self.image_combo.currentText())
        if self.instances_layer is not None and self.instances_layer not in self.viewer.layers:
            self.instances_layer = None
            self._update_buttons()

    def add_model(self, path, select: bool = True) -> None:
        """Offer the checkpoint ``path`` as the model (and select it), through the session."""
        if select:
            self.session.use_model(path)
        else:
            self.session.add_model(path)

    def _model_index(self, path) -> int:
        """The model combo's row of the checkpoint ``path``, added when missing."""
        index = self.model_combo.findData(path)
        if index < 0:
            index = self.model_combo.count() - 1  # before "choose a checkpoint…"
            # Inserting before the current row moves it and Qt reports that as a new index; with
            # "choose a checkpoint…" current (its file dialog adds the file) that would open the
            # dialog again. The current item itself is unchanged, so nothing is lost.
            blocked = self.model_combo.blockSignals(True)
            self.model_combo.insertItem(index, f"file: {path.rsplit('/', 1)[-1]}", path)
            self.model_combo.blockSignals(blocked)
        return index

    def _on_models(self, models, old=None):
        for path in models:
            self._model_index(path)

    def _show_model(self, path, old=None):
        self.model_combo.setCurrentIndex(0 if path is None else self._model_index(path))

    def _on_image_chosen(self, name):
        self.session.image = name or None

    def _on_model_chosen(self, index):
        data = self.model_combo.itemData(index)
        if data != CHOOSE_FILE:
            self.session.model = data
            return
        path, _ = QFileDialog.getOpenFileName(self, "Model", "",
                                              "napari-spoco checkpoint or bioimage.io model (*.pt *.pth *.zip)")
        if path:
            self.add_model(path)
            self.remembered.remember_model("segment.model", self.model_combo, (CHOOSE_FILE,))
        else:
            self.model_combo.setCurrentIndex(0)

    def _update_buttons(self, *args):
        segmented = self.instances_layer is not None  # _refresh_choices drops a removed one
        enabled = segment_buttons(self.worker is not None, self.cache is not None, segmented)
        self.predict_button.setEnabled(enabled["predict"])
        self.cancel_button.setEnabled(enabled["cancel"])
        self.recluster_button.setEnabled(enabled["recluster"])
        self.accept_button.setEnabled(enabled["accept"])
        self.accept_cursor_button.setEnabled(enabled["accept"])

    # -- predicting ---------------------------------------------------------------------------

    def _model_loader(self):
        """A callable returning ``(model, normalization, model_source)``, run in the worker."""
        path = self.model_combo.currentData()
        device = self.device_combo.currentText()
        if path is None:
            snapshot = self.session.snapshot
            if snapshot is None:
                raise SpocoInputError(
                    "There is no trained model yet: train one in the Train tab (its preview "
                    "or end makes it current), or choose a checkpoint file as the model.")
            return (lambda: (snapshot.build(), snapshot.normalization, snapshot)), \
                f"snapshot@{snapshot.iteration}"

        def load():
            from napari_spoco.core.model.checkpoint import load_model

            loaded = load_model(path, device)
            return loaded.model, loaded.normalization, loaded

        return load, path

    def _channel_mode(self, layer) -> str:
        # A training image keeps the Data tab's channel mode; another image is RGB or not.
        if any(row.image_layer() is layer for row in self.data.rows):
            return self.data.channel_combo.currentText()
        return channel_mode_for(layer)

    def predict(self):
        """Predict embeddings of the whole image (tiled, in a worker), then cluster them."""
        if self.worker is not None:
            notify_warning("A prediction is already running: wait, or press Cancel.")
            return None
        try:
            layer = self.viewer.layers[self.image_combo.currentText()] \
                if self.image_combo.currentText() in self.viewer.layers else None
            if layer is None:
                raise SpocoInputError("Choose the image to segment (open one first).")
            view = image_view(layer, self._channel_mode(layer))
            load, model_key = self._model_loader()
            method, params = self.clustering.method_and_params()
        except SpocoInputError as err:
            report_error(self.status, err, "starting the prediction")
            return None
        self._progress = Progress()
        self._cancel = threading.Event()
        self.session.invalidate()
        self.status.setText("predicting…")
        self.worker = start_function_worker(
            predict_and_segment, load, view.array, view.channel_axis,
            self.device_combo.currentText(), method, params, self._progress, self._cancel,
            on_return=lambda result: self._on_predicted(result, view, model_key),
            on_error=self._on_error, on_finish=self._on_finish, spacing=view.scale,
            blockwise_store=self._new_store,
        )
        self._timer.start()
        self._update_buttons()
        return self.worker

    def cancel(self):
        """Stop the running prediction before its next batch of tiles."""
        self._cancel.set()

    def _show_progress(self):
        self.progress.setMaximum(max(self._progress.total, 1))
        self.progress.setValue(self._progress.done)

    def _new_store(self):
        """A folder for one blockwise result's zarr stores (the layers read from it)."""
        import tempfile
        from pathlib import Path

        return Path(tempfile.mkdtemp(prefix="napari-spoco-blocks-"))

    def _on_predicted(self, result, view, model_key):
        self.session.embeddings = EmbeddingsCache(
            image=view.layer.name, model=model_key, view=view, embeddings=result["embeddings"],
            foreground=result["foreground"], source=result["source"],
            blocks=result.get("blocks"))
        self._show_result(view, result["instances"], result["pca"])
        notes = "".join(f"\n{note}" for note in result["notes"])
        if result.get("blocks"):
            # this image's result layers now read the new store only
            _replace_store(view.layer.name, result["store"])
            count = result["segments"]
            how = f" block by block ({result['blocks']} blocks, kept in {result['store']})"
        else:
            count, how = _count(result["instances"]), ""
        self.status.setText(f"segmented {view.layer.name!r}{how} in {result['seconds']:.1f} s: "
                            f"{count} objects{notes}")
        for note in result["notes"]:
            notify_warning(note)

    def recluster(self):
        """Cluster the cached embeddings again with the current method and parameters."""
        if self.worker is not None:
            notify_warning("Wait for the running prediction or clustering to finish.")
            return None
        if self.cache is None:
            report_error(self.status, SpocoInputError("Nothing to re-cluster yet: press 'Predict "
                                                      "and segment' first."), "re-clustering")
            return None
        try:
            method, params = self.clustering.method_and_params()
        except SpocoInputError as err:
            report_error(self.status, err, "re-clustering")
            return None
        cache = self.cache
        if cache.blockwise:
            # block by block, clustering is part of each block's pass: run it again
            notify_info("This image was segmented block by block: predicting and segmenting "
                        "it again with the new settings.")
            return self.predict()
        self.status.setText(f"clustering with {method}…")
        self.worker = start_function_worker(
            recluster, cache.embeddings, cache.foreground, cache.source, method, params,
            spacing=cache.view.scale,
            on_return=lambda result: self._on_reclustered(result, cache),
            on_error=self._on_error, on_finish=self._on_finish,
        )
        self._update_buttons()
        return self.worker

    def _on_reclustered(self, result, cache):
        self._show_result(cache.view, result["instances"], None)
        self.status.setText(f"re-clustered in {result['seconds']:.1f} s: "
                            f"{_count(result['instances'])} objects")

    def _show_result(self, view, instances, pca):
        meta = {OUTPUT_FLAG: True}
        selection = self.viewer.layers.selection.active
        # One set of result layers per image, updated in place (the user's styling stays).
        names = result_layer_names(view.layer.name,
                                   [(lyr.name, is_output(lyr)) for lyr in self.viewer.layers])
        shown = []
        if pca is not None:  # uint8 RGB (lazy, dask, for a blockwise result)
            # Created hidden: an opaque PCA over the image hides it; one click shows it.
            shown.append(show_image(self.viewer, names["pca"], pca, rgb=True,
                                    scale=view.scale, translate=view.translate, metadata=meta,
                                    contrast_limits=(0, 255), opacity=0.8, visible=False))
        # Outlines, so the image stays visible inside each object.
        self.instances_layer = show_labels(self.viewer, names["instances"], instances,
                                           scale=view.scale, translate=view.translate,
                                           metadata=meta, contour=INSTANCES_CONTOUR,
                                           opacity=INSTANCES_CONTOUR_OPACITY)
        shown.append(self.instances_layer)
        keep_below(self.viewer, shown, [self._annotation_layer(), *self.data.labels_layers()])
        if selection is not None and selection in self.viewer.layers:
            self.viewer.layers.selection.active = selection
        self._update_buttons()

    def _on_error(self, error):
        from napari_spoco.core.inference.prediction import PredictionCancelled

        if isinstance(error, PredictionCancelled):
            self.status.setText("prediction cancelled")
            notify_info("Prediction cancelled.")
            return
        report_error(self.status, error, "segmenting")

    def _on_finish(self):
        self.worker = None
        self._timer.stop()
        self._show_progress()
        self._update_buttons()

    # -- accepting ---------------------------------------------------------------------------

    def _annotation_layer(self):
        name = self.annotation_combo.currentText()
        if name != PAIRED:
            layer = self.viewer.layers[name] if name in self.viewer.layers else None
            return layer if isinstance(layer, Labels) else None
        image = self.cache.image if self.cache is not None else self.image_combo.currentText()
        for row in self.data.rows:
            if row.image_layer() is not None and row.image_layer().name == image:
                return row.labels_layer()
        return None

    def accept(self, object_id: int | None = None) -> int | None:
        """Copy predicted object ``object_id`` into the annotation layer as one undo step.

        Only pixels that are still unpainted (0) are written, under a new free id, so accepting
        never overwrites an annotation. Returns the new annotation id, or None.
        """
        object_id = self.object_spin.value() if object_id is None else int(object_id)
        annotations = self._annotation_layer()
        try:
            if self.instances_layer is None or self.instances_layer not in self.viewer.layers:
                raise SpocoInputError("No segmentation to accept from: press 'Predict and "
                                      "segment' first.")
            if annotations is None:
                raise SpocoInputError("Choose the annotation layer to accept into.")
            predicted = self.instances_layer.data
            if predicted.shape != annotations.data.shape:
                raise SpocoInputError(
                    f"The segmentation {predicted.shape} and the annotation layer "
                    f"{annotations.name!r} {annotations.data.shape} differ in shape; choose the "
                    "annotation layer of the segmented image.")
            if object_id == 0:
                raise SpocoInputError("Id 0 is not an object: choose a predicted object's id, or "
                                      "hover over an object and press Shift+A.")
            indices = accept_indices(predicted, annotations.data, object_id)
        except SpocoInputError as err:
            report_error(self.status, err, "accepting an object")
            return None
        if indices[0].size == 0:
            notify_warning(f"Predicted object {object_id} has no unpainted pixel left to accept.")
            return None
        layers = self.data.labels_layers() or [annotations]
        new_id = next_free_label([lyr.data for lyr in [*layers, annotations]],
                                 self.data.background_id)
        annotations.data_setitem(indices, new_id)  # one undo step in napari's Labels history
        # Show what was accepted: the annotations visible, above the predicted outlines.
        annotations.visible = True
        keep_below(self.viewer, [self.instances_layer], [annotations])
        self.status.setText(f"accepted object {object_id} as annotation {new_id} "
                            f"({indices[0].size} pixels); Ctrl+Z on the layer undoes it")
        return new_id

    def accept_under_cursor(self) -> int | None:
        """Accept the predicted object under the mouse cursor."""
        if self.instances_layer is None:
            report_error(self.status, SpocoInputError("No segmentation to accept from: press "
                                                      "'Predict and segment' first."),
                         "accepting an object")
            return None
        position = self.instances_layer.world_to_data(self.viewer.cursor.position)
        object_id = object_at(self.instances_layer.data, position)
        if object_id == 0:
            notify_warning("There is no predicted object under the cursor: hover over one of the "
                           "instances and press Shift+A again.")
            return None
        self.object_spin.setValue(object_id)
        return self.accept(object_id)


#: Folder of each image's blockwise result (its layers read from it); a folder is removed when
#: a newer result of the same image replaces it, and all of them when Python exits.
_STORES: dict = {}


def _replace_store(image_name: str, store) -> None:
    old = _STORES.get(image_name)
    _STORES[image_name] = store
    if old is not None and old != store:
        shutil.rmtree(old, ignore_errors=True)


def _drop_stores() -> None:
    for store in _STORES.values():
        shutil.rmtree(store, ignore_errors=True)
    _STORES.clear()


atexit.register(_drop_stores)


def _count(labels) -> int:
    ids = np.unique(labels)
    return int((ids != 0).sum())
