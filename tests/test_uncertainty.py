"""The per-segment f/g uncertainty and the choice of the object to paint next."""

import numpy as np
import pytest
import torch
from training_support import blobs, tiny

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.inference.prediction import predict_with_foreground
from napari_spoco.core.inference.segmentation import (
    SegmentationSettings,
    segment_output,
    settings_for,
)
from napari_spoco.core.inference.uncertainty import (
    augmentation_instability,
    embedding_disagreement,
    segment_means,
    segmentation_disagreement,
    suggest_next,
    uncertainty_scores,
)
from napari_spoco.core.training import Trainer
from napari_spoco.core.training.augment import AugmentConfig


def three_segments():
    segments = np.zeros((12, 12), np.uint32)
    segments[1:5, 1:5], segments[1:5, 7:11], segments[7:11, 4:8] = 1, 2, 3
    return segments


def test_score_is_higher_where_f_and_g_disagree():
    segments = three_segments()
    emb_f = np.random.default_rng(0).normal(size=(4, 12, 12)).astype(np.float32)
    emb_g = emb_f.copy()
    emb_g[:, segments == 2] += 1.5  # g moved segment 2 only
    emb_g[:, segments == 3] += 0.1
    scores = segment_means(segments, embedding_disagreement(emb_f, emb_g, delta_d=2.0))
    assert scores[2] > scores[3] > scores[1] == pytest.approx(0.0)
    assert scores[2] == pytest.approx(np.sqrt(4 * 1.5**2) / 2.0, rel=1e-5)
    assert 0 not in scores


def test_segmentation_disagreement_flags_a_split_segment():
    segments = three_segments()
    other = segments.copy()
    other[1:5, 9:11] = 4  # g's clustering splits segment 2 in halves
    scores = segmentation_disagreement(segments, other)
    assert scores[1] == pytest.approx(0.0) and scores[3] == pytest.approx(0.0)
    assert scores[2] == pytest.approx(0.5)


def test_suggest_never_returns_painted_or_background_segments():
    segments = three_segments()
    painted = np.zeros_like(segments)
    painted[1:5, 7:11] = 5  # object 2 painted
    painted[7:11, 4:7] = 65535  # most of segment 3 painted as background
    scores = {0: 99.0, 1: 0.1, 2: 5.0, 3: 4.0}  # a score for the background must not matter
    suggestion = suggest_next(segments, scores, painted, background_id=65535)
    assert suggestion.segment_id == 1
    assert segments[tuple(int(c) for c in suggestion.centre)] == 1
    assert "object 1" in suggestion.reason


def test_suggest_skips_nan_and_takes_the_highest():
    segments = three_segments()
    suggestion = suggest_next(segments, {1: 0.3, 2: float("nan"), 3: 0.7},
                              np.zeros_like(segments))
    assert suggestion.segment_id == 3 and suggestion.score == pytest.approx(0.7)


def test_suggest_says_why_when_nothing_is_left():
    segments = three_segments()
    done = suggest_next(segments, {1: 1.0, 2: 1.0, 3: 1.0}, (segments > 0).astype(np.uint32))
    assert done.segment_id is None and done.centre is None and "painted already" in done.reason
    empty = suggest_next(np.zeros_like(segments), {}, np.zeros_like(segments))
    assert empty.segment_id is None and "empty" in empty.reason


def test_shape_mismatch_is_an_input_error():
    with pytest.raises(SpocoInputError, match="differ in shape"):
        suggest_next(three_segments(), {1: 1.0}, np.zeros((5, 5), np.uint32))
    with pytest.raises(SpocoInputError, match="differ in shape"):
        embedding_disagreement(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def test_uncertainty_scores_of_a_trainer_use_the_common_segmentation_path():
    image, labels = blobs()
    trainer = Trainer([(image, labels)], tiny(iterations=3, autosave_seconds=None))
    for _ in trainer.steps():
        pass
    result = uncertainty_scores(trainer, image)
    assert result.segments.shape == image.shape == result.pixel_map.shape
    ids = set(np.unique(result.segments).tolist()) - {0}
    assert set(result.scores) == ids
    # after training f has moved away from g (momentum 0.999), so they disagree somewhere
    assert result.pixel_map.max() > 0
    suggestion = suggest_next(result.segments, result.scores, labels)
    assert suggestion.segment_id is None or suggestion.segment_id in ids


class Intensity(torch.nn.Module):
    """A fixed "network" embedding each pixel by its intensity (two identical channels)."""

    def forward(self, x):
        return torch.cat([x, x], dim=1)


def test_augmentation_instability_flags_the_segment_jitter_destroys():
    # Object 1 sits 8 intensity units (4 push margins) above the background: every jitter
    # keeps it apart. Object 2 is only 0.3 above it: it merges into the background cluster.
    image = np.zeros((1, 32, 32), np.float32)
    image[0, 2:12, 2:12] = 8.0
    image[0, 18:28, 18:28] = 0.3
    segments = np.zeros((32, 32), np.uint32)
    segments[2:12, 2:12], segments[18:28, 18:28] = 1, 2
    settings = SegmentationSettings(method="mws", delta_d=2.0, min_size=4)
    scores, pixel_map = augmentation_instability(Intensity(), image, segments, settings,
                                                 channel_axis=0, n_augmentations=3)
    assert set(scores) == {1, 2}
    assert scores[1] == pytest.approx(0.0, abs=1e-6)
    # merged with the ~800-pixel background: best IoU ≈ 100 / 924
    assert scores[2] > 0.8
    assert pixel_map.shape == (32, 32) and pixel_map.dtype == np.float32


def test_augmentation_instability_is_zero_without_jitter_and_reproducible():
    image, labels = blobs()
    trainer = Trainer([(image, labels)], tiny(iterations=3, autosave_seconds=None))
    for _ in trainer.steps():
        pass
    result = uncertainty_scores(trainer, image, signal="augmentation", n_augmentations=2,
                                seed=3)
    ids = set(np.unique(result.segments).tolist()) - {0}
    assert set(result.scores) == ids
    assert all(0.0 <= v <= 1.0 for v in result.scores.values())
    again = uncertainty_scores(trainer, image, signal="augmentation", n_augmentations=2,
                               seed=3)
    assert again.scores == result.scores
    np.testing.assert_array_equal(again.pixel_map, result.pixel_map)
    # No jitter at all: each copy is the image itself, so every segment is reproduced exactly.
    still = AugmentConfig(contrast=0, brightness=0, gamma=0, blur_sigma=0, noise_std=0)
    scores, pixel_map = augmentation_instability(
        trainer.model, image, result.segments, settings_for(trainer),
        normalization=trainer.normalization, n_augmentations=2, augment_config=still)
    assert scores == {i: 0.0 for i in ids}
    assert np.allclose(pixel_map, 0.0, atol=1e-5)
    # and it agrees with the segmentation every front end makes
    emb, fg = predict_with_foreground(trainer.model, image, trainer.normalization,
                                      device="cpu")
    np.testing.assert_array_equal(segment_output(emb, fg, settings_for(trainer)),
                                  result.segments)


def test_the_augmentation_signal_needs_no_momentum_network():
    image, labels = blobs()
    trainer = Trainer([(image, labels)], tiny(iterations=1, autosave_seconds=None))
    for _ in trainer.steps():
        pass

    class OnlyF:  # a model source without g
        model, normalization = trainer.model, trainer.normalization
        config, annotations = trainer.config, trainer.annotations
        architecture = trainer.model.config

    result = uncertainty_scores(OnlyF(), image, signal="augmentation", n_augmentations=1)
    assert set(result.scores) == set(np.unique(result.segments).tolist()) - {0}
    with pytest.raises(SpocoInputError, match="no momentum network"):
        uncertainty_scores(OnlyF(), image, signal="momentum")


def test_bad_signal_settings_are_input_errors():
    image, labels = blobs()
    trainer = Trainer([(image, labels)], tiny(iterations=0, autosave_seconds=None))
    with pytest.raises(SpocoInputError, match="Unknown uncertainty signal 'entropy'"):
        uncertainty_scores(trainer, image, signal="entropy")
    with pytest.raises(SpocoInputError, match="n_augmentations must be at least 1"):
        augmentation_instability(trainer.model, image, np.zeros(image.shape, np.uint32),
                                 settings_for(trainer), n_augmentations=0)
    with pytest.raises(SpocoInputError, match="differ in shape"):
        augmentation_instability(trainer.model, image, np.zeros((5, 5), np.uint32),
                                 settings_for(trainer))
