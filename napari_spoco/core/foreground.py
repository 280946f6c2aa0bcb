"""The foreground head: which pixels belong to any object, learned from the known pixels only.

SPOCO's embeddings separate objects from each other, but the background of a nuclei image is
one large, weakly compact "object" that clustering cuts into many small pieces (issue 9: 40-54
background fragments per image, SBD 0.49 where Otsu + watershed gets 0.82). A one-channel head
beside the embeddings, trained with a class-balanced binary cross-entropy on the pixels whose
class is known, tells clustering where to work:

- labeled objects are foreground;
- painted background (``background_id``), and label 0 in dense mode, are background;
- unlabeled pixels (0 in sparse mode) and ``ignore_id`` take no part.

Both classes weigh half whatever their pixel counts, so a few background strokes are enough.
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


def foreground_loss(logits: torch.Tensor, labels, mode: str, background_id=None,
                    ignore_id=None) -> torch.Tensor:
    """Class-balanced binary cross-entropy of the foreground logits on the known pixels.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, *spatial)`` foreground logits.
    labels : torch.Tensor or numpy.ndarray
        ``(B, *spatial)`` integer labels in the training convention (``mode``, ids).

    Returns
    -------
    torch.Tensor
        0-d: the mean of the per-class mean losses over the classes present (0 when no pixel
        is known, still attached to the graph).
    """
    labels = torch.as_tensor(labels).to(logits.device)
    is_object, known = foreground_targets(labels, mode, background_id, ignore_id)
    per_pixel = F.binary_cross_entropy_with_logits(
        logits, is_object.to(logits.dtype), reduction="none")
    total, classes = logits.sum() * 0.0, 0
    for members in (is_object, known & ~is_object):
        count = members.sum()
        if count > 0:
            total = total + per_pixel[members].sum() / count
            classes += 1
    return total / max(classes, 1)


def foreground_probability(logits: np.ndarray) -> np.ndarray:
    """Sigmoid of foreground logits as float32 (numerically safe for large magnitudes)."""
    logits = np.asarray(logits, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)
