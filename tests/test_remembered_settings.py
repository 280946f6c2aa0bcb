"""The dock remembers its settings between napari sessions (``widgets.remembered_settings``)."""

from __future__ import annotations

import json

import pytest

from napari_spoco.models import model_path
from napari_spoco.widgets import remembered_settings as rs

# -- Qt-free: keys, validation, the file ---------------------------------------------------------


def test_the_file_is_in_the_folder_the_tests_point_to(tmp_path):
    # tests/conftest.py's autouse fixture: nothing is written into the real user config
    assert rs.settings_file() == tmp_path / "napari-spoco-config" / rs.FILE_NAME


def test_only_usable_values_pass(tmp_path):
    assert rs.is_valid("train.iterations", 1500)
    assert not rs.is_valid("train.iterations", 0)
    assert not rs.is_valid("train.iterations", 1500.0)
    assert not rs.is_valid("train.iterations", True)
    assert rs.is_valid("train.patch", [16, 64, 64]) and not rs.is_valid("train.patch", [64])
    assert not rs.is_valid("train.patch", "64, 64")
    assert rs.is_valid("train.preview_seconds", 2.5)
    assert not rs.is_valid("train.preview_seconds", float("nan"))
    assert not rs.is_valid("train.preview_seconds", 1e9)
    assert rs.is_valid("segment.param.hdbscan.min_cluster_size", 40)
    assert not rs.is_valid("segment.param.hdbscan.min_cluster_size", -1)
    assert not rs.is_valid("segment.param.hdbscan", 40)
    assert not rs.is_valid("no.such.key", 1)
    assert rs.is_valid("segment.fill", False) and not rs.is_valid("segment.fill", "yes")
    assert not rs.is_valid("train.save_to", "  ")
    assert rs.clean([1, 2]) == {} and rs.clean({"train.batch": 2, 3: 4}) == {"train.batch": 2}


def test_model_choices_are_stored_by_name_or_path_and_stale_ones_dropped(tmp_path):
    shipped = model_path("ovules_2d")
    assert rs.encode_model(None) is None
    assert rs.encode_model(str(shipped)) == "shipped:ovules_2d"
    assert rs.decode_model("shipped:ovules_2d") == str(shipped)
    assert rs.decode_model("shipped:not_installed") is None
    own = tmp_path / "mine.pt"
    own.write_bytes(b"")
    assert rs.decode_model(rs.encode_model(own)) == str(own)
    own.unlink()
    assert rs.decode_model(str(own)) is None
    assert not rs.is_valid("train.source", str(own)) and rs.is_valid("train.source", None)


def test_write_then_read_keeps_the_usable_values(tmp_path):
    path = tmp_path / "cfg" / "settings.json"
    assert rs.read_settings(path) == {}
    values = {"train.device": "cpu", "segment.method": "hdbscan", "train.iterations": 0,
              "segment.param.mws.min_size": 12}
    assert rs.write_settings(values, path)
    assert rs.read_settings(path) == {"train.device": "cpu", "segment.method": "hdbscan",
                                      "segment.param.mws.min_size": 12}
    assert json.loads(path.read_text())["version"] == rs.FORMAT_VERSION
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]  # no temporary left


@pytest.mark.parametrize("content", [
    "{not json", "\xff\xfe garbage", "[1, 2, 3]", '{"version": 99, "settings": {}}',
    '{"version": 1, "settings": "cpu"}',
])
def test_a_corrupt_or_foreign_file_is_ignored(tmp_path, content):
    path = tmp_path / "settings.json"
    path.write_text(content, encoding="utf-8", errors="surrogateescape")
    assert rs.read_settings(path) == {}
    store = rs.RememberedSettings(path)
    store.set("train.device", "cpu")  # and the next change replaces it with a good file
    assert rs.read_settings(path) == {"train.device": "cpu"}


def test_an_unwritable_file_costs_only_the_memory(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert rs.write_settings({"train.device": "cpu"}, blocker / "settings.json") is False
    store = rs.RememberedSettings(blocker / "settings.json")
    store.set("train.device", "cpu")  # logged, not raised


def test_set_keeps_other_docks_changes_and_none_forgets(tmp_path):
    path = tmp_path / "settings.json"
    first, second = rs.RememberedSettings(path), rs.RememberedSettings(path)
    first.set("train.device", "cpu")
    second.set("segment.fill", False)
    assert rs.read_settings(path) == {"train.device": "cpu", "segment.fill": False}
    second.forget("train.device")
    second.set("train.iterations", -3)  # unusable: not stored
    assert rs.read_settings(path) == {"segment.fill": False}


# -- the dock ------------------------------------------------------------------------------------


def choose(combo, index):
    """Pick an item as the user does (the popup emits ``activated``)."""
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def type_into(qtbot, widget, text):
    """Replace the text of a line edit or spin box by typing, then press Enter."""
    from qtpy.QtCore import Qt

    widget.selectAll()
    qtbot.keyClicks(widget, text)
    qtbot.keyClick(widget, Qt.Key.Key_Return)


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    """``open_dock()`` opens a fresh SPOCO dock on one viewer; all are shut down at the end."""
    pytest.importorskip("pytestqt")
    from napari_spoco.widgets import SpocoWidget

    viewer = make_napari_viewer()
    opened = []

    def open_dock():
        widget = SpocoWidget(viewer)
        qtbot.addWidget(widget)
        opened.append(widget)
        return widget

    yield open_dock
    for widget in opened:
        widget.shutdown()


def test_a_new_dock_restores_what_the_user_set(dock, qtbot, tmp_path):
    first = dock()
    train, segment = first.train.settings, first.segment
    type_into(qtbot, train.features_edit, "8, 16, 32")  # before: fine-tuning disables it
    choose(train.source_combo, train.source_combo.findText("shipped: ovules_2d"))
    choose(train.device_combo, train.device_combo.findText("cpu"))
    type_into(qtbot, train.save_edit, str(tmp_path / "runs" / "mine.pt"))
    train.preview_check.click()  # off
    type_into(qtbot, train.preview_spin, "7")
    type_into(qtbot, train.iterations_spin, "4321")
    choose(segment.model_combo, segment.model_combo.findText("shipped: ovules_3d"))
    choose(segment.device_combo, segment.device_combo.findText("cpu"))
    form = segment.clustering
    choose(form.method_combo, form.method_combo.findData("hdbscan"))
    type_into(qtbot, form._fields[("hdbscan", "min_cluster_size")], "77")
    form.fill_check.click()  # off
    form.merge_check.click()  # on
    default_patch = train.patch_edit.text()
    first.close()

    second = dock()
    train, segment = second.train.settings, second.segment
    assert train.source_path() == str(model_path("ovules_2d"))
    assert train.lr_spin.value() == pytest.approx(1e-4)  # as when the user picks the source
    assert not train.features_edit.isEnabled()
    assert train.device_combo.currentText() == "cpu"
    assert train.save_edit.text() == str(tmp_path / "runs" / "mine.pt")
    assert not train.preview_check.isChecked() and train.preview_spin.value() == 7.0
    assert train.iterations_spin.value() == 4321
    assert train.patch_edit.text() == default_patch  # not edited: follows the image
    assert train.features_edit.text() == "8, 16, 32"
    assert segment.model_combo.currentData() == str(model_path("ovules_3d"))
    assert segment.device_combo.currentText() == "cpu"
    form = segment.clustering
    assert form.method == "hdbscan"
    assert form._fields[("hdbscan", "min_cluster_size")].value() == 77
    assert not form.fill_check.isChecked() and form.merge_check.isChecked()
    assert form.method_and_params() == ("hdbscan", {"min_cluster_size": 77, "merge": True,
                                                    "fill": False})
    # the remembered iterations count as edited: a new image keeps them
    train.suggest_patch((96, 96))
    assert train.iterations_spin.value() == 4321 and train.patch_edit.text() == "96, 96"


def test_settings_made_by_a_script_are_not_remembered(dock):
    # napari-spoco demo sets iterations, features and the save path programmatically.
    first = dock()
    train = first.train.settings
    defaults = (train.iterations_spin.value(), train.features_edit.text(),
                train.save_edit.text())
    train.iterations_spin.setValue(300)
    train.features_edit.setText("8, 16")
    train.save_edit.setText("/somewhere/demo-output/model.pt")
    first.segment.clustering.set_method("meanshift")
    first.close()
    second = dock()
    train = second.train.settings
    assert (train.iterations_spin.value(), train.features_edit.text(),
            train.save_edit.text()) == defaults
    assert second.segment.clustering.method == "mws"


def test_an_edited_field_set_back_to_the_default_follows_the_image_again(dock, qtbot):
    first = dock()
    train = first.train.settings
    default_iterations = train.iterations_spin.value()
    type_into(qtbot, train.iterations_spin, "999")
    type_into(qtbot, train.patch_edit, "64, 64")
    assert rs.read_settings()["train.patch"] == [64, 64]
    type_into(qtbot, train.iterations_spin, str(default_iterations))
    assert "train.iterations" not in rs.read_settings()
    first.close()
    second = dock()
    train = second.train.settings
    assert train.patch_edit.text() == "64, 64"
    train.suggest_patch((24, 96, 96))  # a 2D patch cannot be kept for a 3D stack
    assert train.patch_edit.text() == "16, 64, 64"


def test_bad_or_stale_stored_values_are_ignored(dock, tmp_path):
    gone = tmp_path / "deleted.pt"
    rs.settings_file().parent.mkdir(parents=True)
    rs.settings_file().write_text(json.dumps({"version": 1, "settings": {
        "train.source": str(gone), "train.device": "tpu:7", "train.iterations": -5,
        "train.batch": 10**6, "train.preview_seconds": "soon", "train.features": "wide",
        "train.patch": [0, 0], "segment.model": "shipped:ovules_9d",
        "segment.method": "kmeans", "segment.param.mws.min_size": 10**9,
        "segment.param.hdbscan.min_cluster_size": 2.5, "segment.fill": "no",
        "segment.device": 3,
    }}))
    widget = dock()
    train, segment = widget.train.settings, widget.segment
    assert train.source_path() is None and train.device_combo.currentText() == "auto"
    assert train.iterations_spin.value() > 0 and train.batch_spin.value() <= 8
    assert train.preview_spin.value() == 3.0 and train.features_edit.text() == "16, 32, 64, 128"
    assert segment.model_combo.currentData() is None
    assert segment.clustering.method == "mws" and segment.clustering.fill_check.isChecked()
    assert segment.clustering._fields[("mws", "min_size")].value() == 0
    assert segment.clustering._fields[("hdbscan", "min_cluster_size")].value() == 50


def test_a_corrupt_settings_file_gives_a_default_dock(dock):
    rs.settings_file().parent.mkdir(parents=True)
    rs.settings_file().write_bytes(b"\x00\x01{{{ not json")
    widget = dock()
    assert widget.train.settings.device_combo.currentText() == "auto"
    assert widget.segment.clustering.method == "mws"


def test_stepping_a_spin_box_with_the_arrow_keys_is_remembered(qtbot):
    from qtpy.QtCore import Qt

    from napari_spoco.widgets.train_settings import TrainSettings

    settings = TrainSettings()
    qtbot.addWidget(settings)
    settings.show()
    qtbot.waitExposed(settings)
    settings.activateWindow()
    settings.batch_spin.setFocus()
    qtbot.waitUntil(settings.batch_spin.hasFocus, timeout=5000)
    before = settings.batch_spin.value()
    qtbot.keyClick(settings.batch_spin, Qt.Key.Key_Up)
    assert rs.read_settings()["train.batch"] == before + 1
    qtbot.keyClick(settings.batch_spin, Qt.Key.Key_Down)  # the default again: forgotten
    assert "train.batch" not in rs.read_settings()
    again = TrainSettings()
    qtbot.addWidget(again)
    assert again.batch_spin.value() == before
