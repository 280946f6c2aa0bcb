"""Outputs never destroy inputs, and a failed write never destroys what was there (issue 10)."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import tifffile
import torch
import zarr
from test_cli_inference import tiny_checkpoint
from test_cli_train import TINY, blobs

from napari_spoco.cli import main
from napari_spoco.core import io
from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.io import check_output, read_array, write_array
from napari_spoco.core.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_spoco.core.training import Trainer


@pytest.fixture
def pair(tmp_path):
    image, labels = blobs((40, 40))
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    return tmp_path / "img.tif", tmp_path / "lab.tif"


def leftovers(folder):
    """Temporary siblings a write may have left (their names start with a dot)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_train_refuses_to_write_over_its_labels(pair, capsys):
    image, labels = pair
    before = labels.read_bytes()
    labels_npy = write_array(labels.with_suffix(".npy"), tifffile.imread(labels))
    assert main(["train", "--image", str(image), "--labels", str(labels_npy),
                 "--out", str(labels_npy), *TINY]) == 2
    assert "same file as --labels" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(labels_npy), tifffile.imread(labels))
    assert labels.read_bytes() == before


def test_segment_refuses_to_replace_its_image_store(tmp_path, capsys):
    store = write_array(tmp_path / "x.zarr", np.ones((8, 8), np.float32))
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    for out in (store, store / "labels"):
        assert main(["segment", "--checkpoint", str(ckpt), "--image", str(store),
                     "--out", str(out), "--device", "cpu", "--no-progress"]) == 2
        assert "same file as --image" in capsys.readouterr().err
    np.testing.assert_array_equal(read_array(store), np.ones((8, 8)))


def test_existing_outputs_need_overwrite(tmp_path, capsys):
    embeddings = np.random.default_rng(0).normal(size=(4, 20, 20)).astype(np.float32)
    emb = write_array(tmp_path / "e.npy", embeddings)
    args = ["segment", "--embeddings", str(emb), "--out", str(tmp_path / "l.zarr")]
    assert main(args) == 0
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert read_array(tmp_path / "l.zarr").shape == (20, 20)
    assert leftovers(tmp_path) == []


def test_resume_writes_its_own_checkpoint_but_no_other_existing_file(pair, tmp_path, capsys):
    image, labels = pair
    data = ["--image", str(image), "--labels", str(labels)]
    model, other = tmp_path / "m.pt", tmp_path / "other.pt"
    assert main(["train", *data, "--out", str(model), *TINY]) == 0
    other.write_bytes(model.read_bytes())
    resume = ["train", "--resume", str(model), *data, "--device", "cpu", "--no-progress"]
    assert main([*resume, "--iterations", "3"]) == 0  # the documented exception
    assert load_checkpoint(model)["iteration"] == 3
    capsys.readouterr()
    assert main([*resume, "--iterations", "4", "--out", str(other)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*resume, "--iterations", "4", "--out", str(other), "--overwrite"]) == 0
    assert load_checkpoint(other)["iteration"] == 4


def test_resume_refuses_another_channel_axis(pair, tmp_path, capsys):
    image, labels = pair
    data = ["--image", str(image), "--labels", str(labels)]
    model = tmp_path / "m.pt"
    assert main(["train", *data, "--out", str(model), *TINY]) == 0
    resume = ["train", "--resume", str(model), *data, "--device", "cpu", "--no-progress",
              "--iterations", "3"]
    assert main([*resume, "--channel-axis", "1"]) == 2
    assert "channel axis" in capsys.readouterr().err
    assert load_checkpoint(model)["iteration"] == 2  # nothing ran


def test_output_folder_is_checked_before_any_training(pair, tmp_path, monkeypatch, capsys):
    image, labels = pair

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    def no_training(*args, **kwargs):
        raise AssertionError("training started although the output cannot be written")

    monkeypatch.setattr(io.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(Trainer, "__init__", no_training)
    assert main(["train", "--image", str(image), "--labels", str(labels),
                 "--out", str(tmp_path / "sub" / "m.pt"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "not writable (Read-only file system)" in err and "Traceback" not in err
    assert not (tmp_path / "sub").exists()


def test_check_output_takes_hard_links_and_relative_paths_as_the_same_file(tmp_path,
                                                                         monkeypatch):
    original = write_array(tmp_path / "a.npy", np.zeros(3))
    (tmp_path / "b.npy").hardlink_to(original)
    with pytest.raises(SpocoInputError, match="same file"):
        check_output(tmp_path / "b.npy", [original], overwrite=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpocoInputError, match="same file as --image"):
        check_output("./sub/../a.npy", {"--image": original}, overwrite=True)


def test_a_failed_zarr_write_keeps_the_previous_store(tmp_path, monkeypatch):
    store = write_array(tmp_path / "s.zarr", np.arange(6).reshape(2, 3))
    real_save = zarr.save_array

    def half_written(path, array, **kwargs):
        real_save(path, array[:1], **kwargs)  # something is on disk when the failure comes
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr, "save_array", half_written)
    with pytest.raises(OSError):
        write_array(store, np.ones((2, 3)))
    with pytest.raises(OSError):
        write_array(tmp_path / "new.zarr", np.ones((2, 3)))
    np.testing.assert_array_equal(read_array(store), np.arange(6).reshape(2, 3))
    assert not (tmp_path / "new.zarr").exists()
    assert leftovers(tmp_path) == []


def test_a_zarr_store_is_replaced_whole(tmp_path):
    store = write_array(tmp_path / "s.zarr", np.zeros((50, 50)))
    write_array(store, np.ones((4,), np.uint8))
    np.testing.assert_array_equal(read_array(store), np.ones(4))
    assert leftovers(tmp_path) == []


def test_a_failed_streamed_prediction_leaves_no_store(tmp_path, monkeypatch):
    from napari_spoco.core.inference import prediction

    image = write_array(tmp_path / "img.npy", np.random.default_rng(0).normal(size=(32, 32)))
    ckpt = tiny_checkpoint(tmp_path / "m.pt")

    def fails_midway(model, image, normalization=None, out=None, **kwargs):
        out[:, :8] = 1.0
        raise RuntimeError("the machine went away")

    monkeypatch.setattr(prediction, "predict_with_foreground", fails_midway)
    with pytest.raises(RuntimeError):
        main(["predict", "--checkpoint", str(ckpt), "--image", str(image),
              "--out", str(tmp_path / "e.zarr"), "--device", "cpu", "--no-progress"])
    assert not (tmp_path / "e.zarr").exists()
    assert leftovers(tmp_path) == []


def _full_disk_after(calls: int, monkeypatch):
    """Make ``torch.save`` fail with ENOSPC from call number ``calls + 1`` on."""
    real_save, count = torch.save, [0]

    def save(obj, fh, *args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            fh.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tiny_checkpoint(tmp_path / "m.pt")
    before = path.read_bytes()
    _full_disk_after(0, monkeypatch)
    with pytest.raises(CheckpointError, match="the disk is full") as info:
        save_checkpoint(path, load_checkpoint(path))
    assert "previous checkpoint" in str(info.value) and "kept" in str(info.value)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    with pytest.raises(CheckpointError, match="no checkpoint was written"):
        save_checkpoint(tmp_path / "new.pt", {"architecture": {}, "model_state": {}})


def test_full_disk_mid_training_exits_2_and_keeps_the_last_checkpoint(pair, tmp_path,
                                                                      monkeypatch, capsys):
    image, labels = pair
    model = tmp_path / "m.pt"
    _full_disk_after(1, monkeypatch)  # the first autosave works, the second does not
    args = ["train", "--image", str(image), "--labels", str(labels), "--out", str(model),
            "--autosave-seconds", "1e-9", *TINY, "--iterations", "3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "was kept unchanged" in err
    assert load_checkpoint(model)["iteration"] == 1
    assert leftovers(tmp_path) == []


def test_probe_file_leaves_nothing(tmp_path):
    check_output(tmp_path / "x.npy")
    assert list(tmp_path.iterdir()) == []
