"""HDBSCAN, mean-shift and consistency clustering of embeddings with known clusters."""

import numpy as np
import pytest
from sklearn.cluster import MeanShift
from synthetic_embeddings import make_embeddings

from napari_spoco.core.clustering import segment
from napari_spoco.core.clustering.consistency import consistent_clusters
from napari_spoco.core.clustering.hdbscan_clustering import hdbscan_labels
from napari_spoco.core.clustering.meanshift import bin_seeds, mean_shift_centers


def same_partition(a, b):
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    pairs = np.unique(np.stack([a, b]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


def test_hdbscan_subsample_fast_path_matches_full_fit():
    emb, truth = make_embeddings((48, 48), 5, noise=0.3, boundary_blur=0.5, seed=2)
    full = hdbscan_labels(emb, min_cluster_size=60, max_samples=None)
    fast = hdbscan_labels(emb, min_cluster_size=60, max_samples=800, seed=1)
    assert np.unique(full[full > 0]).size == 5
    assert same_partition(fast, full)


def test_hdbscan_noise_zero_or_filled():
    emb, truth = make_embeddings((40, 40), 4, noise=0.1, boundary_blur=0, seed=3)
    # a few pixels far from every cluster: noise
    emb[:, 5, 5:8] = np.array([30.0] + [0.0] * 15)[:, None] + np.arange(3) * 3.0
    labels = segment(emb, "hdbscan", min_size=50, fill=False)
    assert (labels[5, 5:8] == 0).all()
    keep = np.ones_like(truth, bool)
    keep[5, 5:8] = False
    assert same_partition(labels[keep], truth[keep])
    filled = segment(emb, "hdbscan", min_size=50, noise="fill")
    assert (filled > 0).all()
    assert (filled[5, 5:8] == filled[5, 4]).all()


def test_meanshift_centers_match_scikit_learn_with_the_same_seeds():
    rng = np.random.default_rng(1)
    centers = rng.normal(0, 2, (5, 4))
    points = np.concatenate([c + rng.normal(0, 0.15, (60, 4)) for c in centers])
    points = np.concatenate([points, rng.uniform(-4, 4, (15, 4))]).astype(np.float32)
    seeds = bin_seeds(points, 0.5)
    reference = MeanShift(bandwidth=0.5, seeds=seeds).fit(points)
    ours = mean_shift_centers(points, 0.5)
    assert ours.shape == reference.cluster_centers_.shape
    np.testing.assert_allclose(ours, reference.cluster_centers_, atol=1e-5)


def test_bin_seeds_are_the_means_of_occupied_bins():
    points = np.array([[0.1, 0.1], [0.2, 0.0], [1.1, 1.0], [1.0, 0.9], [0.9, 1.2]])
    seeds = bin_seeds(points, 1.0)
    expected = [[0.15, 0.05], [1.0, 31 / 30]]
    np.testing.assert_allclose(sorted(seeds.tolist()), expected)
    assert bin_seeds(points, 1.0, min_bin_freq=3).tolist() == [pytest.approx([1.0, 31 / 30])]


@pytest.mark.parametrize("shape", [(48, 48), (8, 24, 24)])
def test_meanshift_recovers_well_separated_clusters(shape):
    emb, truth = make_embeddings(shape, 6, noise=0.1, boundary_blur=0, seed=4)
    # min_size=0: the 28-pixel cell is real here, not a fragment the default would remove
    labels = segment(emb, "meanshift", max_samples=1500, min_size=0)
    assert same_partition(labels, truth)


def test_consistency_drops_the_cluster_g_does_not_confirm():
    truth = np.zeros((20, 30), int)
    truth[:, 10:24] = 1  # 280 pixels
    truth[:, 24:] = 2  # 120 pixels
    rng = np.random.default_rng(0)
    centers_f = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    # in g, object 2 sits on object 1: each g-ball of an anchor of 2 covers 1 and 2
    centers_g = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])

    def embed(centers):
        emb = np.moveaxis(centers[truth], -1, 0)
        return (emb + rng.normal(0, 0.03, emb.shape)).astype(np.float32)

    emb_f, emb_g = embed(centers_f), embed(centers_g)
    # IoU(2, ball) = 120/400 = 0.3 < 0.6: dropped; IoU(1, ball) = 280/400 = 0.7: kept
    labels = segment(emb_f, "consistency", embeddings_g=emb_g)
    assert (labels[truth == 2] == 0).all()
    assert same_partition(labels, np.where(truth == 2, 0, truth + 1))
    # a stricter threshold drops object 1 too
    strict = consistent_clusters(truth + 1, emb_g, iou_threshold=0.75)
    assert set(np.unique(strict)) == {0, 1}


def test_consistency_keeps_everything_when_views_agree():
    emb, truth = make_embeddings((40, 40), 4, noise=0.1, boundary_blur=0, seed=9)
    labels = segment(emb, "consistency", embeddings_g=emb.copy(), n_anchors=20)
    assert same_partition(labels, truth)


@pytest.mark.parametrize("method", ["hdbscan", "meanshift"])
def test_foreground_components_separate_distant_objects_with_the_same_mean(method):
    # Four squares on a background. The two far-apart squares share one mean embedding (the
    # loss never pushed them apart, as in a real image); the touching pair differ.
    rng = np.random.default_rng(0)
    truth = np.zeros((64, 64), np.int64)
    truth[4:20, 4:20], truth[44:60, 44:60] = 1, 2
    truth[4:20, 40:52], truth[4:20, 52:62] = 3, 4
    means = np.array([[0, 0, 0], [0, 0, 3], [0, 0, 3], [3, 0, 0], [0, 3, 0]], np.float32)
    emb = means[truth].transpose(2, 0, 1) + rng.normal(0, 0.05, (3, 64, 64)).astype(np.float32)
    foreground = (truth > 0).astype(np.float32) * 0.9 + 0.05
    whole = segment(emb, method, min_size=50, mask=truth > 0)
    assert whole[10, 10] == whole[50, 50]  # one cluster for two distant objects
    labels = segment(emb, method, min_size=50, foreground=foreground)
    assert (labels[truth == 0] == 0).all()
    assert same_partition(labels[truth > 0], truth[truth > 0])
