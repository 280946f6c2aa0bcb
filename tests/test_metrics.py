"""Metrics on hand-computed cases and against scikit-image / brute-force definitions."""

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error as skimage_are
from skimage.metrics import variation_of_information

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.evaluation import metrics

# gt objects: g1 = pixels 0-3, g2 = 4-5; seg objects: s3 = 0-2, s4 = 4-6, s5 = 7
GT = np.array([[1, 1, 1, 1, 2, 2, 0, 0]])
SEG = np.array([[3, 3, 3, 0, 4, 4, 4, 5]])


def test_sbd_by_hand():
    # Dice(g1, s3) = 6/7, Dice(g2, s4) = 4/5, s5 overlaps nothing
    bd_gt = (6 / 7 + 4 / 5) / 2
    bd_seg = (6 / 7 + 4 / 5 + 0) / 3
    assert metrics.sbd(GT, SEG) == pytest.approx(min(bd_gt, bd_seg))
    assert metrics.sbd(SEG, GT) == pytest.approx(min(bd_gt, bd_seg))
    assert metrics.sbd(GT, GT * 7) == 1.0


def test_average_precision_by_hand():
    # IoU(g1, s3) = 3/4, IoU(g2, s4) = 2/3
    assert metrics.matching_counts(GT, SEG, 0.5) == (2, 1, 0)
    assert metrics.average_precision(GT, SEG, 0.5) == pytest.approx(2 / 3)
    assert metrics.average_precision(GT, SEG, 0.7) == pytest.approx(1 / 4)
    assert metrics.average_precision(GT, SEG, 0.8) == 0.0
    # tau 0.5-0.65: 2/3; 0.7-0.75: 1/4; 0.8-0.95: 0
    assert metrics.mean_average_precision(GT, SEG) == pytest.approx((4 * 2 / 3 + 2 / 4) / 10)


def test_iou_of_exactly_half_matches_one_to_one():
    gt = np.array([[1, 1, 1, 1]])
    seg = np.array([[1, 1, 2, 2]])  # both halves have IoU 0.5 with the gt object
    assert metrics.matching_counts(gt, seg, 0.5) == (1, 1, 0)
    assert metrics.average_precision(gt, seg, 0.5) == pytest.approx(1 / 2)


def test_low_threshold_matching_maximises_true_positives():
    gt = np.array([[1, 1, 1, 1, 2, 2]])
    seg = np.array([[2, 1, 1, 1, 1, 0]])
    # eligible at 0.2: (g1, s1) 0.6, (g1, s2) 0.25, (g2, s1) 0.2; greedy by IoU would match
    # only g1-s1, the best one-to-one matching has g1-s2 and g2-s1
    assert metrics.matching_counts(gt, seg, 0.2) == (2, 0, 0)
    assert metrics.average_precision(gt, seg, 0.2) == 1.0


def test_dic_counts_objects():
    assert metrics.dic(GT, SEG) == 1
    assert metrics.mean_dic([GT, GT], [SEG, GT]) == 0.5
    with pytest.raises(SpocoInputError, match="as many"):
        metrics.mean_dic([GT], [])


def test_empty_images():
    empty = np.zeros((3, 3), int)
    full = np.ones((3, 3), int)
    assert metrics.sbd(empty, empty) == 1.0
    assert metrics.average_precision(empty, empty) == 1.0
    assert metrics.sbd(empty, full) == 0.0
    assert metrics.average_precision(full, empty) == 0.0
    assert metrics.mean_average_precision(full, empty) == 0.0


def _brute_force_sbd(gt, seg):
    def dice(a, b):
        return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())

    def bd(a, b):
        return np.mean([max([dice(a == i, b == j) for j in np.unique(b[b > 0])] or [0])
                        for i in np.unique(a[a > 0])])

    return min(bd(gt, seg), bd(seg, gt))


@pytest.mark.parametrize("seed", range(4))
def test_sbd_and_ap_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt = np.repeat(np.repeat(rng.integers(0, 6, (4, 4)), 3, 0), 3, 1)
    seg = gt.copy()
    flip = rng.random(gt.shape) < 0.3
    seg[flip] = rng.integers(0, 8, flip.sum())
    assert metrics.sbd(gt, seg) == pytest.approx(_brute_force_sbd(gt, seg))
    ious = [
        (np.logical_and(gt == i, seg == j).sum() / np.logical_or(gt == i, seg == j).sum())
        for i in np.unique(gt[gt > 0]) for j in np.unique(seg[seg > 0])
    ]
    tp = sum(iou >= 0.6 for iou in ious)  # above 0.5 every match is unique
    n_gt, n_seg = len(np.unique(gt[gt > 0])), len(np.unique(seg[seg > 0]))
    assert metrics.average_precision(gt, seg, 0.6) == pytest.approx(tp / (n_gt + n_seg - tp))


@pytest.mark.parametrize("shape,n_gt,n_seg,large_ids", [
    ((30, 40), 5, 9, False), ((6, 20, 20), 40, 30, False), ((50, 50), 12, 12, True),
])
def test_adapted_rand_and_voi_match_scikit_image(shape, n_gt, n_seg, large_ids):
    rng = np.random.default_rng(n_gt)
    gt = rng.integers(0, n_gt, shape)
    seg = (gt * 3 + rng.integers(0, 2, shape)) % n_seg
    ours = seg.astype(np.uint64) * np.uint64(2**40) if large_ids else seg  # same partition
    for ignore in [(0,), ()]:
        assert metrics.adapted_rand_error(gt, ours, ignore_labels=ignore) == pytest.approx(
            skimage_are(gt, seg, ignore_labels=ignore)[0]
        )
        split, merge = metrics.voi(gt, ours, ignore_labels=ignore)
        expected = variation_of_information(gt, seg, ignore_labels=ignore)
        assert (split, merge) == pytest.approx(tuple(expected))


def test_voi_split_and_merge_directions():
    gt = np.array([[1, 1, 2, 2]])
    split_only = np.array([[1, 2, 3, 3]])  # gt object 1 cut in two
    merge_only = np.array([[1, 1, 1, 1]])  # both gt objects in one segment
    assert metrics.voi(gt, split_only) == pytest.approx((0.5, 0.0))
    assert metrics.voi(gt, merge_only) == pytest.approx((0.0, 1.0))


def test_evaluate_agrees_with_each_metric():
    rng = np.random.default_rng(3)
    gt = np.repeat(rng.integers(0, 9, (10, 10)), 4, 0)
    seg = np.where(rng.random(gt.shape) < 0.1, rng.integers(0, 9, gt.shape), gt)
    result = metrics.evaluate(gt, seg)
    assert result["sbd"] == pytest.approx(metrics.sbd(gt, seg))
    assert result["dic"] == metrics.dic(gt, seg)
    assert result["ap50"] == pytest.approx(metrics.average_precision(gt, seg))
    assert result["map"] == pytest.approx(metrics.mean_average_precision(gt, seg))
    assert result["adapted_rand_error"] == pytest.approx(metrics.adapted_rand_error(gt, seg))
    assert (result["voi_split"], result["voi_merge"]) == pytest.approx(metrics.voi(gt, seg))
    assert result["n_gt"] == metrics.count_objects(gt)


@pytest.mark.parametrize("gt,seg,match", [
    (np.zeros((2, 2), int), np.zeros((2, 3), int), "same shape"),
    (np.zeros((2, 2)), np.zeros((2, 2), int), "integer labels"),
    (np.zeros((2, 2), int), -np.ones((2, 2), int), "negative"),
])
def test_bad_inputs(gt, seg, match):
    with pytest.raises(SpocoInputError, match=match):
        metrics.evaluate(gt, seg)
