"""Choosing how embeddings become instances: the method and its few parameters."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QSpinBox, QWidget

from .narrow import short_check, wrap_rows

#: Methods offered, and the parameters each one shows: (name, label, kind, default, range).
METHODS = {
    "mws": ("mutex watershed (fast)", [("min_size", "min object size", int, 0, (0, 10**7))]),
    "hdbscan": ("HDBSCAN", [("min_cluster_size", "min cluster size", int, 50, (2, 10**7)),
                            ("min_size", "min object size", int, 0, (0, 10**7))]),
    "meanshift": ("mean-shift", [("min_size", "min object size", int, 0, (0, 10**7))]),
}


class ClusteringForm(QWidget):
    """A method combo and the parameters of the chosen method."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.method_combo = QComboBox()  # narrowed with the Segment tab's other combos
        for key, (title, _) in METHODS.items():
            self.method_combo.addItem(title, key)
        self.method_combo.setToolTip("Mutex watershed is the default: fast and parameter-free")
        self._fields = {}
        self._layout = wrap_rows(QFormLayout(self))
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.addRow("clustering", self.method_combo)
        for key, (_, params) in METHODS.items():
            for name, label, kind, default, (low, high) in params:
                spin = QSpinBox() if kind is int else QDoubleSpinBox()
                spin.setRange(low, high)
                spin.setValue(default)
                if name == "min_size":
                    # 0 = let core.segmentation decide (a fifth of the median painted object)
                    spin.setSpecialValueText("auto")
                    spin.setToolTip("Smaller segments join a neighbour. 'auto' (0): a fifth of "
                                    "the median size of the objects the model was trained on")
                self._fields[(key, name)] = spin
                self._layout.addRow(label, spin)
        # Short texts: the dock is narrow; the tooltips say it all.
        self.merge_check = short_check(
            "merge close clusters", "Merge clusters closer than δd: join clusters whose mean "
            "embeddings are closer than the push margin (fixes objects split in two)")
        self._layout.addRow("", self.merge_check)
        self.fill_check = short_check(
            "fill small pieces", "Give dropped small pieces to their neighbours: pieces below "
            "the min object size join the neighbouring object instead of leaving holes (seeded "
            "watershed)")
        self.fill_check.setChecked(True)
        self._layout.addRow("", self.fill_check)
        self.foreground_check = short_check(
            "only in the foreground", "Only inside the predicted foreground: cluster only "
            "pixels the model's foreground head calls 'object' (needs a few painted background "
            "strokes in training); off: cluster every pixel")
        self.foreground_check.setChecked(True)
        self._layout.addRow("", self.foreground_check)
        self.method_combo.currentIndexChanged.connect(self._show_fields)
        self._show_fields()

    @property
    def method(self) -> str:
        return self.method_combo.currentData()

    def set_method(self, key: str) -> None:
        self.method_combo.setCurrentIndex(self.method_combo.findData(key))

    def _show_fields(self, *args):
        for (key, _), spin in self._fields.items():
            self._layout.setRowVisible(spin, key == self.method)

    def remember(self, remembered, prefix: str = "segment") -> None:
        """Restore the method and options of earlier sessions; remember the user's changes.

        Parameters
        ----------
        remembered : RememberedSettings
            See :mod:`.remembered_settings`.
        prefix : str
            Key prefix: ``<prefix>.method``, ``<prefix>.merge``, ``<prefix>.fill``,
            ``<prefix>.foreground`` and ``<prefix>.param.<method>.<option>``.
        """
        remembered.bind_combo_data(f"{prefix}.method", self.method_combo)
        for (key, name), spin in self._fields.items():
            remembered.bind_spin(f"{prefix}.param.{key}.{name}", spin)
        remembered.bind_check(f"{prefix}.merge", self.merge_check)
        remembered.bind_check(f"{prefix}.fill", self.fill_check)
        remembered.bind_check(f"{prefix}.foreground", self.foreground_check)

    def method_and_params(self) -> tuple[str, dict]:
        """The chosen method and its parameter values."""
        method = self.method
        params = {name: spin.value() for (key, name), spin in self._fields.items()
                  if key == method and not (name == "min_size" and spin.value() == 0)}
        params["merge"] = self.merge_check.isChecked()
        params["fill"] = self.fill_check.isChecked()
        if not self.foreground_check.isChecked():
            params["use_foreground"] = False
        return method, params
