"""The per-segment f/g uncertainty and the choice of the object to paint next."""

import numpy as np
import pytest
from training_support import blobs, tiny

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.inference.uncertainty import (
    embedding_disagreement,
    segment_means,
    segmentation_disagreement,
    suggest_next,
    uncertainty_scores,
)
from napari_spoco.core.training import Trainer


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
