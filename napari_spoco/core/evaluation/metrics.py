"""Instance segmentation metrics: SBD, |DiC|, AP / mAP, adapted Rand error, VOI.

Label 0 is "no object" everywhere. Everything is computed from one sparse contingency table of
(gt, seg) label pairs, so the cost is one pass over the pixels plus work per pair of
overlapping objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import SpocoInputError

AP_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


@dataclass(frozen=True)
class Contingency:
    """Counts of every overlapping (gt, seg) label pair, label 0 included.

    ``gt_ids``/``seg_ids`` are the sorted distinct labels (0 first when present);
    ``pair_gt``/``pair_seg`` index into them and ``counts`` holds the pixels of each pair.
    """

    gt_ids: np.ndarray
    seg_ids: np.ndarray
    pair_gt: np.ndarray
    pair_seg: np.ndarray
    counts: np.ndarray

    def sizes(self, side: str) -> np.ndarray:
        index, ids = (self.pair_gt, self.gt_ids) if side == "gt" else (self.pair_seg, self.seg_ids)
        return np.bincount(index, weights=self.counts, minlength=ids.size)

    def objects(self) -> "Overlaps":
        """Restrict to objects (label 0 dropped on both sides)."""
        gt_sizes, seg_sizes = self.sizes("gt"), self.sizes("seg")
        gt_start = int(self.gt_ids.size > 0 and self.gt_ids[0] == 0)
        seg_start = int(self.seg_ids.size > 0 and self.seg_ids[0] == 0)
        both = (self.pair_gt >= gt_start) & (self.pair_seg >= seg_start)
        return Overlaps(
            self.gt_ids[gt_start:], gt_sizes[gt_start:],
            self.seg_ids[seg_start:], seg_sizes[seg_start:],
            self.pair_gt[both] - gt_start, self.pair_seg[both] - seg_start,
            self.counts[both],
        )

    def without_gt(self, ignore_labels) -> np.ndarray:
        """Pair counts, gt sizes and seg sizes after dropping pixels with an ignored gt."""
        keep = ~np.isin(self.gt_ids[self.pair_gt], np.asarray(ignore_labels))
        counts = self.counts[keep]
        gt_sizes = np.bincount(self.pair_gt[keep], weights=counts, minlength=self.gt_ids.size)
        seg_sizes = np.bincount(self.pair_seg[keep], weights=counts, minlength=self.seg_ids.size)
        return counts, gt_sizes, seg_sizes


@dataclass(frozen=True)
class Overlaps:
    """Sizes of the objects (label 0 excluded) of two label images and of their intersections.

    ``pair_gt``/``pair_seg`` index into ``gt_ids``/``seg_ids``; ``pair_counts`` are the
    intersection sizes.
    """

    gt_ids: np.ndarray
    gt_sizes: np.ndarray
    seg_ids: np.ndarray
    seg_sizes: np.ndarray
    pair_gt: np.ndarray
    pair_seg: np.ndarray
    pair_counts: np.ndarray

    def iou(self) -> np.ndarray:
        union = self.gt_sizes[self.pair_gt] + self.seg_sizes[self.pair_seg] - self.pair_counts
        return self.pair_counts / union

    def dice(self) -> np.ndarray:
        total = self.gt_sizes[self.pair_gt] + self.seg_sizes[self.pair_seg]
        return 2.0 * self.pair_counts / total


def _check_pair(gt, seg) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt)
    seg = np.asarray(seg)
    if gt.shape != seg.shape:
        raise SpocoInputError(
            f"Ground truth {gt.shape} and segmentation {seg.shape} must have the same shape; "
            "compare a segmentation with the ground truth of the same image."
        )
    for name, array in (("ground truth", gt), ("segmentation", seg)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise SpocoInputError(
                f"The {name} must hold integer labels, got dtype {array.dtype}; "
                "convert it with .astype(np.uint32) if it holds whole numbers."
            )
        if array.size and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
            raise SpocoInputError(f"The {name} has negative labels; ids must be >= 0.")
        if array.size and array.dtype == np.uint64 and array.max() > np.iinfo(np.int64).max:
            # the metrics index labels as int64, where such ids would turn negative
            raise SpocoInputError(
                f"The {name} has label ids up to {int(array.max())}, beyond int64; relabel it "
                "with smaller ids (e.g. skimage.segmentation.relabel_sequential)."
            )
    return gt.reshape(-1), seg.reshape(-1)


# below this many possible (gt, seg) pairs a bincount over pair codes beats sorting
_DENSE_PAIR_LIMIT = 1 << 24


def _dense_index(labels: np.ndarray):
    """Distinct labels and each pixel's index among them."""
    top = int(labels.max()) if labels.size else 0
    if top < 1 << 22:
        present = np.bincount(labels, minlength=top + 1) > 0
        ids = np.flatnonzero(present)
        lookup = np.cumsum(present) - 1
        return ids, lookup[labels]
    ids, inverse = np.unique(labels, return_inverse=True)
    return ids, inverse.reshape(-1)


def contingency(gt, seg) -> Contingency:
    """The table of overlapping (gt, seg) label pairs of two label images of the same shape."""
    gt, seg = _check_pair(gt, seg)
    gt = gt.astype(np.int64, copy=False)
    seg = seg.astype(np.int64, copy=False)
    gt_ids, gt_index = _dense_index(gt)
    seg_ids, seg_index = _dense_index(seg)
    n_seg = max(seg_ids.size, 1)
    codes = gt_index * n_seg + seg_index
    if gt_ids.size * n_seg <= _DENSE_PAIR_LIMIT:
        counts = np.bincount(codes, minlength=gt_ids.size * n_seg)
        codes = np.flatnonzero(counts)
        counts = counts[codes]
    else:
        codes, counts = np.unique(codes, return_counts=True)
    return Contingency(gt_ids, seg_ids, codes // n_seg, codes % n_seg, counts.astype(np.float64))


def overlaps(gt, seg) -> Overlaps:
    """Object sizes and intersections of two label images (label 0 is not an object)."""
    return contingency(gt, seg).objects()


def _best_dice(table: Overlaps, side: str) -> np.ndarray:
    """For every object of one side, its best Dice with an object of the other side."""
    index = table.pair_gt if side == "gt" else table.pair_seg
    size = table.gt_ids.size if side == "gt" else table.seg_ids.size
    best = np.zeros(size)
    np.maximum.at(best, index, table.dice())
    return best


def _sbd(table: Overlaps) -> float:
    if table.gt_ids.size == 0 and table.seg_ids.size == 0:
        return 1.0
    if table.gt_ids.size == 0 or table.seg_ids.size == 0:
        return 0.0
    return float(min(_best_dice(table, "gt").mean(), _best_dice(table, "seg").mean()))


def sbd(gt, seg) -> float:
    """Symmetric best Dice: ``min(BD(gt, seg), BD(seg, gt))``.

    ``BD(A, B)`` is the mean over objects of A of their best Dice with an object of B.
    Two empty label images score 1; one empty and one not score 0.

    Parameters
    ----------
    gt, seg : ndarray of int
        Ground truth and segmentation, same shape; 0 is not an object.

    Returns
    -------
    float
    """
    return _sbd(overlaps(gt, seg))


def count_objects(labels) -> int:
    """Number of distinct non-zero ids."""
    return int(np.count_nonzero(np.unique(np.asarray(labels))))


def dic(gt, seg) -> int:
    """Absolute difference in counting, ``|#objects(seg) − #objects(gt)|``."""
    _check_pair(gt, seg)
    return abs(count_objects(seg) - count_objects(gt))


def mean_dic(gts, segs) -> float:
    """|DiC| averaged over pairs of images (the paper's counting score)."""
    gts, segs = list(gts), list(segs)
    if len(gts) != len(segs) or not gts:
        raise SpocoInputError(
            f"Need as many segmentations as ground truths (got {len(segs)} and {len(gts)}), "
            "at least one of each."
        )
    return float(np.mean([dic(gt, seg) for gt, seg in zip(gts, segs)]))


def _matched_count(table: Overlaps, iou_threshold: float) -> int:
    eligible = table.iou() >= iou_threshold
    gt_index, seg_index = table.pair_gt[eligible], table.pair_seg[eligible]
    if iou_threshold > 0.5:
        # IoU > 0.5 with two disjoint objects is impossible: the matching is unique already
        return int(gt_index.size)
    if gt_index.size == 0:
        return 0
    # a maximum-cardinality one-to-one matching among the eligible pairs
    gt_rows, gt_local = np.unique(gt_index, return_inverse=True)
    seg_cols, seg_local = np.unique(seg_index, return_inverse=True)
    cost = np.zeros((gt_rows.size, seg_cols.size))
    cost[gt_local, seg_local] = -1.0
    rows, cols = linear_sum_assignment(cost)
    return int(-cost[rows, cols].sum())


def _check_threshold(iou_threshold: float) -> None:
    if not 0.0 < iou_threshold <= 1.0:
        raise SpocoInputError(f"IoU thresholds must be in (0, 1], got {iou_threshold}.")


def matching_counts(gt, seg, iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """(TP, FP, FN) for a one-to-one matching at ``IoU >= iou_threshold``."""
    _check_threshold(iou_threshold)
    table = overlaps(gt, seg)
    tp = _matched_count(table, iou_threshold)
    return tp, int(table.seg_ids.size - tp), int(table.gt_ids.size - tp)


def _ap(table: Overlaps, iou_threshold: float) -> float:
    n_gt, n_seg = table.gt_ids.size, table.seg_ids.size
    if n_gt == 0 and n_seg == 0:
        return 1.0
    tp = _matched_count(table, iou_threshold)
    return tp / (n_gt + n_seg - tp)


def average_precision(gt, seg, iou_threshold: float = 0.5) -> float:
    """``TP / (TP + FP + FN)`` with one-to-one matching at ``IoU >= iou_threshold``.

    Two empty label images score 1.

    Parameters
    ----------
    gt, seg : ndarray of int
        Ground truth and segmentation, same shape; 0 is not an object.
    iou_threshold : float
        Matching threshold tau in (0, 1].

    Returns
    -------
    float
    """
    _check_threshold(iou_threshold)
    return _ap(overlaps(gt, seg), iou_threshold)


def _map(table: Overlaps, thresholds) -> float:
    return float(np.mean([_ap(table, tau) for tau in thresholds]))


def mean_average_precision(gt, seg, thresholds=AP_THRESHOLDS) -> float:
    """AP averaged over ``tau = 0.5, 0.55, ..., 0.95`` (one contingency table for all)."""
    for tau in thresholds:
        _check_threshold(tau)
    return _map(overlaps(gt, seg), thresholds)


def _adapted_rand_error(table: Contingency, ignore_labels) -> float:
    pairs, gt_sizes, seg_sizes = table.without_gt(ignore_labels)
    same_both = pairs @ pairs - pairs.sum()
    same_gt = gt_sizes @ gt_sizes - gt_sizes.sum()
    same_seg = seg_sizes @ seg_sizes - seg_sizes.sum()
    denominator = 0.5 * (same_gt + same_seg)
    if denominator == 0:
        return 0.0
    return float(1.0 - same_both / denominator)


def adapted_rand_error(gt, seg, ignore_labels=(0,)) -> float:
    """Adapted Rand error (SNEMI3D), as ``skimage.metrics.adapted_rand_error``.

    Pixels whose ground truth is in ``ignore_labels`` (default: 0) are not counted; a
    segmentation label 0 inside the ground truth counts as one more segment.

    Returns
    -------
    float
        ``1 − F-score`` of the pairwise precision and recall; 0 is perfect.
    """
    return _adapted_rand_error(contingency(gt, seg), ignore_labels)


def _entropy(weights: np.ndarray, total: float) -> float:
    p = weights[weights > 0] / total
    return float(-(p * np.log2(p)).sum())


def _voi(table: Contingency, ignore_labels) -> tuple[float, float]:
    pairs, gt_sizes, seg_sizes = table.without_gt(ignore_labels)
    total = pairs.sum()
    if total == 0:
        return 0.0, 0.0
    joint = _entropy(pairs, total)
    split = joint - _entropy(gt_sizes, total)
    merge = joint - _entropy(seg_sizes, total)
    return max(split, 0.0), max(merge, 0.0)


def voi(gt, seg, ignore_labels=(0,)) -> tuple[float, float]:
    """Variation of information split into (split, merge), in bits.

    ``split = H(seg | gt)`` grows when a gt object is cut into several segments,
    ``merge = H(gt | seg)`` when a segment covers several gt objects: the order and values
    of ``skimage.metrics.variation_of_information(gt, seg, ignore_labels=ignore_labels)``.
    Pixels whose ground truth is in ``ignore_labels`` (default: 0) are not counted.

    Returns
    -------
    (float, float)
    """
    return _voi(contingency(gt, seg), ignore_labels)


def evaluate(gt, seg) -> dict:
    """Every metric at once, from one contingency table.

    Returns
    -------
    dict
        ``sbd``, ``dic``, ``ap50`` (AP at IoU 0.5), ``map`` (mean AP over 0.5:0.05:0.95),
        ``adapted_rand_error``, ``voi_split``, ``voi_merge``, ``n_gt``, ``n_seg``.

    Examples
    --------
    One segment over two ground-truth objects:

    >>> gt = np.zeros((8, 8), np.uint32); gt[:4] = 1; gt[4:] = 2
    >>> scores = evaluate(gt, np.ones((8, 8), np.uint32))
    >>> scores["n_gt"], scores["n_seg"], scores["dic"], round(scores["sbd"], 3)
    (2, 1, 1, 0.667)
    >>> sorted(scores)
    ['adapted_rand_error', 'ap50', 'dic', 'map', 'n_gt', 'n_seg', 'sbd', 'voi_merge', 'voi_split']
    """
    table = contingency(gt, seg)
    objects = table.objects()
    split, merge = _voi(table, (0,))
    return {
        "sbd": _sbd(objects),
        "dic": abs(int(objects.seg_ids.size) - int(objects.gt_ids.size)),
        "ap50": _ap(objects, 0.5),
        "map": _map(objects, AP_THRESHOLDS),
        "adapted_rand_error": _adapted_rand_error(table, (0,)),
        "voi_split": split,
        "voi_merge": merge,
        "n_gt": int(objects.gt_ids.size),
        "n_seg": int(objects.seg_ids.size),
    }
