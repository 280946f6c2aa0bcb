"""The form of the Train tab: source model, labels, schedule, patch, device, advanced settings.

It only turns widget values into a :class:`~napari_spoco.core.training.TrainingConfig`; running
the training is :mod:`.train_widget`'s job.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_spoco.core.devices import available_devices
from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.io import CHECKPOINT_SUFFIXES, check_output
from napari_spoco.core.run_defaults import (
    default_anisotropic,
    default_consistency_weight,
    default_learning_rate,
    resolve_run_settings,
    source_learning_rate,
)
from napari_spoco.core.training import LossSettings, TrainingConfig

from .narrow import fit_combos, wrap_rows
from .remembered_settings import RememberedSettings, on_user_change, spin_accepts

FROM_SCRATCH = "from scratch"
CHOOSE_FILE = "choose a file…"
#: Before any image is chosen, the form shows the defaults for a 2D image this large.
PLACEHOLDER_SHAPE = (512, 512)


def shipped_models() -> list[tuple[str, Path, str]]:
    """``(name, path, description)`` of the installed models of ``napari_spoco.models``."""
    try:
        from napari_spoco.models import available_models
    except ImportError:  # pragma: no cover - the registry ships with the package
        return []
    return [(info.name, info.path, info.description) for info in available_models()]


def parse_ints(text: str, what: str, count: int | None = None) -> tuple[int, ...]:
    """``"128, 128"`` → ``(128, 128)``, or ``SpocoInputError`` saying what is expected."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").replace("×", ",").split(",")
                       if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1 or (count is not None and len(values) != count):
        n = f"{count} " if count is not None else ""
        raise SpocoInputError(
            f"{what} must be {n}positive integers separated by commas (e.g. "
            f"{', '.join(['128'] * (count or 2))}), got {text!r}."
        )
    return values


def _axes(text: str) -> int | None:
    """How many axes the patch ``text`` has, or None if it is not a patch."""
    try:
        return len(parse_ints(text, "The patch size"))
    except SpocoInputError:
        return None


def _spin(low, high, value, decimals=None, step=None, tip=""):
    spin = QDoubleSpinBox() if decimals is not None else QSpinBox()
    if decimals is not None:
        spin.setDecimals(decimals)
    spin.setRange(low, high)
    if step is not None:
        spin.setSingleStep(step)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def _patch_list(text: str) -> list[int]:
    return list(parse_ints(text, "The patch size"))


def _features_list(text: str) -> list[int]:
    return list(parse_ints(text, "The network features"))


def _joined(values) -> str:
    return ", ".join(str(v) for v in values)


class TrainSettings(QWidget):
    """All inputs of a training run; :meth:`config` validates and collects them.

    Parameters
    ----------
    parent : QWidget, optional
    remembered : RememberedSettings, optional
        Where the choices of earlier sessions come from and the user's changes go (see
        :mod:`.remembered_settings`); default the per-user settings file.
    """

    source_changed = Signal()

    def __init__(self, parent=None, remembered: RememberedSettings | None = None):
        super().__init__(parent)
        self.remembered = RememberedSettings() if remembered is None else remembered
        self.source_combo = QComboBox()
        self.source_combo.setToolTip(
            "Fine-tune a trained model (few annotated objects suffice) or train from scratch")
        self.source_combo.addItem(FROM_SCRATCH, None)
        for name, path, description in shipped_models():
            self.source_combo.addItem(f"shipped: {name}", str(path))
            self.source_combo.setItemData(self.source_combo.count() - 1, description,
                                          Qt.ItemDataRole.ToolTipRole)
        self.source_combo.addItem(CHOOSE_FILE, CHOOSE_FILE)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["sparse", "dense"])
        self.mode_combo.setToolTip(
            "sparse: 0 = not annotated (default). dense: every object is painted, 0 = background")
        self.iterations_spin = _spin(
            1, 10_000_000, 1, tip="Optimizer steps; the default fits the image and the device "
            "(a few minutes on a CPU)")
        self.lr_spin = _spin(1e-7, 1.0, default_learning_rate(False), decimals=7, step=1e-5,
                             tip="Adam learning rate; fine-tuning defaults to the source's lr / 10")
        self.patch_edit = QLineEdit("128, 128")
        self.patch_edit.setToolTip("Training patch size per axis ([Z,] Y, X)")
        self.batch_spin = _spin(1, 1024, 4, tip="Patches per optimizer step")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", *available_devices()])
        # the device first: the defaults of iterations, patch and batch depend on it
        self.remembered.bind_combo_text("train.device", self.device_combo)
        self._shape = None
        self._suggested = {}  # the values suggest_patch last wrote (the user has not edited)
        self._apply_defaults(PLACEHOLDER_SHAPE, force=True)
        self._restore_edited_run_fields()
        self.save_edit = QLineEdit(str(Path.home() / "napari-spoco" / "model.pt"))
        self.save_edit.setToolTip("Checkpoint written (atomically) when training stops or ends, "
                                  "and every minute while it runs")
        save_button = QPushButton("…")
        save_button.setFixedWidth(28)
        save_button.clicked.connect(self._choose_save_path)
        self.preview_check = QCheckBox("live preview every")
        self.preview_check.setChecked(True)
        self.preview_spin = _spin(0.5, 600.0, 3.0, decimals=1, step=0.5,
                                  tip="Seconds between previews of the visible region")
        self.preview_spin.setSuffix(" s")

        form = wrap_rows(QFormLayout())
        form.addRow("source model", self.source_combo)
        form.addRow("labels", self.mode_combo)
        form.addRow("iterations", self.iterations_spin)
        form.addRow("learning rate", self.lr_spin)
        form.addRow("patch size", self.patch_edit)
        form.addRow("batch size", self.batch_spin)
        form.addRow("device", self.device_combo)
        save_row = QHBoxLayout()
        save_row.addWidget(self.save_edit)
        save_row.addWidget(save_button)
        form.addRow("save to", save_row)
        preview_row = QHBoxLayout()
        preview_row.addWidget(self.preview_check)
        preview_row.addWidget(self.preview_spin)
        form.addRow(preview_row)

        self.advanced = QCollapsible("Advanced")
        advanced = QWidget()
        advanced_form = wrap_rows(QFormLayout(advanced))
        self.features_edit = QLineEdit("16, 32, 64, 128")
        self.features_edit.setToolTip("U-Net channels per level (from scratch only)")
        self.embedding_spin = _spin(2, 128, 16, tip="Embedding dimension E")
        self.anisotropic_spin = _spin(0, 5, 0, tip="3D: poolings that keep z (thin-slice stacks)")
        loss = LossSettings()
        self.delta_v_spin = _spin(0.01, 10.0, loss.delta_v, decimals=2, step=0.1,
                                  tip="Pull margin δv")
        self.delta_d_spin = _spin(0.01, 20.0, loss.delta_d, decimals=2, step=0.1,
                                  tip="Push margin δd")
        self.w_upush_spin = _spin(0.0, 100.0, loss.w_upush, decimals=2, step=0.1,
                                  tip="Weight of pushing unlabeled pixels from objects")
        self.w_ucon_spin = _spin(0.0, 100.0, default_consistency_weight(), decimals=2, step=0.1,
                                 tip="Weight of the consistency term on unlabeled pixels "
                                     "(1 from scratch, 10 when fine-tuning sparse labels: it "
                                     "keeps the source's boundaries between unlabeled cells)")
        self.momentum_spin = _spin(0.0, 0.99999, 0.999, decimals=5, step=0.0005,
                                   tip="Momentum m of the network g")
        self.augment_check = QCheckBox("augment")
        self.augment_check.setChecked(True)
        # input_scale="auto" (run_defaults.default_input_scale); off by default, see method.md
        self.object_size_check = QCheckBox("match the source's object size")
        self.object_size_check.setToolTip(
            "Fine-tuning: resample the images so that the painted objects get the size the "
            "source model was trained on (needs 3 painted objects). Repairs a source that cuts "
            "large cells, but sparse fine-tuning on the resampled images can merge cells.")
        self.seed_spin = _spin(0, 2**31 - 1, 0, tip="Seed of weights, sampling and augmentation")
        for label, widget in (("features", self.features_edit),
                              ("embedding dims", self.embedding_spin),
                              ("anisotropic levels", self.anisotropic_spin),
                              ("δv (pull)", self.delta_v_spin), ("δd (push)", self.delta_d_spin),
                              ("w unlabeled push", self.w_upush_spin),
                              ("w consistency", self.w_ucon_spin),
                              ("momentum", self.momentum_spin), ("seed", self.seed_spin),
                              ("", self.augment_check), ("", self.object_size_check)):
            advanced_form.addRow(label, widget)
        self.advanced.addWidget(advanced)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        fit_combos(self)  # long model file names must not widen the dock
        self.source_combo.currentIndexChanged.connect(self._on_source_chosen)
        self.mode_combo.currentTextChanged.connect(lambda _: self._suggest_consistency_weight())
        self.device_combo.currentTextChanged.connect(lambda _: self.suggest_patch())
        self._remember_choices()

    # -- remembered between sessions ----------------------------------------------------------

    def _remember_choices(self) -> None:
        """Restore the choices of earlier sessions; remember the user's changes from now on.

        The source model goes first: choosing it sets the learning rate and enables the
        network fields, as when the user picks it.
        """
        remembered = self.remembered
        remembered.bind_model_combo("train.source", self.source_combo, self.add_model,
                                    skip=(CHOOSE_FILE,))
        remembered.bind_line_edit("train.save_to", self.save_edit, str.strip)
        remembered.bind_check("train.preview", self.preview_check)
        remembered.bind_spin("train.preview_seconds", self.preview_spin)
        remembered.bind_line_edit("train.features", self.features_edit, _features_list,
                                  _joined)
        remembered.bind_spin("train.embedding_dims", self.embedding_spin)
        on_user_change(self.iterations_spin, lambda: self._remember_run_field("iterations"))
        self.patch_edit.textEdited.connect(lambda _: self._remember_run_field("patch"))
        on_user_change(self.batch_spin, lambda: self._remember_run_field("batch"))

    def _run_fields(self) -> dict:
        """``name -> (key, read the field, show a stored value, parse the field for storing)``
        of the fields that follow the image unless the user edited them."""
        return {
            "iterations": ("train.iterations", self.iterations_spin.value,
                           self.iterations_spin.setValue, int),
            "patch": ("train.patch", self.patch_edit.text,
                      lambda v: self.patch_edit.setText(_joined(v)), _patch_list),
            "batch": ("train.batch", self.batch_spin.value, self.batch_spin.setValue, int),
        }

    def _remember_run_field(self, name: str) -> None:
        """Remember a value the user gave iterations, patch or batch; forget it when it is
        the default for the image again (then the field follows the image next time too)."""
        key, get, _, parse = self._run_fields()[name]
        try:
            value = parse(get())
        except ValueError:  # a patch being typed: the last complete one stays remembered
            return
        suggested = self._suggested.get(name)
        if suggested is not None and value == parse(suggested):
            self.remembered.forget(key)
        else:
            self.remembered.set(key, value)

    def _restore_edited_run_fields(self) -> None:
        """Show the iterations, patch and batch the user set in an earlier session; they
        then count as edited and no longer follow the image (a patch of the other
        dimensionality does, see :meth:`_apply_defaults`)."""
        spins = {"iterations": self.iterations_spin, "batch": self.batch_spin}
        for name, (key, _, show, _) in self._run_fields().items():
            value = self.remembered.get(key)
            if value is not None and (name not in spins or spin_accepts(spins[name], value)):
                show(value)

    # -- source model --------------------------------------------------------------------

    def add_model(self, path, select: bool = True) -> None:
        """Offer the checkpoint ``path`` as a source model (and select it)."""
        path = str(path)
        index = self.source_combo.findData(path)
        if index < 0:
            index = self.source_combo.count() - 1  # before "choose a file…"
            # With "choose a file…" current, the insert shifts it and Qt reports a new index,
            # which would open the file dialog again: the insert itself is not a choice.
            blocked = self.source_combo.blockSignals(True)
            self.source_combo.insertItem(index, f"file: {Path(path).name}", path)
            self.source_combo.blockSignals(blocked)
        if select:
            self.source_combo.setCurrentIndex(index)

    def source_path(self) -> str | None:
        """The checkpoint to fine-tune, or None for training from scratch."""
        data = self.source_combo.currentData()
        return None if data in (None, CHOOSE_FILE) else data

    def _on_source_chosen(self, index):
        if self.source_combo.itemData(index) == CHOOSE_FILE:
            path, _ = QFileDialog.getOpenFileName(self, "Source model", "",
                                                  "napari-spoco checkpoint or bioimage.io model (*.pt *.pth *.zip)")
            if path:
                self.add_model(path)
                self.remembered.remember_model("train.source", self.source_combo, (CHOOSE_FILE,))
            else:
                self.source_combo.setCurrentIndex(0)
            return
        fine_tuning = self.source_path() is not None
        self.lr_spin.setValue(default_learning_rate(fine_tuning, self._source_lr()))
        self._suggest_consistency_weight()
        self.features_edit.setEnabled(not fine_tuning)
        self.embedding_spin.setEnabled(not fine_tuning)
        self.anisotropic_spin.setEnabled(not fine_tuning)
        self.source_changed.emit()

    def _suggest_consistency_weight(self) -> None:
        """The u_con weight ``run_defaults`` decides for the chosen source and label mode."""
        self.w_ucon_spin.setValue(default_consistency_weight(
            self.source_path() is not None, self.mode_combo.currentText()))

    def _source_lr(self) -> float | None:
        """The learning rate the source model was trained with (None: unknown or unreadable).

        An unreadable checkpoint is reported when training starts, not here.
        """
        path = self.source_path()
        if path is None:
            return None
        from napari_spoco.core.errors import CheckpointError
        from napari_spoco.core.model.checkpoint import load_checkpoint

        try:
            return source_learning_rate(load_checkpoint(path))
        except (CheckpointError, OSError, ValueError):
            return None

    def _choose_save_path(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save the model to", self.save_edit.text(),
                                              "napari-spoco checkpoint (*.pt)")
        if path:
            self.save_edit.setText(path if path.endswith(".pt") else path + ".pt")
            self.remembered.set("train.save_to", self.save_edit.text())

    # -- defaults from data and device ---------------------------------------------------------

    def device_kind(self) -> str:
        name = self.device_combo.currentText()
        return available_devices()[0] if name == "auto" else name.split(":")[0]

    def suggest_patch(self, shape=None) -> None:
        """Set iterations, patch and batch size for images of spatial ``shape`` (the smallest
        of the training images) on the chosen device, as ``core.run_defaults`` decides.

        A value the user has changed since the last suggestion is kept.
        """
        self._shape = tuple(shape) if shape is not None else self._shape
        if self._shape is None:
            return
        self._apply_defaults(self._shape)

    def _apply_defaults(self, shape, force: bool = False) -> None:
        run = resolve_run_settings([shape], self.device_kind())
        fields = {
            "iterations": (self.iterations_spin.value, self.iterations_spin.setValue,
                           run.iterations),
            "patch": (self.patch_edit.text, self.patch_edit.setText, _joined(run.patch_shape)),
            "batch": (self.batch_spin.value, self.batch_spin.setValue, run.batch_size),
        }
        for name, (get, set_, value) in fields.items():
            edited = get() != self._suggested.get(name)
            if name == "patch" and _axes(get()) != len(run.patch_shape):
                edited = False  # a patch of the other dimensionality cannot be kept
            if force or not edited:
                set_(value)
            self._suggested[name] = value

    # -- the config -------------------------------------------------------------------------

    def config(self, ndim: int, channel_axis, background_id, shapes=None,
               spacings=None) -> TrainingConfig:
        """Collect the form into a validated ``TrainingConfig`` (``SpocoInputError`` if bad).

        ``shapes``, the spatial shapes of the training images, decide the 3D anisotropy as the
        command line does (``run_defaults.default_anisotropic``); without them the training
        data decide it by the same rule. ``spacings`` (the layers' spatial ``scale``) are the
        voxel sizes that rule uses where known.
        """
        patch = parse_ints(self.patch_edit.text(), "The patch size", ndim)
        features = parse_ints(self.features_edit.text(), "The network features")
        return TrainingConfig(
            ndim=ndim,
            channel_axis=channel_axis,
            features=features,
            out_channels=self.embedding_spin.value(),
            anisotropic_levels=self.anisotropic_spin.value() if ndim == 3 else 0,
            loss=LossSettings(
                delta_v=self.delta_v_spin.value(),
                delta_d=self.delta_d_spin.value(),
                w_upush=self.w_upush_spin.value(),
                w_ucon=self.w_ucon_spin.value(),
            ),
            mode=self.mode_combo.currentText(),
            background_id=background_id,
            anisotropic=None if shapes is None else default_anisotropic(shapes, spacings),
            augment=self.augment_check.isChecked(),
            patch_shape=patch,
            batch_size=self.batch_spin.value(),
            iterations=self.iterations_spin.value(),
            lr=self.lr_spin.value(),
            momentum=self.momentum_spin.value(),
            seed=self.seed_spin.value(),
            device=self.device_combo.currentText(),
            input_scale="auto" if self.object_size_check.isChecked() else None,
        )

    def save_path(self) -> Path:
        """The checked 'save to' checkpoint file.

        A folder that cannot be written is refused now, before training starts, with the
        reason, not when the first checkpoint is saved.
        """
        text = self.save_edit.text().strip()
        if not text:
            raise SpocoInputError("Say where to save the model: fill in 'save to' (a .pt file).")
        # overwrite: the Train tab saves to this file on every autosave, stop and run again
        return check_output(text, overwrite=True, suffixes=CHECKPOINT_SUFFIXES,
                            option="'save to'")
