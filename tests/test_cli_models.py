"""Shipped models by name: ``napari-spoco models`` and ``--source NAME`` / ``--checkpoint NAME``."""

from __future__ import annotations

import json

import pytest
from test_cli_train import files_2d  # noqa: F401 (fixture)

from napari_spoco.cli import main
from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.model.checkpoint import load_checkpoint
from napari_spoco.models import model_path, resolve_checkpoint

SHIPPED = ("ovules_2d", "ovules_3d")


def test_models_lists_the_shipped_models_and_how_to_use_one(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert name in out and str(model_path(name)) in out
    assert "2D" in out and "3D" in out and "membranes" in out
    assert "--source ovules_2d" in out

    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {name: rows[name]["ndim"] for name in SHIPPED} == {"ovules_2d": 2, "ovules_3d": 3}
    assert rows["ovules_3d"]["path"] == str(model_path("ovules_3d"))
    assert all(row["description"] and row["modality"] for row in rows.values())


def test_resolve_checkpoint_takes_a_name_or_a_file(tmp_path, monkeypatch):
    assert resolve_checkpoint("ovules_2d") == model_path("ovules_2d")
    assert resolve_checkpoint("ovules_2d").is_file()
    own = tmp_path / "mine.pt"
    own.write_bytes(b"")
    assert resolve_checkpoint(own) == own and resolve_checkpoint(str(own)) == own
    # A file of a shipped model's name wins over the shipped model.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ovules_2d").write_bytes(b"")
    assert resolve_checkpoint("ovules_2d").resolve() == (tmp_path / "ovules_2d").resolve()
    with pytest.raises(SpocoInputError, match="ovules_2d, ovules_3d") as err:
        resolve_checkpoint("no_such_model")
    assert "path" in str(err.value)


def test_fine_tune_a_shipped_model_by_name(files_2d, tmp_path, capsys):  # noqa: F811
    image, labels = files_2d
    out = tmp_path / "tuned.pt"
    assert main(["train", "--source", "ovules_2d", "--image", str(image), "--labels",
                 str(labels), "--out", str(out), "--patch-shape", "32", "32", "--batch-size",
                 "1", "--iterations", "1", "--device", "cpu", "--no-progress"]) == 0
    assert "from ovules_2d (" in capsys.readouterr().err
    tuned = load_checkpoint(out)
    shipped = load_checkpoint(model_path("ovules_2d"))
    assert tuned["iteration"] == 1
    assert tuned["source"] == str(model_path("ovules_2d"))
    assert tuned["architecture"]["features"] == shipped["architecture"]["features"]
    # the source's lr / 10, read from the shipped checkpoint
    assert tuned["config"]["lr"] == pytest.approx(shipped["config"]["lr"] / 10)


@pytest.mark.parametrize("command", [
    ["train", "--source", "ovules_9d", "--image", "i.tif", "--labels", "l.tif", "--out", "o.pt"],
    ["segment", "--checkpoint", "ovules_9d", "--image", "i.tif", "--out", "s.tif"],
    ["predict", "--checkpoint", "ovules_9d", "--image", "i.tif", "--out", "e.npy"],
])
def test_an_unknown_model_name_exits_2_naming_the_models(command, tmp_path, monkeypatch,
                                                          capsys):
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"napari-spoco {command[0]}: error:" in err
    assert "'ovules_9d'" in err and "ovules_2d" in err and "ovules_3d" in err
    assert "path of a checkpoint file" in err
    assert not (tmp_path / command[command.index("--out") + 1]).exists()


def test_segment_takes_a_shipped_model_by_name(tmp_path, capsys):
    import numpy as np

    from napari_spoco.core.io import read_array, write_array

    rng = np.random.default_rng(0)
    write_array(tmp_path / "img.npy", rng.random((48, 48), dtype=np.float32))
    out = tmp_path / "seg.npy"
    assert main(["segment", "--checkpoint", "ovules_2d", "--image", str(tmp_path / "img.npy"),
                 "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert read_array(out).shape == (48, 48)
