"""Group-norm statistics of a fixed tile: predictions that do not depend on the image size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_spoco.core.evaluation.metrics import evaluate
from napari_spoco.core.inference.prediction import (
    freezes_statistics,
    predict_embeddings,
    predict_with_foreground,
    statistics_tile_of,
)
from napari_spoco.core.inference.segmentation import segment_output, settings_for
from napari_spoco.core.model.checkpoint import load_model
from napari_spoco.core.model.frozen_norm import statistics_tile
from napari_spoco.core.synthetic import make_tissue
from napari_spoco.core.training import Trainer, TrainingConfig
from napari_spoco.models import resolve_checkpoint

from test_frozen_norm import group_norm_unet


def test_checkpoint_and_trainer_take_the_statistics_tile_from_the_training_patch(tmp_path):
    image = np.random.default_rng(0).random((48, 48), dtype=np.float32)
    labels = np.zeros((48, 48), np.uint32)
    labels[4:20, 4:20], labels[24:44, 24:44] = 1, 2
    trainer = Trainer([(image, labels)], TrainingConfig(
        features=(4, 8), num_groups=2, patch_shape=(24, 32), iterations=0, device="cpu",
        autosave_seconds=None))
    assert trainer.model.statistics_tile == statistics_tile((24, 32)) == (48, 64)
    assert trainer.momentum_model.statistics_tile == (48, 64)
    loaded = load_model(trainer.save(tmp_path / "m.pt"), "cpu")
    assert statistics_tile_of(loaded.model, 2) == (48, 64)
    assert loaded.momentum_model.statistics_tile == (48, 64)


def test_an_image_region_predicts_the_same_in_a_larger_image():
    """An image that is one statistics tile, and 2 × 2 copies of it: its centre must not change.

    The small image keeps its own statistics; the large one is calibrated on its four copies of
    it, so on the same statistics. With the whole image's own statistics (``groupnorm="tile"``,
    one tile) the centre does change, because zero padding weighs less in the larger image.
    """
    model = group_norm_unet(seed=3).eval()
    model.statistics_tile = (64, 64)
    rng = np.random.default_rng(1)
    small = rng.normal(size=(64, 64)).astype(np.float32)
    large = np.tile(small, (2, 2))
    assert not freezes_statistics(model, small.shape, 1)
    assert freezes_statistics(model, large.shape, 1)
    centre = (slice(None), slice(24, 40), slice(24, 40))
    alone = predict_embeddings(model, small, device="cpu")
    inside = predict_embeddings(model, large, device="cpu")
    np.testing.assert_allclose(inside[centre], alone[centre], atol=1e-4)
    own_small = predict_embeddings(model, small, device="cpu", groupnorm="tile")
    own_large = predict_embeddings(model, large, device="cpu", groupnorm="tile")
    assert np.abs(own_large[centre] - own_small[centre]).max() > 1e-2


def test_an_image_of_up_to_twice_the_statistics_tile_keeps_its_own_statistics():
    model = group_norm_unet(seed=4).eval()
    model.statistics_tile = (32, 32)
    image = np.random.default_rng(2).normal(size=(40, 48)).astype(np.float32)
    assert not freezes_statistics(model, image.shape, 1)
    np.testing.assert_array_equal(predict_embeddings(model, image, device="cpu"),
                                  predict_embeddings(model, image, device="cpu",
                                                     groupnorm="tile"))


@pytest.mark.parametrize("seed", [21])
def test_the_shipped_model_segments_a_large_image_as_well_as_its_validation_images(seed):
    """ovules_2d on a held-out 768² ovules-like image: with the image's own statistics the
    default segmentation over-segments (measured at 512²: SBD 0.76-0.77, 1024²: 0.64), with
    its statistics tile it scores as on its 256² validation images (0.86)."""
    loaded = load_model(resolve_checkpoint("ovules_2d"), "cpu")
    image, truth = make_tissue((768, 768), preset="ovules", seed=seed)
    settings = settings_for(loaded)
    scores = {}
    for groupnorm in ("image", "tile"):
        embeddings, foreground = predict_with_foreground(loaded.model, image,
                                                         loaded.normalization, device="cpu",
                                                         groupnorm=groupnorm)
        scores[groupnorm] = evaluate(truth, segment_output(embeddings, foreground, settings))
    assert scores["image"]["sbd"] > 0.84
    assert scores["image"]["sbd"] > scores["tile"]["sbd"] + 0.05
    assert scores["image"]["n_seg"] < 1.15 * scores["image"]["n_gt"]


def test_frozen_statistics_come_from_tiles_of_the_statistics_tile(monkeypatch):
    """The calibration batch: statistics tiles holding a quarter of the image, at least 4."""
    from napari_spoco.core.inference import prediction

    seen = []

    def spy(network, calibration, **kwargs):
        seen.append(tuple(calibration.shape))
        return real(network, calibration, **kwargs)

    real = prediction.freeze_group_norm
    monkeypatch.setattr(prediction, "freeze_group_norm", spy)
    model = group_norm_unet(seed=5).eval()
    model.statistics_tile = (32, 48)
    image = np.random.default_rng(3).normal(size=(128, 160)).astype(np.float32)
    with torch.inference_mode():
        predict_embeddings(model, image, device="cpu")
    assert seen == [(4, 1, 32, 48)]  # a quarter of the 128 × 160 image is 3 tiles: at least 4
