"""The dock and the reader with bioimage.io packages: drop a .zip, export from the Train tab."""

import zipfile

import pytest
import torch
from test_bioimageio import no_network, tiny_checkpoint  # noqa: F401 (autouse fixture)
from test_widgets_support import messages

from napari_spoco.core.model.checkpoint import load_checkpoint

pytest.importorskip("bioimageio.spec")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from napari_spoco.core.model.bioimageio_export import export_bioimageio

    folder = tmp_path_factory.mktemp("package")
    return export_bioimageio(tiny_checkpoint(folder / "model.pt", 2), folder / "shared.zip")


def test_reader_claims_packages_but_not_other_zips(package, tmp_path):
    from napari_spoco._reader import get_reader, read_checkpoint

    other = tmp_path / "images.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("image.tif", b"")
    assert get_reader(str(package)) is read_checkpoint
    assert get_reader(str(other)) is None
    (tmp_path / "not_a_zip.zip").write_bytes(b"plain bytes")
    assert get_reader(str(tmp_path / "not_a_zip.zip")) is None


def test_dropping_a_package_sets_the_model(spoco, notes, package):
    viewer, widget = spoco
    n_layers = len(viewer.layers)
    viewer.open(str(package), plugin="napari-spoco")
    assert len(viewer.layers) == n_layers
    assert widget.train.settings.source_path() == str(package)
    assert widget.segment.model_combo.currentData() == str(package)
    assert any("shared.zip" in m for m in messages(notes, "info"))


def test_export_button_writes_a_package_and_reports_failure(spoco, qtbot, notes, tmp_path):
    viewer, widget = spoco
    checkpoint = tiny_checkpoint(tmp_path / "dropped.pt", 2)
    viewer.open(str(checkpoint), plugin="napari-spoco")
    button = widget.train.export_button
    assert button.text() == "Export for bioimage.io…"
    out = tmp_path / "exported.zip"
    assert button.export(str(out)) is not None
    qtbot.waitUntil(lambda: button.worker is None, timeout=60_000)
    assert messages(notes, "error") == []
    assert button.last_export == out and "exported" in widget.train.status.text()
    assert any("exported.zip" in m for m in messages(notes, "info"))
    state, original = load_checkpoint(out)["model_state"], load_checkpoint(checkpoint)
    assert all(torch.equal(state[k], v) for k, v in original["model_state"].items())
    # an output that cannot be written is reported in a notification, not a crash
    button.export(str(checkpoint / "inside_a_file.zip"))
    qtbot.waitUntil(lambda: button.worker is None, timeout=60_000)
    assert any("is a file, not a folder" in m for m in messages(notes, "error"))
    assert button.isEnabled()
