"""Checkpoint files: round trip, atomic writes, and refusal of foreign, damaged or unsafe files."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import torch

from napari_spoco.core.errors import CheckpointError
from napari_spoco.core.model import checkpoint as ckpt_module
from napari_spoco.core.model.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    load_checkpoint,
    load_model,
    load_state,
    save_checkpoint,
)
from napari_spoco.core.model.unet import UNet
from napari_spoco.core.training import Trainer, TrainingConfig


def _pair(seed=0, shape=(48, 48)):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32)
    labels = np.zeros(shape, np.uint16)
    labels[5:15, 5:15] = 3
    labels[25:35, 20:40] = 7
    image[labels > 0] += 2.0
    return image, labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = TrainingConfig(features=(8, 16), patch_shape=(32, 32), batch_size=2, iterations=3,
                            momentum=0.5, device="cpu", seed=3)
    trainer = Trainer([_pair()], config)
    for _ in trainer.steps():
        pass
    path = trainer.save(tmp_path_factory.mktemp("ckpt") / "model.pt")
    return trainer, path


def test_round_trip_gives_identical_predictions_of_f_and_g(trained):
    trainer, path = trained
    loaded = load_model(path, device="cpu")
    x = torch.from_numpy(trainer.normalization.apply(_pair(seed=5)[0]))[None, None]
    trainer.model.eval()
    trainer.momentum_model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), trainer.model(x))
        assert torch.equal(loaded.momentum_model(x), trainer.momentum_model(x))
        # g (m = 0.5 after 3 steps) really differs from f, so the second check is not the first
        assert not torch.equal(loaded.model(x), loaded.momentum_model(x))
    assert not loaded.model.training and not loaded.momentum_model.training
    assert loaded.iteration == 3
    assert loaded.normalization == trainer.normalization
    assert loaded.architecture == trainer.model.config
    assert loaded.config["patch_shape"] == [32, 32]


def test_file_holds_marker_versions_and_settings_and_loads_with_plain_torch(trained):
    trainer, path = trained
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert set(raw["versions"]) == {"napari_spoco", "torch", "numpy"}
    assert raw["versions"]["torch"] == str(torch.__version__)
    assert raw["config"]["mode"] == "sparse"
    assert raw["config"]["loss"]["delta_v"] == 0.5
    assert raw["loss"] == trainer.loss_fn.config
    assert raw["normalization"] == trainer.normalization.to_dict()
    assert raw["iteration"] == 3 and "optimizer_state" in raw


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"architecture": {"a": 1}, "model_state": {"w": torch.ones(2)}})
    before = path.read_bytes()
    real_save = torch.save

    def crash_midway(obj, fh, *args, **kwargs):
        real_save(obj, fh, *args, **kwargs)
        fh.truncate(10)  # half-written data, then the "crash"
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_module.torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"architecture": {"a": 2}, "model_state": {"w": torch.zeros(2)}})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]
    assert load_checkpoint(path)["architecture"] == {"a": 1}


def test_save_converts_numpy_and_refuses_arbitrary_objects(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {
        "architecture": {"ndim": np.int64(2)},
        "model_state": {"w": np.arange(3.0)},
        "where": pathlib.Path("x"),
    })
    content = load_checkpoint(path)
    assert type(content["architecture"]["ndim"]) is int
    assert torch.equal(content["model_state"]["w"], torch.arange(3.0, dtype=torch.float64))
    assert content["where"] == "x"
    with pytest.raises(TypeError, match="plain values"):
        save_checkpoint(tmp_path / "d.pt", {"architecture": {}, "model_state": {}, "x": object()})


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_bare_state_dict_is_not_a_napari_spoco_checkpoint(tmp_path):
    path = tmp_path / "state.pt"
    torch.save(UNet(features=(4, 8)).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a napari-spoco checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_truncated_or_corrupt_file(trained, tmp_path, damage):
    _, good = trained
    data = good.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "garbage": b"not a zip" * 50, "empty": b""}
    path = tmp_path / "bad.pt"
    path.write_bytes(damaged[damage])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


class _WritesMarker:
    """Unpickling this object writes a file: the stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "code ran"))


def test_pickle_payload_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "format_version": 1, "architecture": {},
                "model_state": {}, "payload": _WritesMarker(marker)}, path)
    with pytest.raises(CheckpointError, match="was executed") as info:
        load_model(path)
    assert "Nothing in it was executed" in str(info.value)
    assert not marker.exists()
    # The file really is dangerous: an unsafe load runs the payload.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_newer_format_version_asks_to_update(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION + 1, "architecture": {},
                "model_state": {}, "versions": {"napari_spoco": "9.0"}}, path)
    with pytest.raises(CheckpointError, match="Update napari-spoco"):
        load_checkpoint(path)


def test_architecture_mismatch(trained):
    trainer, path = trained
    other = dict(trainer.model.config, features=[8, 16, 32])
    with pytest.raises(CheckpointError, match="another architecture.*features"):
        load_model(path, architecture=other)
    with pytest.raises(CheckpointError, match="do not fit the network"):
        load_state(UNet(features=(8, 32)), load_checkpoint(path)["model_state"], str(path))
    # the architecture it was saved with loads fine
    assert load_model(path, architecture=trainer.model.config).iteration == 3


def test_saved_checkpoint_has_ordinary_file_permissions(tmp_path):
    # mkstemp's 0600 would make checkpoints saved to a shared folder unreadable for colleagues
    path = save_checkpoint(tmp_path / "perm.pt", {"weights": torch.zeros(2)})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("content", [b"\x80", b"not a checkpoint at all", bytes(range(256)) * 4])
def test_arbitrary_bytes_give_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
