"""The foreground head: which pixels belong to any object, learned from the known pixels only.

SPOCO's embeddings separate objects from each other, but the background of a nuclei image is
one large, weakly compact "object" that clustering cuts into many small pieces (issue 9: 40-54
background fragments per image, SBD 0.49 where Otsu + watershed gets 0.82). A one-channel head
beside the embeddings, trained with a class-balanced binary cross-entropy on the pixels whose
class is known, tells clustering where to work:

- labeled objects are foreground;
- painted background (``background_id``), and label 0 in dense mode, are background;
- unlabeled pixels right next to a labeled object (``RING_WIDTH``) are background, so the head
  learns where objects end although strokes keep away from them; other unlabeled pixels
  (0 in sparse mode) and ``ignore_id`` take no part.

The classes weigh alike whatever their pixel counts, so a few strokes are enough.
Without any known background the head only sees foreground and learns nothing useful: the
checkpoint's annotation summary records that (``background_known``) and segmentation then
clusters every pixel (see ``core/inference/segmentation.py``).
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


#: Unlabeled pixels this close (pixels, in-plane) to a labeled object count as background.
RING_WIDTH = 1


def object_rings(is_object: torch.Tensor, candidates: torch.Tensor, width: int) -> torch.Tensor:
    """The ``candidates`` within ``width`` pixels (in-plane, square) of a labeled object.

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
    return (grown[:, 0] > 0) & candidates


def foreground_loss(logits: torch.Tensor, labels, mode: str, background_id=None,
                    ignore_id=None, ring_width: int = RING_WIDTH) -> torch.Tensor:
    """Class-balanced binary cross-entropy of the foreground logits on the known pixels.

    Labeled objects (target 1) and known background (target 0) weigh alike whatever their
    pixel counts; the ring of ``ring_width`` pixels around each labeled object, unlabeled or
    known background, is background too, each ring pixel weighing like an object pixel. Why
    the ring: painted strokes keep away from the objects, so without it the head never sees
    background next to an object and grows every object by 3-4 pixels (StarDist nuclei,
    docs/method.md); in dense mode class balancing gives each background pixel less weight
    than an object pixel, which pushes the outline outwards too. A painted object ends where
    its outline ends: the pixel beside it is background or, rarely for nuclei, an unlabeled
    neighbour, whose segment still counts as foreground by its mean. Other unlabeled pixels
    take no part.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, *spatial)`` foreground logits.
    labels : torch.Tensor or numpy.ndarray
        ``(B, *spatial)`` integer labels in the training convention (``mode``, ids).
    ring_width : int
        Width of the ring; 0 leaves every unlabeled pixel out.

    Returns
    -------
    torch.Tensor
        0-d: the weighted mean of the per-class mean losses over the classes present (0 when
        no pixel is known, still attached to the graph).
    """
    labels = torch.as_tensor(labels).to(logits.device)
    is_object, known = foreground_targets(labels, mode, background_id, ignore_id)
    # The ring: pixels just outside labeled objects, unlabeled or known background alike
    # (dense mode: the background's edge, which class balancing would otherwise outweigh
    # pixel for pixel and push the outline outwards).
    outside = ~is_object
    if ignore_id is not None:
        outside = outside & (labels != int(ignore_id))
    ring = object_rings(is_object, outside, ring_width)
    per_pixel = F.binary_cross_entropy_with_logits(
        logits, is_object.to(logits.dtype), reduction="none")
    # Objects and known background weigh alike whatever their pixel counts; a ring pixel
    # weighs like an object pixel, so that the pixels on either side of an outline pull
    # equally (as a class of its own the thin ring outweighed the objects' border pixels per
    # pixel 5:1 and shrank unlabeled dim nuclei away).
    n_object = is_object.sum()
    parts = [(is_object, 1.0), (known & ~is_object & ~ring, 1.0)]
    if n_object > 0:
        parts.append((ring, ring.sum() / n_object))
    total, weights = logits.sum() * 0.0, 0.0
    for members, weight in parts:
        count = members.sum()
        if count > 0:
            total = total + weight * per_pixel[members].sum() / count
            weights = weights + weight
    return total / weights if weights > 0 else total


def foreground_probability(logits: np.ndarray) -> np.ndarray:
    """Sigmoid of foreground logits as float32 (numerically safe for large magnitudes)."""
    logits = np.asarray(logits, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)
