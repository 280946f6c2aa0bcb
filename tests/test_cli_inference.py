"""``napari-spoco predict``, ``segment`` and ``evaluate`` end to end, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_spoco.cli import main
from napari_spoco.core.clustering import segment
from napari_spoco.core.inference.prediction import predict_from_checkpoint
from napari_spoco.core.io import write_array
from napari_spoco.core.model.checkpoint import save_checkpoint
from napari_spoco.core.model.normalization import Normalization
from napari_spoco.core.model.unet import UNet

DATA = Path(__file__).parent / "data" / "stardist"


def tiny_checkpoint(path, in_channels=1, channel_axis=None, delta_d=2.0, image=None,
                    fit_axis="same"):
    torch.manual_seed(0)
    model = UNet(in_channels, 4, 2, features=(4, 8), norm="group", num_groups=2)
    if image is None:
        image = np.random.default_rng(0).normal(100, 20, (32, 32))
    return save_checkpoint(path, {
        "architecture": model.config,
        "model_state": model.state_dict(),
        "momentum_state": model.state_dict(),
        "normalization": Normalization.fit(
            [image], channel_axis if fit_axis == "same" else fit_axis).to_dict(),
        "config": {"channel_axis": channel_axis, "loss": {"delta_v": 0.5, "delta_d": delta_d}},
    })


@pytest.fixture
def image_file(tmp_path):
    image = np.random.default_rng(1).normal(100, 20, (45, 38)).astype(np.float32)
    return write_array(tmp_path / "image.tif", image), image


def test_predict_writes_the_embeddings_of_the_checkpoint(tmp_path, image_file, capsys):
    path, image = image_file
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    assert main(["predict", "--checkpoint", str(ckpt), "--image", str(path),
                 "--out", str(tmp_path / "e.npy"), "--device", "cpu", "--no-progress"]) == 0
    assert "wrote embeddings (4, 45, 38)" in capsys.readouterr().out
    expected = predict_from_checkpoint(ckpt, image, device="cpu")
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected, atol=1e-6)


def test_predict_streams_into_zarr_and_writes_the_pca_view(tmp_path, image_file):
    path, image = image_file
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    stored = zarr.create_array(tmp_path / "image.zarr", shape=image.shape, chunks=(16, 16),
                               dtype="f4")
    stored[...] = image
    args = ["predict", "--checkpoint", str(ckpt), "--image", str(tmp_path / "image.zarr"),
            "--tile-shape", "32", "--overlap", "16", "--device", "cpu", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "e.zarr"), "--pca", str(tmp_path / "rgb.npy")]) == 0
    assert main([*args, "--out", str(tmp_path / "e.npy"), "--pca", str(tmp_path / "rgb.tif")]) == 0
    from_zarr = zarr.open_array(tmp_path / "e.zarr", mode="r")
    np.testing.assert_allclose(from_zarr[...], np.load(tmp_path / "e.npy"), atol=1e-6)
    rgb = np.load(tmp_path / "rgb.npy")
    assert rgb.shape == (45, 38, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    rgb_tif = tifffile.imread(tmp_path / "rgb.tif")
    assert rgb_tif.dtype == np.uint8
    np.testing.assert_allclose(rgb_tif / 255.0, rgb, atol=1 / 255 + 1e-6)


def test_channel_axis_comes_from_training_config_or_must_be_given(tmp_path, capsys):
    image = np.random.default_rng(2).normal(size=(30, 31, 2)).astype(np.float32)
    path = write_array(tmp_path / "rgbish.npy", image)
    with_axis = tiny_checkpoint(tmp_path / "a.pt", in_channels=2, channel_axis=-1, image=image)
    without = tiny_checkpoint(tmp_path / "b.pt", in_channels=2, channel_axis=None, image=image,
                              fit_axis=-1)
    out = str(tmp_path / "e.npy")
    # the same output three times on purpose: --overwrite
    common = ["--image", str(path), "--out", out, "--device", "cpu", "--no-progress",
              "--overwrite"]
    assert main(["predict", "--checkpoint", str(with_axis), *common]) == 0
    assert np.load(out).shape == (4, 30, 31)
    assert main(["predict", "--checkpoint", str(without), *common]) == 2
    assert "--channel-axis" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(without), *common, "--channel-axis", "2"]) == 0


def test_segment_from_precomputed_embeddings_uses_the_checkpoint_margins(tmp_path):
    embeddings = np.zeros((4, 40, 40), np.float32)
    # Two halves 0.9 apart: affinity ((2 δd − 0.9) / 2 δd)² is 0.30 for δd = 1 (repulsion
    # wins: two objects) and 0.60 for δd = 2 (attraction wins: one object).
    embeddings[0, :, 20:] = 0.9
    embeddings += np.random.default_rng(3).normal(0, 0.05, embeddings.shape).astype(np.float32)
    emb_path = write_array(tmp_path / "e.npy", embeddings)
    for delta_d in (1.0, 2.0):
        ckpt = tiny_checkpoint(tmp_path / f"m{delta_d}.pt", delta_d=delta_d)
        out = tmp_path / f"labels{delta_d}.tif"
        assert main(["segment", "--checkpoint", str(ckpt), "--embeddings", str(emb_path),
                     "--out", str(out)]) == 0
        labels = tifffile.imread(out)
        assert labels.dtype == np.uint32
        np.testing.assert_array_equal(labels, segment(embeddings, "mws", delta_d=delta_d,
                                                      seed=0))
    assert len(np.unique(tifffile.imread(tmp_path / "labels1.0.tif"))) == 2
    assert len(np.unique(tifffile.imread(tmp_path / "labels2.0.tif"))) == 1


def test_segment_predicts_with_mask_and_min_size(tmp_path, image_file):
    path, image = image_file
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    mask = np.zeros(image.shape, np.uint8)
    mask[5:30, 4:25] = 1
    mask_path = write_array(tmp_path / "mask.npy", mask)
    out = tmp_path / "labels.npy"
    assert main(["segment", "--checkpoint", str(ckpt), "--image", str(path), "--out", str(out),
                 "--mask", str(mask_path), "--min-size", "5", "--device", "cpu",
                 "--no-progress"]) == 0
    labels = np.load(out)
    embeddings = predict_from_checkpoint(ckpt, image, device="cpu")
    expected = segment(embeddings, "mws", mask=mask.astype(bool), min_size=5, seed=0)
    np.testing.assert_array_equal(labels, expected)
    assert np.all(labels[mask == 0] == 0)


def test_segment_consistency_predicts_the_second_view(tmp_path, image_file):
    path, image = image_file
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "labels.npy"
    assert main(["segment", "--checkpoint", str(ckpt), "--image", str(path), "--out", str(out),
                 "--method", "consistency", "--max-samples", "500", "--device", "cpu",
                 "--no-progress"]) == 0
    assert np.load(out).shape == image.shape


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--bandwidth", "2"], "--bandwidth applies to meanshift"),
     (["--method", "consistency", "--embeddings", "E"], "--checkpoint and --image"),
     (["--min-cluster-size", "3", "--method", "meanshift"], "--min-cluster-size applies")],
)
def test_segment_misuse_is_explained(tmp_path, capsys, extra, message):
    args = ["segment", "--out", str(tmp_path / "l.tif"), *extra]
    if "--embeddings" not in extra:
        args += ["--embeddings", "E"]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_evaluate_prints_hand_checkable_metrics(tmp_path, capsys):
    gt = tifffile.imread(DATA / "mask2d.tif")[:128, :128]
    seg = gt.copy()
    dropped = np.unique(gt)[1]
    seg[seg == dropped] = 0  # one object missed, all others perfect
    n = len(np.unique(gt)) - 1
    gt_path, seg_path = write_array(tmp_path / "gt.tif", gt), write_array(tmp_path / "s.npy", seg)
    assert main(["evaluate", "--gt", str(gt_path), "--seg", str(seg_path), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_gt"] == n and metrics["n_seg"] == n - 1 and metrics["dic"] == 1
    assert metrics["ap50"] == pytest.approx((n - 1) / n)
    assert metrics["voi_split"] == pytest.approx(0.0, abs=1e-12)
    assert main(["evaluate", "--gt", str(gt_path), "--seg", str(seg_path)]) == 0
    table = capsys.readouterr().out
    for label in ("SBD", "|DiC|", "AP@0.5", "mAP", "adapted Rand error", "VOI split",
                  "VOI merge"):
        assert label in table
    assert f"{(n - 1) / n:.4f}" in table


def _segment_and_score(tmp_path, ckpt, name, capsys):
    labels = tmp_path / f"{name}.tif"
    args = ["segment", "--checkpoint", str(ckpt), "--image", str(DATA / "img2d.tif"),
            "--out", str(labels), "--min-size", "30", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["evaluate", "--gt", str(DATA / "mask2d.tif"), "--seg", str(labels),
                 "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_trained_checkpoint_segments_a_real_image_better_than_untrained(tmp_path, capsys):
    from napari_spoco.core.training import Trainer, TrainingConfig

    image = tifffile.imread(DATA / "img2d.tif")
    mask = tifffile.imread(DATA / "mask2d.tif")
    config = TrainingConfig(features=(8, 16, 32), out_channels=8, mode="dense",
                            patch_shape=(128, 128), batch_size=2, iterations=150, device="cpu",
                            autosave_seconds=None, seed=0)
    trainer = Trainer([(image, mask)], config)
    trainer.save(tmp_path / "untrained.pt")
    for _ in trainer.steps():
        pass
    trainer.save(tmp_path / "trained.pt")

    untrained = _segment_and_score(tmp_path, tmp_path / "untrained.pt", "untrained", capsys)
    trained = _segment_and_score(tmp_path, tmp_path / "trained.pt", "trained", capsys)
    for metrics in (trained, untrained):
        assert set(metrics) >= {"sbd", "dic", "ap50", "map", "adapted_rand_error",
                                "voi_split", "voi_merge"}
    assert trained["map"] > untrained["map"] + 0.05
    assert trained["adapted_rand_error"] < untrained["adapted_rand_error"] - 0.05
    assert trained["sbd"] > untrained["sbd"]
