"""The foreground head: which pixels belong to any object, learned from the known pixels only.

SPOCO's embeddings separate objects from each other, but the background of a nuclei image is
one large, weakly compact "object" that clustering cuts into many small pieces (issue 9: 40-54
background fragments per image, SBD 0.49 where Otsu + watershed gets 0.82). A one-channel head
beside the embeddings, trained with a class-balanced binary cross-entropy on the pixels whose
class is known, tells clustering where to work:

- labeled objects are foreground;
- painted background (``background_id``), and label 0 in dense mode, are background;
- unlabeled pixels (0 in sparse mode) are weak background (``UNLABELED_WEIGHT``), so the
  head learns where objects end although strokes keep away from them;
- ``ignore_id`` takes no part.

Both known classes weigh alike whatever their pixel counts, so a few strokes are enough.
Without any known background the head only sees foreground and learns nothing useful: the
checkpoint's annotation summary records that (``background_known``) and segmentation then
clusters every pixel (see ``core/segmentation.py``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Mean probability above which a segment counts as foreground.
FOREGROUND_THRESHOLD = 0.5


def split_output(output: torch.Tensor, foreground: bool):
    """``(embeddings, foreground_logit or None)`` of a network output ``(B, E[+1], ...)``."""
    if not foreground:
        return output, None
    return output[:, :-1], output[:, -1]


def foreground_targets(labels: torch.Tensor, mode: str, background_id=None, ignore_id=None):
    """Boolean ``(is_object, is_known)`` masks of the label tensor's shape.

    Examples
    --------
    >>> labels = torch.tensor([[0, 3, 7]])
    >>> is_object, known = foreground_targets(labels, "sparse", background_id=7)
    >>> is_object.tolist(), known.tolist()
    ([[False, True, False]], [[False, True, True]])
    """
    labels = torch.as_tensor(labels)
    background = labels == 0 if mode == "dense" else torch.zeros_like(labels, dtype=torch.bool)
    if background_id is not None:
        background = background | (labels == int(background_id))
    known = (labels != 0) | background
    if ignore_id is not None:
        known = known & (labels != int(ignore_id))
    return known & ~background, known


#: Weight of the unlabeled pixels (as weak background) beside the two known classes (1 each).
UNLABELED_WEIGHT = 0.25


def object_rings(is_object: torch.Tensor, unlabeled: torch.Tensor, width: int) -> torch.Tensor:
    """Unlabeled pixels within ``width`` pixels (in-plane, square) of a labeled object.

    Examples
    --------
    >>> is_object = torch.tensor([[False, False, True, False, False, False]])
    >>> object_rings(is_object[None], ~is_object[None], 1)[0].int().tolist()
    [[0, 1, 0, 1, 0, 0]]
    """
    if width < 1 or not is_object.any():
        return torch.zeros_like(is_object)
    grown = is_object[:, None].float()
    size = 2 * int(width) + 1
    if grown.ndim == 4:
        grown = F.max_pool2d(grown, size, stride=1, padding=int(width))
    else:  # in-plane only: thin z slices make a 3D ring too thick along z
        grown = F.max_pool3d(grown, (1, size, size), stride=1, padding=(0, width, width))
    return (grown[:, 0] > 0) & unlabeled


def foreground_loss(logits: torch.Tensor, labels, mode: str, background_id=None,
                    ignore_id=None, unlabeled_weight: float = UNLABELED_WEIGHT,
                    ring_width: int = 0) -> torch.Tensor:
    """Class-balanced binary cross-entropy of the foreground logits.

    Labeled objects (target 1) and known background (target 0) weigh 1 each whatever their
    pixel counts. Unlabeled pixels (0 in sparse mode) are weak background: they weigh
    ``unlabeled_weight`` in all. Why: painted background strokes keep away from the objects,
    so without the unlabeled pixels the head never sees background next to an object and
    grows every object by 3-4 pixels (StarDist nuclei). An unlabeled object looks like the
    labeled ones; with a fraction ``u`` of the unlabeled pixels on objects, its pixels settle
    at ``p = 1 / (1 + u * unlabeled_weight)`` (0.93 for u = 0.3), still foreground.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, *spatial)`` foreground logits.
    labels : torch.Tensor or numpy.ndarray
        ``(B, *spatial)`` integer labels in the training convention (``mode``, ids).
    unlabeled_weight : float
        Weight of the unlabeled pixels; 0 ignores them.

    Returns
    -------
    torch.Tensor
        0-d: the weighted mean of the per-class mean losses over the classes present (0 when
        no pixel is known, still attached to the graph).
    """
    labels = torch.as_tensor(labels).to(logits.device)
    is_object, known = foreground_targets(labels, mode, background_id, ignore_id)
    per_pixel = F.binary_cross_entropy_with_logits(
        logits, is_object.to(logits.dtype), reduction="none")
    unlabeled = ~known
    if ignore_id is not None:
        unlabeled = unlabeled & (labels != int(ignore_id))
    ring = object_rings(is_object, unlabeled, ring_width)
    total, weights = logits.sum() * 0.0, 0.0
    if is_object.any() or (known & ~is_object).any():
        for members, weight in ((is_object, 1.0), (known & ~is_object, 1.0), (ring, 1.0),
                                (unlabeled & ~ring, float(unlabeled_weight))):
            count = members.sum()
            if count > 0 and weight > 0:
                total = total + weight * per_pixel[members].sum() / count
                weights += weight
    return total / weights if weights > 0 else total


def foreground_probability(logits: np.ndarray) -> np.ndarray:
    """Sigmoid of foreground logits as float32 (numerically safe for large magnitudes)."""
    logits = np.asarray(logits, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)
