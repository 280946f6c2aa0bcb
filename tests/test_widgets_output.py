"""The Train tab refuses a 'save to' it cannot write before training starts (issue 10)."""

import errno

import pytest
from test_widgets_support import messages, paint_objects, small_image

pytestmark = pytest.mark.gui


def painted_blobs(viewer, widget):
    image, truth = small_image()
    viewer.add_image(image, name="blobs")
    paint_objects(widget.data.create_labels(), truth, (1, 2), widget.data)


def test_read_only_save_to_is_refused_before_training(spoco, notes, monkeypatch, tmp_path):
    from napari_spoco.core import io

    viewer, widget = spoco
    painted_blobs(viewer, widget)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    # a real read-only mount needs privileges; the probe file's failure is what it looks like
    monkeypatch.setattr(io.tempfile, "TemporaryFile", read_only)
    widget.train.settings.save_edit.setText(str(tmp_path / "ro" / "model.pt"))
    assert widget.train.start() is None
    errors = messages(notes, "error")
    assert len(errors) == 1
    assert "'save to'" in errors[0] and "not writable (Read-only file system)" in errors[0]
    assert "Unexpected error" not in errors[0]
    assert widget.train.worker is None


@pytest.mark.parametrize("name, message", [
    ("folder", "is a folder"), ("model.txt", "unknown file type"),
    ("lab.npy/model.pt", "not a folder"),
])
def test_unusable_save_to_is_explained(spoco, notes, tmp_path, name, message):
    viewer, widget = spoco
    painted_blobs(viewer, widget)
    (tmp_path / "folder").mkdir()
    (tmp_path / "lab.npy").write_bytes(b"")
    widget.train.settings.save_edit.setText(str(tmp_path / name))
    assert widget.train.start() is None
    errors = messages(notes, "error")
    assert len(errors) == 1 and message in errors[0]
    assert widget.train.worker is None
