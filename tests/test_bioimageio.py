"""bioimage.io export and import: validation, bioimageio's own test run, exact round trip."""

import io
import socket
import zipfile

import numpy as np
import pytest
import torch
import yaml

from napari_spoco.core.errors import CheckpointError, SpocoInputError
from napari_spoco.core.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from napari_spoco.core.model.momentum import make_momentum_copy
from napari_spoco.core.model.unet import UNet

pytest.importorskip("bioimageio.spec")
pytest.importorskip("bioimageio.core")

from napari_spoco.core.model.bioimageio_export import export_bioimageio  # noqa: E402


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """bioimageio must work offline: any connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("bioimageio tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def tiny_checkpoint(path, ndim, foreground=False):
    torch.manual_seed(ndim)
    model = UNet(out_channels=4, ndim=ndim, features=(8, 16), num_groups=2,
                 foreground=foreground)
    momentum = make_momentum_copy(model)
    for p in momentum.parameters():  # g differs from f, so restoring g is tested for real
        p.data.add_(0.01)
    return save_checkpoint(path, {
        "architecture": model.config, "model_state": model.state_dict(),
        "momentum_state": momentum.state_dict(),
        "normalization": {"mean": [100.0], "std": [20.0]},
        "config": {"mode": "sparse", "lr": 1e-3, "patch_shape": [32, 32]},
        "annotations": {"n_objects": 3, "median_object_size": 50.0, "background_known": False},
        "iteration": 7})


@pytest.fixture(scope="module", params=[(2, False), (3, True)], ids=["2d", "3d-foreground"])
def exported(request, tmp_path_factory):
    ndim, foreground = request.param
    folder = tmp_path_factory.mktemp(f"bioimageio{ndim}")
    checkpoint = tiny_checkpoint(folder / "model.pt", ndim, foreground)
    return checkpoint, export_bioimageio(checkpoint, folder / "model.zip")


def test_package_is_valid_and_passes_bioimageio_test_model(exported):
    from bioimageio.core import test_model
    from bioimageio.spec import load_description

    _, package = exported
    description = load_description(package)
    assert description.validation_summary.status == "valid-format"
    summary = test_model(package)
    assert summary.status == "passed", summary.format()
    # both weight formats reproduced the test output
    passed = {d.name for d in summary.details if d.status == "passed"}
    assert "Reproduce test outputs from test inputs (pytorch_state_dict)" in passed
    assert "Reproduce test outputs from test inputs (torchscript)" in passed


def test_package_describes_the_network(exported):
    checkpoint, package = exported
    arch = load_checkpoint(checkpoint)["architecture"]
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        names = set(archive.namelist())
        readme = archive.read("README.md").decode()
    # other tools are told which statistics the network predicts with in napari-spoco
    patch = load_checkpoint(checkpoint)["config"]["patch_shape"]
    assert f"tiles of {tuple(2 * p for p in patch)}" in readme
    assert {"cover.png", "README.md", "spoco_unet.py", "weights.pt", "weights_torchscript.pt",
            "test_input.npy", "test_output.npy", "momentum_weights.pt"} <= names
    channels = next(a for a in rdf["outputs"][0]["axes"] if a["type"] == "channel")
    expected = [f"embedding_{i}" for i in range(4)] + (["foreground_logit"]
                                                       if arch["foreground"] else [])
    assert channels["channel_names"] == expected
    steps = {a["id"]: a["size"] for a in rdf["inputs"][0]["axes"] if a["type"] == "space"}
    assert all(size == {"min": 2, "step": 2} for size in steps.values())  # one pooling
    assert len(steps) == arch["ndim"]
    steps = [s for s in rdf["inputs"][0]["preprocessing"] if s["id"] != "ensure_dtype"]
    assert len(steps) == 1
    norm = steps[0]
    assert norm["id"] == "fixed_zero_mean_unit_variance"
    assert norm["kwargs"] == {"mean": 100.0, "std": 20.0}
    assert rdf["cite"][0]["doi"] == "10.48550/arXiv.2103.14572"
    assert rdf["config"]["napari_spoco"]["annotations"]["n_objects"] == 3


def test_import_round_trips_exactly(exported):
    checkpoint, package = exported
    original, imported = load_model(checkpoint), load_model(package)
    assert imported.architecture == original.architecture
    assert imported.normalization == original.normalization
    assert imported.config == original.config and imported.annotations == original.annotations
    assert imported.iteration == 7
    ndim = original.architecture["ndim"]
    x = torch.randn(1, 1, *((8, 12, 20) if ndim == 3 else (24, 40)))
    with torch.no_grad():
        for a, b in ((original.model, imported.model),
                     (original.momentum_model, imported.momentum_model)):
            assert torch.equal(a(x), b(x))  # same weights, same network: bit-identical
        with zipfile.ZipFile(package) as archive:
            scripted = torch.jit.load(io.BytesIO(archive.read("weights_torchscript.pt")))
        # the traced network at a size other than the traced one (a multiple of the pooling)
        assert torch.allclose(scripted(x), original.model(x), atol=1e-5)


def test_fine_tuning_from_a_package_runs(exported, tmp_path):
    from training_support import blobs, tiny

    from napari_spoco.core.training import Trainer

    checkpoint, package = exported
    if load_checkpoint(checkpoint)["architecture"]["ndim"] != 2:
        pytest.skip("one fine-tuning run is enough")
    trainer = Trainer([blobs()], tiny(iterations=2, autosave_seconds=None), source=package)
    reports = list(trainer.steps())
    assert reports[-1].iteration == 2 and np.isfinite(reports[-1].loss)
    tuned = load_model(trainer.save(tmp_path / "tuned.pt"))
    # the source's network (4 embedding channels; a fresh one would have the default 16)
    assert tuned.architecture["out_channels"] == 4


def test_package_folder_loads_like_the_zip(exported, tmp_path):
    checkpoint, package = exported
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path / "unzipped")
    from napari_spoco.models import resolve_checkpoint

    folder = resolve_checkpoint(tmp_path / "unzipped")
    state = load_checkpoint(folder)["model_state"]
    for key, value in load_checkpoint(checkpoint)["model_state"].items():
        assert torch.equal(state[key], value)


def rewrite(package, out, change):
    """Copy ``package`` to ``out`` with its rdf.yaml passed through ``change``."""
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "rdf.yaml":
                rdf = yaml.safe_load(data)
                change(rdf)
                data = yaml.safe_dump(rdf).encode()
            dst.writestr(name, data)
    return out


def test_foreign_unet_package_loads_and_others_are_refused(exported, tmp_path):
    checkpoint, package = exported

    def foreign(rdf):
        del rdf["config"]["napari_spoco"]
        rdf["attachments"] = []
    loaded = load_model(rewrite(package, tmp_path / "foreign.zip", foreign))
    assert loaded.normalization.mean == (100.0,) and loaded.momentum_model is None
    x = torch.randn(1, 1, *([8] * loaded.architecture["ndim"]))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), load_model(checkpoint).model(x))

    def other_network(rdf):
        foreign(rdf)
        rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] = "StardistUNet"

    def no_state_dict(rdf):
        del rdf["weights"]["pytorch_state_dict"]
        rdf["weights"]["torchscript"].pop("parent", None)

    def per_sample_norm(rdf):
        foreign(rdf)
        rdf["inputs"][0]["preprocessing"] = [{"id": "zero_mean_unit_variance"}]

    for change, words in ((other_network, "'StardistUNet'"),
                          (no_state_dict, "no pytorch_state_dict weights"),
                          (per_sample_norm, "not a fixed normalisation")):
        bad = rewrite(package, tmp_path / f"{change.__name__}.zip", change)
        with pytest.raises(CheckpointError, match=words):
            load_model(bad)


def test_export_refuses_to_replace_its_input_or_an_existing_file(exported, tmp_path):
    checkpoint, package = exported
    before = package.read_bytes()
    with pytest.raises(SpocoInputError, match="already exists"):
        export_bioimageio(checkpoint, package)
    with pytest.raises(SpocoInputError, match="same file"):
        export_bioimageio(package, package, overwrite=True)
    with pytest.raises(SpocoInputError, match="name"):
        export_bioimageio(checkpoint, tmp_path / "x.zip", name="ab")
    assert package.read_bytes() == before
    assert not (tmp_path / "x.zip").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left behind


def test_cli_export_and_bad_input(exported, tmp_path, capsys):
    from napari_spoco.cli import main

    checkpoint, _ = exported
    out = tmp_path / "cli.zip"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out),
                 "--name", "CLI export test"]) == 0
    assert load_checkpoint(out)["architecture"] == load_checkpoint(checkpoint)["architecture"]
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"),
                 "--out", str(tmp_path / "m.zip")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_predict_segment_and_train_take_a_package(exported, tmp_path):
    import tifffile
    from training_support import blobs

    from napari_spoco.cli import main
    from napari_spoco.core.inference.prediction import predict_from_checkpoint

    checkpoint, package = exported
    if load_checkpoint(checkpoint)["architecture"]["ndim"] != 2:
        pytest.skip("the 2D package is enough for the command line")
    image, labels = blobs((40, 40))
    image = image * 20 + 100  # the intensities the tiny model was "trained" on
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    run = ["--image", tmp_path / "img.tif", "--device", "cpu", "--no-progress"]
    assert main(["predict", "--checkpoint", str(package), *map(str, run),
                 "--out", str(tmp_path / "e.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"),
                                  predict_from_checkpoint(checkpoint, image, device="cpu"))
    assert main(["segment", "--checkpoint", str(package), *map(str, run),
                 "--out", str(tmp_path / "seg.tif")]) == 0
    assert tifffile.imread(tmp_path / "seg.tif").shape == (40, 40)
    assert main(["train", "--source", str(package), "--image", str(tmp_path / "img.tif"),
                 "--labels", str(tmp_path / "lab.tif"), "--out", str(tmp_path / "tuned.pt"),
                 "--patch-shape", "32", "32", "--iterations", "2", "--batch-size", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    tuned = load_checkpoint(tmp_path / "tuned.pt")
    assert tuned["iteration"] == 2 and tuned["architecture"]["out_channels"] == 4
