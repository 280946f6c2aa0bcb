"""CRAC (Liu et al., ICCV 2023): two affinity maps of one image, made consistent.

- The **implicit** affinity map is computed from f's pixel embeddings with the same function
  the mutex watershed uses on embeddings (``clustering.affinities``):
  ``a = max(1 − ‖e_i − e_j‖ / (2 delta_d), 0)²``.
- The **explicit** affinity map is predicted directly by the network's affinity head
  (``UNet(affinity_channels=...)``), one sigmoid channel per offset of
  ``clustering.affinities.default_edge_layout``, so training and mutex watershed inference
  use the same edges.

Both are supervised on the pixel pairs the labels decide; on the other pairs each map is
pulled towards the other, but only where the other is confident (low binary entropy).
Decisions and their reasons: docs/method.md, "CRAC".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..clustering.affinities import default_edge_layout
from ..errors import SpocoInputError

METHODS = ("spoco", "crac", "both")


@dataclass
class CracSettings:
    """Weights and confidence schedule of the CRAC loss (see :class:`CracLoss`)."""

    w_explicit: float = 1.0
    w_implicit: float = 1.0
    w_consistency: float = 0.1
    alpha0: float = 0.05
    alpha_power: float = 1.5

    def validate(self) -> list:
        problems = []
        for name in ("w_explicit", "w_implicit", "w_consistency"):
            if not getattr(self, name) >= 0:
                problems.append(f"crac.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.alpha0 < 1.0:
            problems.append(f"crac.alpha0 must be in [0, 1), got {self.alpha0}")
        if not self.alpha_power > 0:
            problems.append(f"crac.alpha_power must be > 0, got {self.alpha_power}")
        return problems


def edge_offsets(ndim: int, anisotropic: bool = False) -> tuple:
    """The affinity head's offsets: the mutex watershed's default edge layout."""
    return default_edge_layout(ndim, anisotropic).offsets


def _pair_slices(shape, offset):
    """Slices of ``(B, C, *shape)`` tensors for pixels ``p`` and ``p + offset`` (both inside)."""
    source, target = [slice(None), slice(None)], [slice(None), slice(None)]
    for size, shift in zip(shape, offset):
        start = max(0, -shift)
        stop = max(start, size - max(0, shift))  # an offset longer than the axis: no pair
        source.append(slice(start, stop))
        target.append(slice(start + shift, stop + shift))
    return tuple(source), tuple(target)


def affinity_targets(labels: torch.Tensor, offsets, mode: str = "sparse",
                     background_id: int | None = None, ignore_id: int | None = None):
    """Per offset: target affinity (1 same object, 0 different) and whether it is known.

    Parameters
    ----------
    labels : Tensor
        ``(B, *spatial)`` integer labels; in sparse mode 0 = unlabeled.
    offsets : sequence of tuple of int
    mode, background_id, ignore_id
        The label convention of the run (``TrainingData``).

    Returns
    -------
    list of (Tensor, Tensor)
        For each offset, ``(target, known)`` of shape ``(B, *valid)`` (the pixels whose
        partner lies inside), float and bool.

    Notes
    -----
    A pair is known when both pixels are labeled, or when one belongs to a labeled object and
    the other is unlabeled: sparse labels paint whole objects, so an unlabeled pixel is not part
    of that object (affinity 0). Pixels with ``ignore_id`` make every pair they are in unknown.

    Examples
    --------
    >>> labels = torch.tensor([[[1, 1, 0, 2]]])
    >>> [(t.tolist(), k.tolist()) for t, k in affinity_targets(labels, [(0, 1)])]
    [([[[1.0, 0.0, 0.0]]], [[[True, True, True]]])]
    """
    spatial = labels.shape[1:]
    labels = labels.unsqueeze(1)
    labeled = torch.ones_like(labels, dtype=torch.bool) if mode == "dense" else labels != 0
    if ignore_id is not None:
        labeled &= labels != ignore_id
    is_object = labeled & (labels != 0)
    if background_id is not None:
        is_object &= labels != background_id
    ignored = (labels == ignore_id) if ignore_id is not None else torch.zeros_like(labeled)
    out = []
    for offset in offsets:
        source, target = _pair_slices(spatial, offset)
        same = (labels[source] == labels[target]).float()
        known = (labeled[source] & labeled[target]) | (is_object[source] & ~labeled[target]) \
            | (is_object[target] & ~labeled[source])
        known &= ~(ignored[source] | ignored[target])
        out.append((same[:, 0], known[:, 0]))
    return out


def implicit_affinities(embeddings: torch.Tensor, offsets, delta_d: float) -> list:
    """``max(1 − d/(2 delta_d), 0)²`` per offset from ``(B, E, *spatial)`` embeddings."""
    spatial = embeddings.shape[2:]
    out = []
    for offset in offsets:
        source, target = _pair_slices(spatial, offset)
        squared = (embeddings[source] - embeddings[target]).pow(2).sum(1)
        # the epsilon keeps the gradient of the square root finite at d = 0
        distance = torch.sqrt(squared + 1e-8)
        out.append(torch.clamp(1.0 - distance / (2.0 * delta_d), min=0.0).pow(2))
    return out


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of a Bernoulli probability, 0 at p = 0 or 1, log 2 at p = 0.5."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log(p) + (1 - p) * torch.log(1 - p))


def confident(p: torch.Tensor, candidates: torch.Tensor, alpha: float) -> torch.Tensor:
    """Candidates whose entropy is not among the top ``alpha`` fraction (the uncertain ones).

    Examples
    --------
    >>> p = torch.tensor([0.01, 0.5, 0.99, 0.6])
    >>> confident(p, torch.ones(4, dtype=torch.bool), 0.5).tolist()
    [True, False, True, False]
    """
    if alpha <= 0 or not candidates.any():
        return candidates
    entropy = binary_entropy(p.detach())
    threshold = torch.quantile(entropy[candidates].float(), 1.0 - alpha)
    return candidates & (entropy < threshold)


class CracLoss:
    """Supervised and cross-consistency terms of the implicit and explicit affinity maps.

    Parameters
    ----------
    offsets : sequence of tuple of int
        Edge offsets, one per affinity-head channel.
    delta_d : float
        Push margin defining the implicit affinity (as at segmentation).
    settings : CracSettings, optional
    mode, background_id, ignore_id
        Label convention.

    Notes
    -----
    ``forward`` returns ``(total, terms)`` with unweighted 0-d terms ``aff_exp`` (BCE of the
    explicit map on known pairs), ``aff_imp`` (MSE of the implicit map on known pairs) and
    ``aff_con`` (on unknown pairs: MSE of each map to the other, detached, where the other is
    confident). The confident fraction grows as ``alpha_t = alpha0 (1 − t/T)^alpha_power``.

    Examples
    --------
    >>> offsets = [(0, 1), (1, 0)]
    >>> loss = CracLoss(offsets, delta_d=2.0)
    >>> labels = torch.zeros(1, 8, 8, dtype=torch.long); labels[0, :4] = 1
    >>> total, terms = loss(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), labels)
    >>> sorted(terms)
    ['aff_con', 'aff_exp', 'aff_imp']
    """

    def __init__(self, offsets, delta_d: float = 2.0, settings: CracSettings | None = None,
                 mode: str = "sparse", background_id: int | None = None,
                 ignore_id: int | None = None):
        self.offsets = tuple(tuple(int(v) for v in o) for o in offsets)
        self.delta_d = float(delta_d)
        self.settings = settings or CracSettings()
        problems = self.settings.validate()
        if problems:
            raise SpocoInputError("Invalid CRAC settings: " + "; ".join(problems) + ".")
        self.mode, self.background_id, self.ignore_id = mode, background_id, ignore_id

    def alpha(self, iteration: int, iterations: int) -> float:
        """Fraction of the most uncertain unknown pairs left out of the consistency term."""
        progress = min(max(iteration / max(iterations, 1), 0.0), 1.0)
        return self.settings.alpha0 * (1.0 - progress) ** self.settings.alpha_power

    def __call__(self, embeddings, affinity_logits, labels, iteration: int = 0,
                 iterations: int = 1):
        if affinity_logits.shape[1] != len(self.offsets):
            raise SpocoInputError(
                f"The affinity head has {affinity_logits.shape[1]} channels but CRAC uses "
                f"{len(self.offsets)} offsets; build the network with "
                f"affinity_channels={len(self.offsets)}.")
        labels = labels.to(embeddings.device)
        spatial = embeddings.shape[2:]
        alpha = self.alpha(iteration, iterations)
        implicit = implicit_affinities(embeddings, self.offsets, self.delta_d)
        targets = affinity_targets(labels, self.offsets, self.mode, self.background_id,
                                   self.ignore_id)
        counts = {"known": 0, "con": 0}
        zero = embeddings.sum() * 0 + affinity_logits.sum() * 0
        exp_sum = imp_sum = con_sum = zero
        for channel, offset in enumerate(self.offsets):
            source, _ = _pair_slices(spatial, offset)
            logits = affinity_logits[:, channel:channel + 1][source][:, 0]
            explicit = torch.sigmoid(logits)
            target, known = targets[channel]
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            exp_sum = exp_sum + (bce * known).sum()
            imp_sum = imp_sum + ((implicit[channel] - target).pow(2) * known).sum()
            counts["known"] += int(known.sum())
            unknown = ~known
            trust_imp = confident(implicit[channel], unknown, alpha)
            trust_exp = confident(explicit, unknown, alpha)
            con = (explicit - implicit[channel].detach()).pow(2) * trust_imp \
                + (implicit[channel] - explicit.detach()).pow(2) * trust_exp
            con_sum = con_sum + con.sum()
            counts["con"] += int(unknown.sum())
        known_n, con_n = max(counts["known"], 1), max(counts["con"], 1)
        terms = {"aff_exp": exp_sum / known_n, "aff_imp": imp_sum / known_n,
                 "aff_con": con_sum / con_n}
        s = self.settings
        total = s.w_explicit * terms["aff_exp"] + s.w_implicit * terms["aff_imp"] \
            + s.w_consistency * terms["aff_con"]
        return total, terms

    @property
    def config(self) -> dict:
        return {"offsets": [list(o) for o in self.offsets], "delta_d": self.delta_d,
                **dataclasses.asdict(self.settings)}
