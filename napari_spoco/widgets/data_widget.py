"""The Data tab: which images to train on, their sparse annotation layers, and autosave."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_spoco.core.errors import SpocoInputError

from ._logic import count_objects, next_free_label
from .autosave_panel import AutosavePanel
from .keys import viewer_keys
from .layers import (
    CHANNEL_MODES,
    channel_mode_for,
    check_labels_fit,
    image_view,
)
from .narrow import WrappingLabel, fit_combos, wrap_rows
from .notifications import notify_error
from .session_model import SpocoSession
from .suggest_panel import SuggestPanel

#: Shortcuts while painting. napari's Labels layer uses M for "max + 1" (which would jump past a
#: large background id), 1-7, E P F L Z X B - = [ ]; N and G are free in napari 0.9.
NEW_OBJECT_KEY = "n"
BACKGROUND_KEY = "g"
DEFAULT_BACKGROUND_ID = 65535
NO_LAYER = "—"
OUTPUT_FLAG = "spoco_output"  # metadata key of layers the plugin writes (never offered as input)


def is_output(layer) -> bool:
    """Whether ``layer`` is a preview/segmentation layer written by the plugin."""
    return bool(layer.metadata.get(OUTPUT_FLAG, False))



def edit_history_position(layer) -> tuple[int, int]:
    """Lengths of a Labels layer's undo and redo queues: they change on undo and redo.

    napari has no public undo/redo event (``Labels._load_history`` writes the array and calls
    ``refresh``), so the private queues are read, with (0, 0) if a napari version lacks them.
    """
    return (len(getattr(layer, "_undo_history", ())), len(getattr(layer, "_redo_history", ())))

class PairRow(QWidget):
    """One training pair: an image layer, its annotation layer, and its object count."""

    def __init__(self, owner: DataWidget):
        super().__init__()
        self.owner = owner
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.new_labels_button = QPushButton("New")
        self.new_labels_button.setToolTip("Create an empty annotation layer for this image")
        self.count_label = QLabel("0 objects")
        self.remove_button = QPushButton("✕")
        self.remove_button.setFixedWidth(28)
        self.remove_button.setToolTip("Remove this image from the training set")
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("image"), 0, 0)
        layout.addWidget(self.image_combo, 0, 1)
        layout.addWidget(self.remove_button, 0, 2)
        layout.addWidget(QLabel("labels"), 1, 0)
        layout.addWidget(self.labels_combo, 1, 1)
        layout.addWidget(self.new_labels_button, 1, 2)
        layout.addWidget(self.count_label, 2, 1)
        layout.setColumnStretch(1, 1)
        fit_combos(self)  # long layer names must not widen the dock
        self.new_labels_button.clicked.connect(lambda: owner.create_labels(self))
        self.remove_button.clicked.connect(lambda: owner.remove_row(self))
        self.image_combo.currentIndexChanged.connect(lambda _: owner._on_image_chosen(self))
        self.labels_combo.currentIndexChanged.connect(lambda _: owner._on_labels_chosen(self))

    def image_layer(self):
        return self.owner._chosen(self.image_combo)

    def labels_layer(self):
        return self.owner._chosen(self.labels_combo)


class DataWidget(QWidget):
    """Choose image/annotation pairs, paint objects and background, autosave annotations.

    ``session`` (a :class:`.session_model.SpocoSession`, a new one when not given) is the dock's
    shared state; the "Suggest next" panel reads the newest model from it.
    """

    pairs_changed = Signal()

    def __init__(self, viewer, parent=None, session: SpocoSession | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.session = SpocoSession() if session is None else session
        self.rows: list[PairRow] = []
        self._bound_layers = set()

        self.channel_combo = QComboBox()
        self.channel_combo.addItems(CHANNEL_MODES)
        self.channel_combo.setToolTip(
            "Where the images keep their channels: none (grayscale), the first axis "
            "(C, [Z,] Y, X), or RGB"
        )
        self.rows_box = QVBoxLayout()
        self.add_button = QPushButton("Add image")
        self.add_button.setToolTip("Several image/labels pairs make one training set")
        self.new_object_button = QPushButton("New object (N)")
        self.new_object_button.setToolTip(
            "Select the next free label id in the annotation layer and start painting it"
        )
        self.background_check = QCheckBox("Background brush (G)")
        self.background_check.setToolTip(
            "Paint pixels you know are background with this id; they are learned as one more "
            "object (the spec's background_id). Off: background is never painted."
        )
        self.background_spin = QSpinBox()
        self.background_spin.setRange(1, 2**31 - 1)
        self.background_spin.setValue(DEFAULT_BACKGROUND_ID)
        self.autosave = AutosavePanel(viewer)

        form = wrap_rows(QFormLayout())
        form.addRow("channels", self.channel_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(self.rows_box)
        layout.addWidget(self.add_button)
        paint_row = QHBoxLayout()
        paint_row.addWidget(self.new_object_button)
        layout.addLayout(paint_row)
        background_row = QHBoxLayout()
        background_row.addWidget(self.background_check)
        background_row.addWidget(self.background_spin)
        layout.addLayout(background_row)
        layout.addWidget(self.autosave)
        # after the painting rows: the object worth painting next (core.uncertainty)
        self.suggest = SuggestPanel(viewer, self, session=self.session)
        layout.addWidget(self.suggest)
        self.summary = WrappingLabel("")
        layout.addWidget(self.summary)
        layout.addStretch()
        fit_combos(self)

        self._history_seen: dict[int, tuple[int, int]] = {}
        self._count_timer = QTimer(self)
        self._count_timer.setSingleShot(True)
        self._count_timer.setInterval(300)
        self._count_timer.timeout.connect(self.update_counts)

        self.add_button.clicked.connect(lambda: self.add_row())
        self.new_object_button.clicked.connect(lambda: self.new_object())
        self.background_check.toggled.connect(self._on_background_toggled)
        self.background_spin.valueChanged.connect(lambda _: self._count_timer.start())
        self.channel_combo.currentTextChanged.connect(lambda _: self.pairs_changed.emit())
        viewer.layers.events.inserted.connect(self._on_inserted)
        for event in (viewer.layers.events.removed, viewer.layers.events.moved):
            event.connect(self._refresh_choices)
        for layer in viewer.layers:
            layer.events.name.connect(self._refresh_choices)
        keys = viewer_keys(viewer)  # given back when the dock closes
        keys.bind(NEW_OBJECT_KEY, self._viewer_new_object)
        keys.bind(BACKGROUND_KEY, self._viewer_background)
        self.add_row()
        for layer in self._layers(Image):  # opened before the dock: restore their work too
            self.autosave.image_opened(layer)

    # -- layer choices ---------------------------------------------------------------------

    def _chosen(self, combo):
        # Combos hold the layers themselves, so renaming a layer keeps the choice.
        layer = combo.currentData()
        return layer if layer is not None and layer in self.viewer.layers else None

    def _layers(self, kind):
        return [layer for layer in self.viewer.layers
                if isinstance(layer, kind) and not is_output(layer)]

    def _on_inserted(self, event):
        event.value.events.name.connect(self._refresh_choices)
        self._refresh_choices()
        if isinstance(event.value, Image) and not is_output(event.value):
            self.autosave.image_opened(event.value)

    def _refresh_choices(self, event=None):
        for row in self.rows:
            self._fill(row.image_combo, self._layers(Image), row.image_layer())
            self._fill(row.labels_combo, [None, *self._layers(Labels)], row.labels_layer())
            if row.labels_layer() is None and row.image_layer() is not None:
                # A labels layer that fits the image appeared (e.g. with sample data): pair it.
                match = self._matching_labels(row.image_layer())
                if match is not None:
                    row.labels_combo.setCurrentText(match.name)
        for layer in list(self._bound_layers):
            if layer not in self.viewer.layers:
                self._bound_layers.discard(layer)
        self._count_timer.start()

    @staticmethod
    def _fill(combo, layers, keep):
        """Refill ``combo`` with ``layers`` (None: "no layer"), keeping ``keep`` selected."""
        combo.blockSignals(True)
        combo.clear()
        for layer in layers:
            combo.addItem(NO_LAYER if layer is None else layer.name, layer)
        index = next((i for i, layer in enumerate(layers) if layer is keep), 0)
        combo.setCurrentIndex(index if layers else -1)
        combo.blockSignals(False)
        if combo.currentData() is not keep:
            combo.currentIndexChanged.emit(combo.currentIndex())

    def add_row(self, image=None, labels=None) -> PairRow:
        """Add a training pair, preselecting ``image``/``labels`` (layers or names)."""
        row = PairRow(self)
        self.rows.append(row)
        self.rows_box.addWidget(row)
        used = [r.image_layer() for r in self.rows[:-1]]
        free = [lyr for lyr in self._layers(Image) if all(lyr is not u for u in used)]
        self._fill(row.image_combo, self._layers(Image), free[0] if free else None)
        self._fill(row.labels_combo, [None, *self._layers(Labels)], None)
        if image is not None:
            row.image_combo.setCurrentText(getattr(image, "name", image))
        if labels is not None:
            row.labels_combo.setCurrentText(getattr(labels, "name", labels))
        self._on_image_chosen(row, keep_labels=labels is not None)
        return row

    def remove_row(self, row: PairRow) -> None:
        """Remove a pair from the training set (the layers stay in the viewer)."""
        if row in self.rows:
            self.rows.remove(row)
            row.setParent(None)
            row.deleteLater()
            self.pairs_changed.emit()
            self._count_timer.start()

    def _on_image_chosen(self, row: PairRow, keep_labels=False):
        layer = row.image_layer()
        if layer is not None and row is self.rows[0]:
            self.channel_combo.setCurrentText(channel_mode_for(layer))
        if layer is not None and not keep_labels:
            match = self._matching_labels(layer)
            row.labels_combo.setCurrentText(match.name if match is not None else NO_LAYER)
        self.pairs_changed.emit()

    def _matching_labels(self, image_layer):
        try:
            shape = image_view(image_layer, self.channel_combo.currentText()).spatial_shape
        except SpocoInputError:
            return None
        fitting = [c for c in self._layers(Labels) if tuple(c.data.shape) == shape]
        for layer in fitting:
            if layer.metadata.get("spoco_image") == image_layer.name:
                return layer
        return fitting[0] if fitting else None

    def _on_labels_chosen(self, row: PairRow):
        layer = row.labels_layer()
        if layer is not None:
            self._bind(layer)
            if row.image_layer() is not None:
                self.autosave.track(layer, row.image_layer())
        self.pairs_changed.emit()
        self._count_timer.start()

    def create_labels(self, row: PairRow | None = None):
        """Add an empty uint32 annotation layer matching the row's image, and select it."""
        row = row or self.rows[0]
        image = row.image_layer()
        if image is None:
            notify_error(SpocoInputError(
                "Choose an image layer first, then press 'New' next to 'labels'."),
                "creating labels")
            return None
        try:
            view = image_view(image, self.channel_combo.currentText())
        except SpocoInputError as err:
            notify_error(err, "creating labels")
            return None
        labels = self.viewer.add_labels(
            np.zeros(view.spatial_shape, dtype=np.uint32), name=f"{image.name} annotations",
            scale=view.scale, translate=view.translate, metadata={"spoco_image": image.name},
        )
        row.labels_combo.setCurrentText(labels.name)
        self.new_object(labels)
        return labels

    # -- painting --------------------------------------------------------------------------

    @property
    def background_id(self) -> int | None:
        """The background brush id, or None when the background brush is off."""
        return self.background_spin.value() if self.background_check.isChecked() else None

    def labels_layers(self) -> list:
        """The annotation layers of all pairs (those that are set)."""
        return [r.labels_layer() for r in self.rows if r.labels_layer() is not None]

    def _bind(self, layer):
        if layer in self._bound_layers:
            return
        layer.bind_key(NEW_OBJECT_KEY, lambda lyr: self.new_object(lyr), overwrite=True)
        layer.bind_key(BACKGROUND_KEY, lambda lyr: self.paint_background(lyr), overwrite=True)
        layer.events.paint.connect(lambda e: self._count_timer.start())
        layer.events.data.connect(lambda e: self._count_timer.start())
        # Undo and redo write the array and only refresh the layer (``set_data``, which slicing
        # also emits): recount when the edit history moved.
        layer.events.set_data.connect(lambda e, lyr=layer: self._on_set_data(lyr))
        self._bound_layers.add(layer)
        self._detect_background(layer)

    def _on_set_data(self, layer) -> None:
        history = edit_history_position(layer)
        if history != self._history_seen.get(id(layer)):
            self._history_seen[id(layer)] = history
            self._count_timer.start()

    def _detect_background(self, layer) -> None:
        """Turn the background brush on when a layer already holds its id (e.g. a sample)."""
        if self.background_check.isChecked():
            return
        value = self.background_spin.value()
        if np.any(np.asarray(layer.data) == value):
            self.background_check.setChecked(True)

    def _target_layer(self, layer=None):
        if isinstance(layer, Labels):
            return layer
        active = self.viewer.layers.selection.active
        if isinstance(active, Labels) and active in self.labels_layers():
            return active
        layers = self.labels_layers()
        return layers[0] if layers else None

    def _viewer_new_object(self, viewer):
        self.new_object()

    def _viewer_background(self, viewer):
        self.paint_background()

    def new_object(self, layer=None) -> int | None:
        """Select the next free id (over all annotation layers) in ``layer`` and paint it."""
        layer = self._target_layer(layer)
        if layer is None:
            notify_error(SpocoInputError(
                "There is no annotation layer: press 'New' next to 'labels' in the Data tab "
                "first."),
                "starting a new object")
            return None
        label = next_free_label([lyr.data for lyr in self.labels_layers()], self.background_id)
        layer.selected_label = label
        self._start_painting(layer)
        return label

    def paint_background(self, layer=None) -> int | None:
        """Switch on the background brush and select its id in ``layer``."""
        layer = self._target_layer(layer)
        if layer is None:
            return None
        self.background_check.setChecked(True)
        layer.selected_label = self.background_spin.value()
        self._start_painting(layer)
        return layer.selected_label

    def _start_painting(self, layer):
        if str(layer.mode) not in ("paint", "fill", "polygon"):
            layer.mode = "paint"
        self.viewer.layers.selection.active = layer

    def _on_background_toggled(self, checked):
        self._count_timer.start()
        self.pairs_changed.emit()

    # -- what training gets ------------------------------------------------------------------

    def update_counts(self) -> list[int]:
        """Refresh and return the number of painted objects per pair."""
        counts = []
        for row in self.rows:
            labels = row.labels_layer()
            n = 0 if labels is None else count_objects(labels.data, self.background_id)
            counts.append(n)
            row.count_label.setText(f"{n} object{'s' if n != 1 else ''} painted")
        total = sum(counts)
        self.summary.setText(f"training set: {len(self.rows)} image(s), {total} objects")
        return counts

    def pairs(self) -> list:
        """Validated ``(ImageView, Labels layer)`` pairs, else ``SpocoInputError`` (what to fix)."""
        if not self.rows:
            raise SpocoInputError("No image chosen: press 'Add image' in the Data tab.")
        pairs = []
        for number, row in enumerate(self.rows, 1):
            image, labels = row.image_layer(), row.labels_layer()
            if image is None:
                raise SpocoInputError(
                    f"Pair {number} has no image: open an image and choose it in the Data tab.")
            if labels is None:
                raise SpocoInputError(
                    f"Image {image.name!r} has no annotation layer: press 'New' next to "
                    "'labels' and paint a few objects.")
            view = image_view(image, self.channel_combo.currentText())
            check_labels_fit(view, labels)
            pairs.append((view, labels))
        ndims = {view.ndim for view, _ in pairs}
        if len(ndims) > 1:
            raise SpocoInputError(
                f"The images mix 2D and 3D ({sorted(ndims)}); train on images of one "
                "dimensionality at a time.")
        counts = self.update_counts()
        if sum(counts) == 0:
            raise SpocoInputError(
                "Nothing is painted yet: select the annotation layer, press N (new object) and "
                "paint at least one object (better a few, in several images) before training.")
        return pairs

    def training_pairs(self):
        """``(pairs of (image array, labels copy), channel_axis, ndim, views)`` for the core."""
        pairs = self.pairs()
        arrays = [(view.array, np.array(labels.data, copy=True)) for view, labels in pairs]
        views = [view for view, _ in pairs]
        return arrays, views[0].channel_axis, views[0].ndim, views
