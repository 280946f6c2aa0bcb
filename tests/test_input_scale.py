"""Input scale: painted objects resampled to the size the source model was trained on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_spoco.core.evaluation.metrics import evaluate
from napari_spoco.core.inference.prediction import predict_embeddings, predict_with_foreground
from napari_spoco.core.inference.segmentation import segment_output, settings_for
from napari_spoco.core.model.checkpoint import load_model
from napari_spoco.core.model.input_scale import resample, scaled_shape
from napari_spoco.core.run_defaults import default_input_scale, source_object_size
from napari_spoco.core.training import Trainer, TrainingConfig
from napari_spoco.core.training.data import TrainingData


def tiny(**changes) -> TrainingConfig:
    settings = {"features": (4, 8), "num_groups": 2, "out_channels": 4,
                "patch_shape": (32, 32), "batch_size": 1, "iterations": 2, "device": "cpu",
                "autosave_seconds": None, "augment": False}
    return TrainingConfig(**{**settings, **changes})


def discs(shape, radius, spacing, seed=0):
    """An image of bright discs on a grid and their labels (every disc its own id)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.uint32)
    next_id = 1
    for cy in range(spacing // 2, shape[0] - radius, spacing):
        for cx in range(spacing // 2, shape[1] - radius, spacing):
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = next_id
            next_id += 1
    image = (labels > 0).astype(np.float32) + rng.normal(0, 0.1, shape).astype(np.float32)
    return image, labels


@pytest.mark.parametrize(
    ("source", "painted", "n", "expected"),
    [(335.0, 869.0, 15, 0.62), (335.0, 400.0, 15, 1.0), (0.0, 869.0, 15, 1.0),
     (335.0, 869.0, 2, 1.0), (100.0, 100.0 * 9, 5, 0.33), (1.0, 10_000.0, 5, 0.25),
     (900.0, 100.0, 5, 3.0)],
)
def test_default_input_scale_rules(source, painted, n, expected):
    assert default_input_scale(source, painted, n, 2) == expected


def test_resample_keeps_label_ids_and_shape_and_intensity_mean():
    image, labels = discs((96, 80), 6, 20)
    small_labels = resample(labels, (48, 40), labels=True)
    assert small_labels.dtype == labels.dtype and small_labels.shape == (48, 40)
    assert set(np.unique(small_labels)) <= set(np.unique(labels))
    small = resample(image, (48, 40))
    assert small.shape == (48, 40) and small.dtype == np.float32
    assert abs(small.mean() - image.mean()) < 0.02
    channels = np.stack([image, 2 * image], axis=-1)
    both = resample(channels, (48, 40), channel_axis=-1)
    np.testing.assert_allclose(both[..., 1], 2 * both[..., 0], rtol=1e-5)


def test_fine_tuning_on_larger_objects_trains_on_the_source_grid(tmp_path):
    # Source: discs of radius 4 (≈ 50 px); target: radius 8 (≈ 200 px): linear scale 1/2.
    source_pair = discs((64, 64), 4, 16)
    source = Trainer([source_pair], tiny(mode="dense"))
    for _ in source.steps():
        pass
    assert source.config.input_scale == 1.0
    source_size = source.config.object_size
    assert 40 < source_size < 60
    source_path = source.save(tmp_path / "source.pt")
    assert source_object_size(torch.load(source_path, weights_only=True)) == source_size

    image, labels = discs((128, 128), 8, 32)
    # the default keeps the images' grid; "auto" resamples them
    assert Trainer([(image, labels)], tiny(mode="dense"),
                   source=source_path).config.input_scale == 1.0
    tuned = Trainer([(image, labels)], tiny(mode="dense", input_scale="auto"), source=source_path)
    scale = tuned.config.input_scale
    assert scale == default_input_scale(source_size, np.median(np.bincount(labels.ravel())[1:]),
                                        int(labels.max()), 2)
    assert 0.45 <= scale <= 0.55
    assert tuned.data.shapes == [scaled_shape((128, 128), scale)]
    # the painted sizes the segmentation uses stay on the image's grid
    assert abs(tuned.annotations["median_object_size"] - np.median(
        np.bincount(labels.ravel())[1:])) < 0.15 * np.median(np.bincount(labels.ravel())[1:])
    assert abs(tuned.config.object_size - source_size) < 0.3 * source_size
    # new painting arrives on the image's grid and is brought to the network's
    fewer = np.where(np.isin(labels, [1, 2, 3]), labels, 0).astype(np.uint32)
    tuned.set_labels(0, fewer)
    assert tuned.annotations["n_objects"] == 3
    for _ in tuned.steps():
        pass
    path = tuned.save(tmp_path / "tuned.pt")

    loaded = load_model(path)
    assert loaded.model.input_scale == scale == loaded.momentum_model.input_scale
    embeddings, foreground = predict_with_foreground(loaded.model, image, loaded.normalization,
                                                     device="cpu")
    assert embeddings.shape == (4, 128, 128) and foreground.shape == (128, 128)
    # = predicting the resampled image with scale 1 and resampling the embeddings back
    loaded.model.input_scale = 1.0
    small = resample(image, scaled_shape(image.shape, scale))
    manual = resample(predict_embeddings(loaded.model, small, loaded.normalization,
                                         device="cpu"), image.shape, channel_axis=0)
    np.testing.assert_allclose(embeddings, manual, atol=1e-5)


def test_training_from_scratch_and_prepared_data_keep_the_images_grid():
    image, labels = discs((64, 64), 8, 32)
    trainer = Trainer([(image, labels)], tiny(mode="dense"))
    assert trainer.config.input_scale == 1.0 and trainer.data.shapes == [(64, 64)]
    data = TrainingData([(image, labels)], ndim=2, mode="dense", patch_shape=(32, 32),
                        input_scale=0.5)
    assert data.shapes == [(32, 32)]
    assert Trainer(data, tiny(mode="dense")).config.input_scale == 0.5


def test_an_explicit_input_scale_wins_and_a_bad_one_is_refused():
    from napari_spoco.core.errors import SpocoInputError

    image, labels = discs((64, 64), 8, 32)
    trainer = Trainer([(image, labels)], tiny(mode="dense", input_scale=2.0))
    assert trainer.data.shapes == [(128, 128)]
    for bad in (0.0, -1.0, "big"):
        with pytest.raises(SpocoInputError, match="input_scale must be a positive number"):
            tiny(input_scale=bad)


def test_bioimageio_export_refuses_a_model_with_an_input_scale(tmp_path):
    pytest.importorskip("bioimageio.spec")
    from napari_spoco.core.errors import SpocoInputError
    from napari_spoco.core.model.bioimageio_export import export_bioimageio

    image, labels = discs((64, 64), 8, 32)
    trainer = Trainer([(image, labels)], tiny(mode="dense", input_scale=0.5, iterations=1))
    for _ in trainer.steps():
        pass
    path = trainer.save(tmp_path / "scaled.pt")
    with pytest.raises(SpocoInputError, match="input scale"):
        export_bioimageio(path, tmp_path / "model.zip")
    assert not (tmp_path / "model.zip").exists()


def test_larger_cells_are_no_longer_cut_by_the_ovules_model():
    # The issue-11 "staircase": ovules_2d, trained on ovules-like cells of 22 px, splits the
    # same tissue with cells of 36 px along straight lines. The image's 10 % painted cells
    # decide the input scale before the first training step; segmented with the run's settings.
    from napari_spoco.core.synthetic import make_tissue
    from napari_spoco.core.training.sampling import subsample_objects
    from napari_spoco.models import resolve_checkpoint

    image, truth = make_tissue((384, 384), preset="ovules", seed=7, cell_diameter=36.0)
    trainer = Trainer([(image, subsample_objects(truth, 0.1, 0))],
                      TrainingConfig(iterations=0, device="cpu", autosave_seconds=None,
                                     input_scale="auto"),
                      source=resolve_checkpoint("ovules_2d"))
    assert 0.55 <= trainer.config.input_scale <= 0.75  # about 22 / 36

    def segments_and_sbd(model):
        embeddings, foreground = predict_with_foreground(model, image, trainer.normalization,
                                                         device="cpu")
        scores = evaluate(truth, segment_output(embeddings, foreground, settings_for(trainer)))
        return scores["n_seg"], scores["sbd"]

    scaled_count, scaled_sbd = segments_and_sbd(trainer.model)
    trainer.model.input_scale = 1.0
    plain_count, plain_sbd = segments_and_sbd(trainer.model)
    n_cells = int(truth.max())
    assert plain_count > 1.4 * n_cells  # the symptom (175 cells)
    assert scaled_count < 1.2 * n_cells
    assert scaled_sbd > plain_sbd + 0.08  # measured 0.814 vs 0.644 (188 vs 285 segments)


def test_cli_input_scale_option(tmp_path, capsys):
    import tifffile

    from napari_spoco.cli import main
    from napari_spoco.cli.train import input_scale_option

    assert input_scale_option("auto") == "auto" and input_scale_option("0.5") == 0.5
    image, labels = discs((64, 64), 8, 32)
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    common = ["train", "--image", str(tmp_path / "image.tif"), "--labels",
              str(tmp_path / "labels.tif"), "--iterations", "1", "--patch-shape", "32", "32",
              "--mode", "dense", "--device", "cpu", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "bad.pt"), "--input-scale", "zero"]) == 2
    assert "--input-scale must be 'auto' or a positive number" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "half.pt"), "--input-scale", "0.5"]) == 0
    assert "images resampled by 0.5" in capsys.readouterr().err
    assert load_model(tmp_path / "half.pt").model.input_scale == 0.5


def test_blockwise_with_an_input_scale_equals_the_whole_image_pass(tmp_path):
    # Halos cover the network's context in image pixels and blocks start on the pooling grid
    # seen from the image (multiple / scale): exact when that is a whole number (0.5 here).
    import zarr

    from napari_spoco.core.inference import blockwise as bw
    from napari_spoco.core.inference.prediction import frozen_network
    from napari_spoco.core.model.unet import UNet

    torch.manual_seed(0)
    model = UNet(1, 4, 2, features=(4, 8, 16), num_groups=2).eval()
    model.input_scale = 0.5
    image = discs((160, 176), 8, 32)[0]
    bw.segment_blockwise(model, image, block_shape=64, embeddings_out=tmp_path / "e.zarr")
    blockwise = zarr.open_array(str(tmp_path / "e.zarr"))[...]
    # one pass with the same group-norm statistics (calibrated on the network's grid)
    whole = predict_embeddings(frozen_network(model, image, device="cpu"), image, device="cpu")
    assert blockwise.shape == whole.shape == (4, 160, 176)
    np.testing.assert_allclose(blockwise, whole, atol=1e-5)
