"""Every bad input ends in a message that names the problem, never in a traceback (issue 10).

CLI cases run the real command (``python -m napari_spoco.cli``) in a subprocess and expect exit
status 2, a message naming the problem and no "Traceback" on stderr. They are run together,
a few at a time, by one module fixture: each subprocess spends seconds importing torch.
API cases call the core functions and expect the exception type and the same kind of message.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from test_cli_inference import tiny_checkpoint
from test_cli_train import blobs

from napari_spoco.core.clustering import segment
from napari_spoco.core.errors import CheckpointError, SpocoInputError
from napari_spoco.core.evaluation.metrics import evaluate
from napari_spoco.core.inference.prediction import predict_embeddings
from napari_spoco.core.io import CHECKPOINT_SUFFIXES, check_output, read_array, write_array
from napari_spoco.core.loss import SpocoLoss
from napari_spoco.core.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from napari_spoco.core.model.unet import UNet
from napari_spoco.core.training import Trainer, TrainingConfig
from napari_spoco.core.validation import check_clustering_params, validate_pair

TINY = ["--features", "4", "8", "--batch-size", "1", "--iterations", "1", "--device", "cpu",
        "--no-progress", "--patch-shape", "32", "32"]
RUN = ["--device", "cpu", "--no-progress"]


class _Payload:
    """Pickles as a call of ``os.system``: what a malicious checkpoint carries."""

    def __reduce__(self):
        return (os.system, ("echo PAYLOAD-RAN",))


def _unwritable_folder(base: Path) -> Path | None:
    """A folder no file can be created in: read-only for a normal user, /sys for root."""
    if os.geteuid() != 0:
        folder = base / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            return None
    except OSError:
        return Path("/sys")


def _checkpoint_variant(source: Path, target: Path, **changes) -> None:
    payload = {key: value for key, value in load_checkpoint(source).items()
               if key not in ("format", "format_version", "versions")}
    save_checkpoint(target, {**payload, **changes})


def _nan_state(state: dict) -> dict:
    state = {key: value.clone() for key, value in state.items()}
    next(v for v in state.values() if v.is_floating_point()).fill_(math.nan)
    return state


def _training_checkpoint(directory: Path, image, labels) -> Path:
    """A resumable checkpoint of one tiny training step."""
    config = TrainingConfig(features=(4, 8), batch_size=1, iterations=1, device="cpu",
                            patch_shape=(32, 32), autosave_seconds=None)
    trainer = Trainer([(image, labels)], config)
    for _ in trainer.steps():
        pass
    return trainer.save(directory / "run.pt")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """One folder with good and bad inputs of every kind the cases need."""
    d = tmp_path_factory.mktemp("inputs")
    image, labels = blobs((40, 40))
    tifffile.imwrite(d / "img.tif", image)
    tifffile.imwrite(d / "lab.tif", labels)
    tifffile.imwrite(d / "nolab.tif", np.zeros_like(labels))
    write_array(d / "img.zarr", image)
    volume, volume_labels = blobs((6, 36, 36), seed=1)
    np.save(d / "vol.npy", volume)
    np.save(d / "vol_lab.npy", volume_labels)
    np.save(d / "img4d.npy", np.stack([volume, volume]))
    tifffile.imwrite(d / "rgb.tif", np.stack([image, image * 0.5, image * 0.2], axis=-1),
                     photometric="rgb")
    np.save(d / "chfirst.npy", np.stack([image, image * 0.5]))
    (d / "empty.tif").write_bytes(b"")
    (d / "nontiff.tif").write_text("this is not a tiff")
    whole = (d / "img.tif").read_bytes()
    (d / "trunc.tif").write_bytes(whole[: len(whole) // 2])
    np.save(d / "full.npy", image)
    whole = (d / "full.npy").read_bytes()
    (d / "trunc.npy").write_bytes(whole[: len(whole) // 2])
    np.save(d / "obj.npy", np.array([[1, "a"], [None, 2.0]], dtype=object), allow_pickle=True)
    (d / "nometa.zarr").mkdir()
    (d / "outdir").mkdir()
    np.save(d / "emb.npy", np.random.default_rng(0).normal(size=(4, 40, 40)).astype(np.float32))
    gt = labels.astype(np.uint64)
    gt[0, 0] = np.iinfo(np.uint64).max
    np.save(d / "gt64.npy", gt)
    np.save(d / "seg.npy", labels.astype(np.uint32))
    np.save(d / "seg_small.npy", labels[:20].astype(np.uint32))
    tifffile.imwrite(d / "existing.tif", labels)

    model = tiny_checkpoint(d / "m.pt")
    (d / "existing.pt").write_bytes(model.read_bytes())
    with open(d / "pickle.pt", "wb") as fh:
        pickle.dump({"model_state": _Payload()}, fh)  # a plain pickle, as a download might be
    _checkpoint_variant(model, d / "bad_iter.pt", iteration="12 steps")
    _checkpoint_variant(model, d / "bad_norm.pt", normalization="mean 0, std 1")
    _checkpoint_variant(model, d / "bad_state.pt", model_state=[1, 2, 3])
    architecture = dict(load_checkpoint(model)["architecture"], features=[600_000, 600_000])
    _checkpoint_variant(model, d / "huge.pt", architecture=architecture)
    _checkpoint_variant(model, d / "nan.pt",
                        model_state=_nan_state(load_checkpoint(model)["model_state"]))
    run = _training_checkpoint(d, image, labels)
    _checkpoint_variant(run, d / "run_nan.pt",
                        model_state=_nan_state(load_checkpoint(run)["model_state"]))
    return d


def _cli_cases(readonly: Path | None):
    """``(id, arguments, keywords)``: each keyword must appear in the message."""
    train = ["train", "--image", "img.tif", "--labels", "lab.tif"]
    predict = ["predict", "--checkpoint", "m.pt", "--image", "img.tif"]
    seg_emb = ["segment", "--embeddings", "emb.npy"]
    cases = [
        # unreadable inputs
        ("empty-tif", ["train", "--image", "empty.tif", "--labels", "lab.tif", "--out", "a.pt"],
         ["empty"]),
        ("non-tiff", ["train", "--image", "nontiff.tif", "--labels", "lab.tif", "--out", "a.pt"],
         ["TIFF"]),
        ("truncated-tif", ["train", "--image", "trunc.tif", "--labels", "lab.tif",
                           "--out", "a.pt"], ["truncated"]),
        ("truncated-npy", ["train", "--image", "img.tif", "--labels", "trunc.npy",
                           "--out", "a.pt"], ["truncated"]),
        ("object-npy", ["train", "--image", "obj.npy", "--labels", "lab.tif", "--out", "a.pt"],
         ["Python objects"]),
        ("zarr-without-metadata", ["train", "--image", "nometa.zarr", "--labels", "lab.tif",
                                   "--out", "a.pt"], ["zarr metadata"]),
        ("evaluate-truncated", ["evaluate", "--gt", "trunc.npy", "--seg", "seg.npy"],
         ["truncated"]),
        ("evaluate-empty", ["evaluate", "--gt", "seg.npy", "--seg", "empty.tif"], ["empty"]),
        ("evaluate-object", ["evaluate", "--gt", "obj.npy", "--seg", "seg.npy"],
         ["Python objects"]),
        ("predict-zarr-without-metadata", ["predict", "--checkpoint", "m.pt", "--image",
                                           "nometa.zarr", "--out", "b.npy", *RUN],
         ["zarr metadata"]),
        # outputs that would destroy inputs, or cannot be written
        ("out-is-labels", [*train[:3], "--labels", "lab.tif", "--out", "lab.tif", *TINY],
         ["same file", "--labels"]),
        ("out-is-image-store", ["segment", "--checkpoint", "m.pt", "--image", "img.zarr",
                                "--out", "img.zarr"], ["same file", "--image"]),
        ("out-inside-image-store", [*predict[:3], "--image", "img.zarr", "--out",
                                    "img.zarr/labels", *RUN], ["same file"]),
        ("pca-is-out", [*predict, "--out", "c.npy", "--pca", "c.npy", *RUN],
         ["same file", "--out"]),
        ("existing-labels-out", [*seg_emb, "--out", "existing.tif"],
         ["already exists", "--overwrite"]),
        ("existing-checkpoint-out", [*train, "--out", "existing.pt", *TINY],
         ["already exists", "--overwrite"]),
        ("out-is-folder", [*train, "--out", "outdir", *TINY], ["folder"]),
        ("out-under-a-file", [*train, "--out", "lab.tif/model.pt", *TINY], ["not a folder"]),
        ("out-unknown-suffix", [*train, "--out", "model.txt", *TINY], ["unknown file type"]),
        # malformed checkpoints
        ("pickle-payload", [*predict[:1], "--checkpoint", "pickle.pt", "--image", "img.tif",
                            "--out", "d.npy", *RUN], ["holds code", "Nothing in it was executed"]),
        ("checkpoint-iteration", [*predict[:1], "--checkpoint", "bad_iter.pt", "--image",
                                  "img.tif", "--out", "d.npy", *RUN], ["iteration"]),
        ("checkpoint-normalization", [*predict[:1], "--checkpoint", "bad_norm.pt", "--image",
                                      "img.tif", "--out", "d.npy", *RUN], ["normalization"]),
        ("checkpoint-model-state-list", [*predict[:1], "--checkpoint", "bad_state.pt",
                                         "--image", "img.tif", "--out", "d.npy", *RUN],
         ["model_state"]),
        ("checkpoint-absurd-architecture", [*predict[:1], "--checkpoint", "huge.pt", "--image",
                                            "img.tif", "--out", "d.npy", *RUN],
         ["memory", "--features"]),
        ("checkpoint-nan-weights", [*predict[:1], "--checkpoint", "nan.pt", "--image",
                                    "img.tif", "--out", "d.npy", *RUN], ["NaN", "diverged"]),
        ("resume-nan-weights", ["train", "--resume", "run_nan.pt", "--image", "img.tif",
                                "--labels", "lab.tif", "--out", "e.pt", *RUN], ["NaN"]),
        ("features-too-large", [*train, "--out", "f.pt", "--features", "100000", "200000",
                                "--iterations", "1", *RUN], ["memory", "--features"]),
        # impossible values
        ("delta-d-nan", [*seg_emb, "--out", "g.tif", "--delta-d", "nan"], ["delta_d"]),
        ("delta-v-negative", [*seg_emb, "--out", "g.tif", "--delta-v", "-1"], ["delta_v"]),
        ("bandwidth-zero", [*seg_emb, "--out", "g.tif", "--method", "meanshift",
                            "--bandwidth", "0"], ["bandwidth"]),
        ("bandwidth-negative", [*seg_emb, "--out", "g.tif", "--method", "meanshift",
                                "--bandwidth", "-0.5"], ["bandwidth"]),
        ("foreground-threshold", [*seg_emb, "--out", "g.tif", "--foreground-threshold", "1.5"],
         ["foreground_threshold"]),
        ("channel-axis-out-of-range", ["train", "--image", "vol.npy", "--labels", "vol_lab.npy",
                                       "--out", "h.pt", "--channel-axis", "5", *TINY],
         ["channel_axis=5", "--channel-axis"]),
        ("predict-channel-axis", [*predict, "--out", "d.npy", "--channel-axis", "5", *RUN],
         ["channel_axis=5"]),
        ("autosave-negative", [*train, "--out", "h.pt", "--autosave-seconds", "-1", *TINY],
         ["autosave_seconds"]),
        ("autosave-nan", [*train, "--out", "h.pt", "--autosave-seconds", "nan", *TINY],
         ["autosave_seconds"]),
        ("evaluate-uint64-max", ["evaluate", "--gt", "gt64.npy", "--seg", "seg.npy"],
         ["int64"]),
        # misleading messages
        ("rgb-without-channel-axis", ["train", "--image", "rgb.tif", "--labels", "lab.tif",
                                      "--out", "h.pt", *TINY],
         ["channel axis", "--channel-axis 2"]),
        ("channel-first-without-axis", ["train", "--image", "chfirst.npy", "--labels",
                                        "lab.tif", "--out", "h.pt", *TINY],
         ["channel axis", "--channel-axis 0"]),
        ("resume-with-other-channel-axis", ["train", "--resume", "run.pt", "--image", "img.tif",
                                            "--labels", "lab.tif", "--out", "i.pt",
                                            "--channel-axis", "0", *RUN], ["channel axis"]),
        ("resume-with-ignored-settings", ["train", "--resume", "run.pt", "--image", "img.tif",
                                          "--labels", "lab.tif", "--out", "i.pt", "--lr",
                                          "0.1", *RUN], ["--lr", "resuming"]),
        # cases that already worked and must keep working
        ("missing-file", ["train", "--image", "nothere.tif", "--labels", "lab.tif",
                          "--out", "j.pt"], ["does not exist"]),
        ("unknown-input-suffix", ["train", "--image", "img.png", "--labels", "lab.tif",
                                  "--out", "j.pt"], ["unknown file type"]),
        ("nothing-labeled", [*train[:3], "--labels", "nolab.tif", "--out", "j.pt", *TINY],
         ["No labeled pixel"]),
        ("wrong-dimensions", ["train", "--image", "img4d.npy", "--labels", "vol_lab.npy",
                              "--out", "j.pt", *TINY], ["axes"]),
        ("image-label-counts", [*train, "--image", "img.tif", "--out", "j.pt"],
         ["--labels after each --image"]),
        ("evaluate-shapes", ["evaluate", "--gt", "seg.npy", "--seg", "seg_small.npy"],
         ["same shape"]),
        ("option-of-another-method", [*seg_emb, "--out", "g.tif", "--bandwidth", "2"],
         ["applies to meanshift"]),
        ("missing-checkpoint", [*predict[:1], "--checkpoint", "none.pt", "--image", "img.tif",
                                "--out", "d.npy", *RUN], ["does not exist"]),
    ]
    if readonly is not None:
        cases.append(("out-read-only", [*train, "--out", str(readonly / "model.pt"), *TINY],
                      ["not writable"]))
    return cases


CASE_IDS = [case[0] for case in _cli_cases(Path("/ro"))]


@pytest.fixture(scope="module")
def cli_results(files, tmp_path_factory):
    """``id -> (returncode, stdout, stderr, keywords)`` of every CLI case, run in parallel."""
    readonly = _unwritable_folder(tmp_path_factory.mktemp("ro"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default")

    def run(case):
        name, args, keywords = case
        done = subprocess.run([sys.executable, "-m", "napari_spoco.cli", *args], cwd=files,
                              capture_output=True, text=True, env=env, timeout=300)
        return name, (done.returncode, done.stdout, done.stderr, keywords)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, _cli_cases(readonly)))


@pytest.mark.parametrize("case", CASE_IDS)
def test_cli_case_exits_2_with_a_message(case, cli_results):
    if case not in cli_results:
        pytest.skip("no unwritable folder on this machine")
    returncode, stdout, stderr, keywords = cli_results[case]
    assert "Traceback" not in stderr, stderr
    assert returncode == 2, (stdout, stderr)
    assert ": error: " in stderr
    for keyword in keywords:
        assert keyword in stderr, stderr


def test_cli_pickle_payload_runs_nothing_and_warns_nothing(cli_results):
    _, stdout, stderr, _ = cli_results["pickle-payload"]
    assert "PAYLOAD-RAN" not in stdout + stderr
    assert "UserWarning" not in stderr and "pickle protocol" not in stderr, stderr


def test_cli_refusals_write_nothing(files, cli_results):
    for name in ("a.pt", "b.npy", "c.npy", "d.npy", "e.pt", "f.pt", "g.tif", "h.pt", "i.pt",
                 "j.pt", "model.txt", "img.zarr/labels"):
        assert not (files / name).exists(), name
    assert tifffile.imread(files / "lab.tif").max() == 2  # the labels are still labels
    np.testing.assert_array_equal(read_array(files / "img.zarr"),
                                  tifffile.imread(files / "img.tif"))


# -- the API ------------------------------------------------------------------------------

def _image():
    return blobs((40, 40))


API_CASES = [
    ("read-empty", lambda d: read_array(d / "empty.tif"), SpocoInputError, "empty"),
    ("read-non-tiff", lambda d: read_array(d / "nontiff.tif"), SpocoInputError, "TIFF"),
    ("read-truncated-npy", lambda d: read_array(d / "trunc.npy"), SpocoInputError, "truncated"),
    ("read-object-npy", lambda d: read_array(d / "obj.npy"), SpocoInputError, "Python objects"),
    ("read-zarr-without-metadata", lambda d: read_array(d / "nometa.zarr"), SpocoInputError,
     "zarr metadata"),
    ("load-pickle", lambda d: load_checkpoint(d / "pickle.pt"), CheckpointError, "holds code"),
    ("load-bad-iteration", lambda d: load_checkpoint(d / "bad_iter.pt"), CheckpointError,
     "iteration"),
    ("load-bad-model-state", lambda d: load_checkpoint(d / "bad_state.pt"), CheckpointError,
     "model_state"),
    ("load-nan-weights", lambda d: load_model(d / "nan.pt"), CheckpointError, "NaN"),
    ("load-huge-architecture", lambda d: load_model(d / "huge.pt"), CheckpointError,
     "memory"),
    ("resume-nan-weights", lambda d: Trainer.from_checkpoint(d / "run_nan.pt", [_image()]),
     CheckpointError, "NaN"),
    ("unet-too-large", lambda d: UNet(features=(100_000, 200_000)), SpocoInputError,
     "features"),
    ("segment-delta-d-nan", lambda d: segment(np.load(d / "emb.npy"), delta_d=math.nan),
     SpocoInputError, "delta_d"),
    ("segment-delta-v-inf", lambda d: segment(np.load(d / "emb.npy"), delta_v=math.inf),
     SpocoInputError, "delta_v"),
    ("segment-bandwidth-zero", lambda d: segment(np.load(d / "emb.npy"), "meanshift",
                                                 bandwidth=0.0), SpocoInputError, "bandwidth"),
    ("segment-iou-nan", lambda d: segment(np.load(d / "emb.npy"), "consistency",
                                          embeddings_g=np.load(d / "emb.npy"),
                                          iou_threshold=math.nan),
     SpocoInputError, "iou_threshold"),
    ("clustering-n-anchors", lambda d: check_clustering_params("consistency", n_anchors=0),
     SpocoInputError, "n_anchors"),
    ("autosave-nan", lambda d: TrainingConfig(autosave_seconds=math.nan), SpocoInputError,
     "autosave_seconds"),
    ("autosave-negative", lambda d: TrainingConfig(autosave_seconds=-1.0), SpocoInputError,
     "autosave_seconds"),
    ("delta-d-below-delta-v", lambda d: SpocoLoss(delta_v=1.0, delta_d=0.5), SpocoInputError,
     "delta_d"),
    ("delta-d-equal-delta-v", lambda d: Trainer(
        [_image()], TrainingConfig(features=(4, 8), device="cpu", autosave_seconds=None,
                                   loss={"delta_v": 1.0, "delta_d": 1.0})),
     SpocoInputError, "larger than delta_v"),
    ("channel-axis-5", lambda d: Trainer(
        [(np.load(d / "vol.npy"), np.load(d / "vol_lab.npy"))],
        TrainingConfig(features=(4, 8), channel_axis=5, device="cpu")),
     SpocoInputError, "channel_axis=5"),
    ("rgb-without-channel-axis", lambda d: validate_pair(
        tifffile.imread(d / "rgb.tif"), tifffile.imread(d / "lab.tif"), ndim=3),
     SpocoInputError, "channel axis"),
    ("object-image-training", lambda d: validate_pair(
        _image()[0].astype(object), _image()[1], ndim=2), SpocoInputError, "Python objects"),
    ("object-image-prediction", lambda d: predict_embeddings(
        UNet(features=(4, 8)), np.full((20, 20), None, dtype=object), device="cpu"),
     SpocoInputError, "Python objects"),
    ("evaluate-uint64-max", lambda d: evaluate(np.load(d / "gt64.npy"), np.load(d / "seg.npy")),
     SpocoInputError, "int64"),
    ("output-is-input", lambda d: check_output(d / "lab.tif", {"--labels": d / "lab.tif"}),
     SpocoInputError, "same file"),
    ("output-inside-input-store", lambda d: check_output(d / "img.zarr" / "x", [d / "img.zarr"]),
     SpocoInputError, "same file"),
    ("output-exists", lambda d: check_output(d / "existing.tif"), SpocoInputError,
     "already exists"),
    ("output-is-folder", lambda d: check_output(d / "outdir", suffixes=CHECKPOINT_SUFFIXES),
     SpocoInputError, "folder"),
    ("output-suffix", lambda d: check_output(d / "x.png"), SpocoInputError,
     "unknown file type"),
]


@pytest.mark.parametrize("make, error, keyword", [case[1:] for case in API_CASES],
                         ids=[case[0] for case in API_CASES])
def test_api_case_raises_with_a_message(make, error, keyword, files):
    with pytest.raises(error) as info:
        make(files)
    assert keyword in str(info.value)


def test_the_battery_is_large_enough():
    assert len(CASE_IDS) + len(API_CASES) >= 40
    assert len(CASE_IDS) >= 40


def test_pickle_payload_is_refused_without_a_torch_warning(files, recwarn):
    with pytest.raises(CheckpointError, match="holds code"):
        load_checkpoint(files / "pickle.pt")
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_overwrite_and_a_zarr_store_being_replaced_are_allowed(files, tmp_path):
    existing = write_array(tmp_path / "old.zarr", np.zeros((3, 3)))
    assert check_output(existing, overwrite=True) == existing
    assert check_output(tmp_path / "new" / "deeper" / "x.npy") == tmp_path / "new/deeper/x.npy"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert torch.isfinite(load_model(files / "m.pt").model.head.weight).all()
