"""Clustering decisions: one core function, the same answer for every front end."""

import argparse

import numpy as np
import pytest
from synthetic_embeddings import make_embeddings
from training_support import blobs, tiny

from napari_spoco.cli.segment import add_parser, settings_from_args
from napari_spoco.core.clustering import segment
from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.evaluation.metrics import evaluate
from napari_spoco.core.inference.segmentation import (
    MIN_SIZE_FRACTION,
    NO_BACKGROUND_NOTE,
    segment_output,
    segmentation_settings,
    settings_for,
    summarize_annotations,
)
from napari_spoco.core.model.checkpoint import load_model
from napari_spoco.core.training import Trainer


def test_annotation_summary_sizes_and_background():
    labels = np.zeros((10, 10), np.uint32)
    labels[0, :4] = 1  # 4 px
    labels[1, :8] = 2  # 8 px
    labels[2:4, :] = 7  # 20 px
    labels[5:, :] = 9  # 50 px of painted background
    summary = summarize_annotations([labels], "sparse", background_id=9)
    assert summary == {"n_objects": 3, "median_object_size": 8.0, "background_known": True}
    assert summarize_annotations([labels], "sparse")["background_known"] is False
    # dense: label 0 is background; with no 0 pixel nothing is known to be background
    assert summarize_annotations([labels], "dense")["background_known"] is True
    assert summarize_annotations([labels + 1], "dense")["background_known"] is False
    assert summarize_annotations([np.zeros((3, 3), int)])["n_objects"] == 0


def test_settings_follow_the_annotations_and_the_network():
    config = {"loss": {"delta_v": 0.4, "delta_d": 1.5}, "anisotropic": True}
    summary = {"median_object_size": 500.0, "background_known": True}
    settings = segmentation_settings(config, {"foreground": True, "ndim": 3}, summary)
    assert (settings.delta_v, settings.delta_d) == (0.4, 1.5)
    assert settings.min_size == int(MIN_SIZE_FRACTION * 500) and settings.fill
    assert settings.use_foreground and settings.params == {"anisotropic": True}
    assert not settings.notes
    # a 2D slice of that 3D model is clustered with 2D neighbourhoods
    assert segmentation_settings(config, {"foreground": True, "ndim": 3}, summary,
                                 ndim=2).params == {}
    # no background painted: the head is not used, and the user is told why
    blind = segmentation_settings(config, {"foreground": True}, {"median_object_size": 500})
    assert not blind.use_foreground and blind.notes == [NO_BACKGROUND_NOTE]
    # no head (old checkpoint): fallback, silently
    old = segmentation_settings(config, {"ndim": 2}, {})
    assert not old.use_foreground and old.min_size == "auto" and not old.notes
    # explicit choices win; None means "not chosen"
    chosen = segmentation_settings(config, {"foreground": True}, summary, min_size=7,
                                   use_foreground=False, fill=None, strides=(2, 2))
    assert chosen.min_size == 7 and not chosen.use_foreground and chosen.fill
    assert chosen.params == {"strides": (2, 2)}
    with pytest.raises(SpocoInputError, match="threshold"):
        segmentation_settings(foreground_threshold=1.5)


def _segment_args(*extra):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["segment", "--checkpoint", "m.pt", "--image", "x.tif",
                              "--out", "s.tif", *extra])


def test_cli_settings_are_the_core_decision(tmp_path):
    image, truth = blobs()
    painted = truth.copy()
    painted[40:44, 40:46] = 99
    trainer = Trainer([(image, painted)], tiny(iterations=0, background_id=99))
    trainer.save(tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    expected = settings_for(trainer)
    assert settings_for(loaded) == expected  # what the checkpoint remembers = the trainer
    assert expected.use_foreground and expected.min_size == int(MIN_SIZE_FRACTION * 144)
    assert settings_from_args(_segment_args(), loaded, 2) == expected
    chosen = settings_from_args(_segment_args("--min-size", "5", "--no-foreground"), loaded, 2)
    assert chosen.min_size == 5 and not chosen.use_foreground


def test_default_segment_of_trained_like_embeddings_needs_no_option():
    embeddings, truth = make_embeddings((192, 192), 30, boundary_blur=0.7, seed=0)
    scores = evaluate(truth, segment(embeddings))
    assert scores["sbd"] >= 0.9 and abs(scores["n_seg"] - 30) <= 2


def test_background_region_does_not_become_fragments():
    embeddings, truth = make_embeddings((160, 160), 25, boundary_blur=0.7, seed=1)
    rng = np.random.default_rng(0)
    # a third of the image is background: a weakly compact "object" with large noise
    background = np.zeros(truth.shape, bool)
    background[:, :55] = True
    embeddings[:, background] = rng.normal(0, 1.2, (embeddings.shape[0], background.sum()))
    truth = np.where(background, 0, truth)
    n_objects = np.unique(truth[truth > 0]).size
    foreground = np.clip(np.where(background, 0.2, 0.9) + rng.normal(0, 0.15, truth.shape), 0, 1)
    plain = segment(embeddings)
    assert np.unique(plain[background]).size > 5  # without the foreground: fragments
    settings = segmentation_settings(None, {"foreground": True},
                                     {"median_object_size": float(np.median(
                                         np.bincount(truth.ravel())[1:][
                                             np.bincount(truth.ravel())[1:] > 0])),
                                      "background_known": True})
    labels = segment_output(embeddings, foreground, settings)
    n_segments = np.unique(labels[labels > 0]).size
    assert n_objects <= n_segments + 1 and n_segments <= n_objects + 2
    assert (labels[background] == 0).mean() > 0.9
    assert evaluate(truth, labels)["sbd"] > 0.85


def test_objects_with_one_embedding_across_a_background_gap_are_two_segments():
    # Two nuclei whose (unlabeled, hence pulled together) embeddings are the same and a thin
    # gap of background between them whose embeddings are close too: mutex watershed makes
    # one segment of all three; the foreground cuts it into the two objects.
    truth = np.zeros((40, 60), np.int64)
    truth[10:30, 8:28], truth[10:30, 31:51] = 1, 2
    rng = np.random.default_rng(0)
    embeddings = rng.normal(0, 0.05, (4, *truth.shape)).astype(np.float32)
    embeddings[0, truth == 0] += 3.0
    embeddings[0, :, 28:31] = 0.3  # the gap looks like the objects
    foreground = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
    settings = segmentation_settings(None, {"foreground": True},
                                     {"median_object_size": 400, "background_known": True})
    labels = segment_output(embeddings, foreground, settings)
    assert np.unique(segment(embeddings, min_size=50)[10:30, 8:51]).size == 1
    assert np.unique(labels[truth > 0]).size == 2 and not labels[truth == 0].any()
    assert evaluate(truth, labels)["sbd"] == 1.0


def test_a_small_object_alone_in_the_background_is_kept_and_a_fragment_is_not():
    truth = np.zeros((40, 70), np.int64)
    truth[5:35, 5:35] = 1  # 900 pixels, like the painted objects
    truth[15:23, 50:58] = 2  # 64 pixels: a small nucleus, alone in the background
    rng = np.random.default_rng(1)
    embeddings = rng.normal(0, 0.05, (4, *truth.shape)).astype(np.float32)
    embeddings[0, truth == 0] += 3.0
    embeddings[1, truth == 2] += 3.0
    embeddings[2, 5:12, 5:12] += 3.0  # a 49-pixel fragment inside object 1
    foreground = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
    settings = segmentation_settings(None, {"foreground": True},
                                     {"median_object_size": 900, "background_known": True})
    assert 49 < 64 < settings.min_size == 180
    labels = segment_output(embeddings, foreground, settings)
    assert evaluate(truth, labels)["sbd"] == 1.0  # the nucleus kept, the fragment filled
    tiny = np.where(truth == 2, 0.9, 0.1).astype(np.float32)
    tiny[15:23, 50:58], tiny[18:21, 52:55] = 0.1, 0.9  # now 9 pixels: a speck, removed
    speck = segment_output(embeddings, np.maximum(tiny, (truth == 1) * 0.9), settings)
    assert np.unique(speck).tolist() == [0, 1]


def test_hdbscan_and_meanshift_without_foreground_carry_a_note():
    with_background = {"median_object_size": 300, "background_known": True}
    no_background = {"median_object_size": 300, "background_known": False}
    for method in ("hdbscan", "meanshift"):
        fine = segmentation_settings({}, {"foreground": True}, with_background, method=method)
        assert fine.use_foreground and not fine.notes
        whole = segmentation_settings({}, {"foreground": False}, no_background, method=method)
        assert any("distant objects" in note for note in whole.notes)
    assert not segmentation_settings({}, {"foreground": False}, no_background).notes
