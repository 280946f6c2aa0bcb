"""The SPOCO loss: discriminative pull/push/regulariser, per-object Dice, unlabeled push and
embedding consistency (Wolny et al., CVPR 2022), as fixed by the project specification.

The terms themselves live in :mod:`loss_terms`; this module validates settings and inputs,
splits each image's pixels into labeled objects, unlabeled and ignored pixels, and averages the
per-image terms over the batch. See ``docs/method.md`` ("Loss") for the choices made here.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from torch import nn

from ..errors import SpocoInputError
from .kernels import augment_points
from .terms import (
    attached_zero,
    consistency_term,
    draw_consistency_anchors,
    draw_one_per_segment,
    object_term,
    pull_term,
    push_term,
    regularizer_term,
    segment_mean,
    unlabeled_push_term,
)

TERM_NAMES = ("pull", "push", "reg", "obj", "u_push", "u_con")
_MODES = ("sparse", "dense")


class SpocoLoss(nn.Module):
    """SPOCO loss over a batch of f- and g-embeddings and (sparse or dense) instance labels.

    Parameters
    ----------
    delta_v, delta_d : float
        Pull margin and push margin (means are pushed apart up to ``2 delta_d``, unlabeled
        pixels away from means up to ``delta_d``).
    kernel_threshold : float
        Kernel value at distance ``delta_v`` from an anchor, in (0, 1); sets
        ``sigma² = -delta_v² / (2 ln t)``.
    alpha, beta, w_reg, w_obj, w_upush, w_ucon : float
        Weights of pull, push, regulariser, object Dice, unlabeled push and consistency.
    mode : {"sparse", "dense"}
        ``"sparse"``: label 0 is unlabeled (unknown). ``"dense"``: label 0 is the background
        object; there is no unlabeled pixel and the consistency term runs on the background.
    background_id : int, optional
        Id of pixels painted as background. In sparse mode it is one more labeled object,
        except that unlabeled pixels are not pushed away from its mean (they may be
        background); in dense mode its pixels join label 0 as the region of the consistency
        term.
    ignore_id : int, optional
        Id of pixels that take part in no term.
    max_anchors : int
        Most consistency anchors per image.
    anchor_stop_fraction : float
        Anchor drawing stops once fewer than this fraction of the image's pixels remain
        candidates.
    anchor_at_mean : bool
        Use the object mean instead of a random object pixel as the object-Dice anchor.

    Raises
    ------
    SpocoInputError
        For a setting outside its valid range, with the valid range in the message.
    """

    def __init__(
        self,
        delta_v: float = 0.5,
        delta_d: float = 2.0,
        kernel_threshold: float = 0.9,
        alpha: float = 1.0,
        beta: float = 1.0,
        w_reg: float = 1e-3,
        w_obj: float = 1.0,
        w_upush: float = 1.0,
        w_ucon: float = 1.0,
        mode: str = "sparse",
        background_id: int | None = None,
        ignore_id: int | None = None,
        max_anchors: int = 20,
        anchor_stop_fraction: float = 0.05,
        anchor_at_mean: bool = False,
    ):
        super().__init__()
        self._config = _validated_config(dict(
            delta_v=delta_v, delta_d=delta_d, kernel_threshold=kernel_threshold,
            alpha=alpha, beta=beta, w_reg=w_reg, w_obj=w_obj, w_upush=w_upush, w_ucon=w_ucon,
            mode=mode, background_id=background_id, ignore_id=ignore_id,
            max_anchors=max_anchors, anchor_stop_fraction=anchor_stop_fraction,
            anchor_at_mean=anchor_at_mean,
        ))
        for name, value in self._config.items():
            setattr(self, name, value)
        sigma_sq = -self.delta_v ** 2 / (2.0 * math.log(self.kernel_threshold))
        self._inv_two_sigma_sq = 1.0 / (2.0 * sigma_sq)
        self._weights = dict(pull=self.alpha, push=self.beta, reg=self.w_reg, obj=self.w_obj,
                             u_push=self.w_upush, u_con=self.w_ucon)

    @property
    def config(self) -> dict:
        """The constructor arguments as a plain dict (``SpocoLoss(**loss.config)`` rebuilds it)."""
        return dict(self._config)

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self._config.items())

    def forward(self, emb_f, emb_g, labels, generator: torch.Generator | None = None):
        """Compute the loss.

        Parameters
        ----------
        emb_f : torch.Tensor
            ``(B, E, *spatial)`` float embeddings of the trained network f (2 or 3 spatial axes).
        emb_g : torch.Tensor
            Same shape, embeddings of the momentum network g; never receives gradient.
        labels : torch.Tensor or numpy.ndarray
            ``(B, *spatial)`` integer labels of any integer dtype (ids may be large and
            non-consecutive).
        generator : torch.Generator, optional
            Source of the random anchor draws; seed it for reproducible results.

        Returns
        -------
        total : torch.Tensor
            0-d, ``sum(weight * term)``.
        terms : dict of str to torch.Tensor
            ``pull push reg obj u_push u_con``: unweighted 0-d terms averaged over the batch.

        Raises
        ------
        SpocoInputError
            For mismatched shapes, non-float embeddings or non-integer labels.
        """
        labels = _check_inputs(emb_f, emb_g, labels)
        batch, channels = emb_f.shape[:2]
        labels = _labels_as_int64(labels).to(emb_f.device).reshape(batch, -1)
        # Half-precision embeddings (mixed-precision training) are promoted: the distances
        # |x|² - 2x·c + |c|² cancel catastrophically in 8-11 bit mantissas.
        dtype = torch.promote_types(emb_f.dtype, torch.float32)
        # (B, pixels, E) rows: every later gather then reads contiguous embedding vectors
        rows_f = emb_f.to(dtype).reshape(batch, channels, -1).transpose(1, 2).contiguous()
        rows_g = emb_g.detach().to(dtype).reshape(batch, channels, -1).transpose(1, 2)
        rows_g = rows_g.contiguous()
        # every pixel's [x, |x|², 1] once: the terms gather the rows of their pixels from these
        # instead of recomputing |x|² per term (four times over for some pixels)
        aug_f = augment_points(rows_f.reshape(-1, channels)).reshape(batch, -1, channels + 2)
        aug_g = augment_points(rows_g.reshape(-1, channels)).reshape(batch, -1, channels + 2)
        # unbind, not rows_f[b]: each indexed view would back-propagate a zero-filled batch
        per_image = [
            self._image_terms(*image, generator)
            for image in zip(rows_f.unbind(0), rows_g.unbind(0), labels.unbind(0),
                             aug_f.unbind(0), aug_g.unbind(0))
        ]
        terms = {name: torch.stack([t[name] for t in per_image]).mean() for name in TERM_NAMES}
        total = sum(self._weights[name] * terms[name] for name in TERM_NAMES)
        return total, terms

    def _image_terms(self, emb_f, emb_g, labels, aug_f, aug_g, generator):
        """All six terms of one image; ``emb_f``/``emb_g`` are ``(pixels, E)``, ``aug_f`` /
        ``aug_g`` their (detached) rows ``[x, |x|², 1]``."""
        regions = self._regions(labels)
        device = emb_f.device
        grad = torch.is_grad_enabled()

        def weighted(name):
            # A term with weight 0 is still reported, but building its graph would be waste.
            return torch.set_grad_enabled(grad and self._weights[name] != 0)

        labeled_idx = regions["labeled"].nonzero().squeeze(1)
        object_ids, segment = torch.unique(labels[labeled_idx], return_inverse=True)
        num_objects = int(segment.max()) + 1 if segment.numel() else 0
        counts = torch.bincount(segment, minlength=num_objects).to(emb_f.dtype)
        # index_select, not emb_f[idx]: its backward (index_add) is the cheaper one
        emb_labeled = emb_f.index_select(0, labeled_idx)
        means = segment_mean(emb_labeled, segment, counts)

        terms = {}
        with weighted("pull"):
            terms["pull"] = pull_term(emb_labeled, segment, means, counts, self.delta_v)
        with weighted("push"):
            terms["push"] = push_term(means, self.delta_d)
        with weighted("reg"):
            terms["reg"] = regularizer_term(means)
        if self.anchor_at_mean:
            anchors = means
        else:
            anchors = emb_labeled.index_select(
                0, draw_one_per_segment(segment, num_objects, generator, device))
        with weighted("obj"):
            terms["obj"] = object_term(
                emb_labeled, segment, counts, anchors, self._inv_two_sigma_sq,
                aug_f.index_select(0, labeled_idx),
            )
        with weighted("u_push"):
            unlabeled_idx = regions["unlabeled"].nonzero().squeeze(1)
            terms["u_push"] = unlabeled_push_term(
                emb_f.index_select(0, unlabeled_idx), self._not_background(means, object_ids),
                self.delta_d, aug_f.index_select(0, unlabeled_idx),
            )

        if self.ignore_id is None:
            scope_f, scope_g, in_scope = emb_f, emb_g, regions["candidates"]
        else:
            scope_idx = regions["valid"].nonzero().squeeze(1)
            scope_f, scope_g = emb_f.index_select(0, scope_idx), emb_g[scope_idx]
            aug_f, aug_g = aug_f[scope_idx], aug_g[scope_idx]
            in_scope = regions["candidates"][scope_idx]
        # anchor candidates as rows of the scope (candidates are a subset of it)
        candidate_rows = in_scope.nonzero().squeeze(1)
        cand_f, cand_g = aug_f[candidate_rows], aug_g[candidate_rows]
        dim = emb_f.shape[1]
        picks = draw_consistency_anchors(
            cand_f[:, :dim], cand_g[:, :dim], self.delta_v, self.max_anchors,
            self.anchor_stop_fraction * labels.numel(), generator, cand_f, cand_g,
        )
        with weighted("u_con"):
            terms["u_con"] = consistency_term(
                scope_f, scope_g, candidate_rows[picks], self._inv_two_sigma_sq, aug_f, aug_g
            )
        # keep every term attached to the graph even where its weight switched it off
        # (only those that are not: the anchor's backward is a zero-filled image gradient)
        if all(value.requires_grad for value in terms.values()) or not emb_f.requires_grad:
            return terms
        anchor = attached_zero(emb_f)
        return {name: value + anchor for name, value in terms.items()}

    def _not_background(self, means, object_ids):
        """The object means without the painted background's (sparse mode).

        Unlabeled pixels may well be background, so pushing them away from the background's
        mean would teach the opposite of what the painted strokes say (docs/method.md).
        """
        if self.mode != "sparse" or self.background_id is None or means.shape[0] == 0:
            return means
        keep = object_ids != _id_as_int64(self.background_id)
        return means if bool(keep.all()) else means[keep]

    def _regions(self, labels):
        """Boolean masks: labeled, unlabeled (u_push), candidates (u_con anchors), valid."""
        valid = torch.ones_like(labels, dtype=torch.bool)
        if self.ignore_id is not None:
            valid &= labels != _id_as_int64(self.ignore_id)
        zero = (labels == 0) & valid
        if self.mode == "sparse":
            return dict(labeled=valid & ~zero, unlabeled=zero, candidates=zero, valid=valid)
        background = zero
        if self.background_id is not None:
            background = background | ((labels == _id_as_int64(self.background_id)) & valid)
        nothing = torch.zeros_like(valid)
        return dict(labeled=valid, unlabeled=nothing, candidates=background, valid=valid)


def _validated_config(cfg: dict) -> dict:
    for name in ("delta_v", "delta_d"):
        cfg[name] = _real(name, cfg[name])
        if not cfg[name] > 0:
            raise SpocoInputError(
                f"{name}={cfg[name]} must be a positive margin; the paper uses delta_v=0.5, "
                "delta_d=2.0."
            )
    if not cfg["delta_d"] > cfg["delta_v"]:
        # pulling pixels to within delta_v of their mean and pushing means only delta_d apart
        # would let objects overlap in embedding space
        raise SpocoInputError(
            f"delta_d={cfg['delta_d']} must be larger than delta_v={cfg['delta_v']} (push "
            "margin beyond pull margin); the paper uses delta_v=0.5, delta_d=2.0."
        )
    cfg["kernel_threshold"] = _real("kernel_threshold", cfg["kernel_threshold"])
    if not 0.0 < cfg["kernel_threshold"] < 1.0:
        raise SpocoInputError(
            f"kernel_threshold={cfg['kernel_threshold']} must lie strictly between 0 and 1 "
            "(the kernel value at distance delta_v); the paper uses 0.9."
        )
    for name in ("alpha", "beta", "w_reg", "w_obj", "w_upush", "w_ucon"):
        cfg[name] = _real(name, cfg[name])
        if cfg[name] < 0:
            raise SpocoInputError(f"Loss weight {name}={cfg[name]} is negative; use 0 to switch "
                                  "the term off or a positive weight.")
    if cfg["mode"] not in _MODES:
        raise SpocoInputError(
            f"mode={cfg['mode']!r} is not a loss mode; use 'sparse' (0 = unlabeled) or 'dense' "
            "(0 = background object)."
        )
    for name in ("background_id", "ignore_id"):
        if cfg[name] is not None:
            cfg[name] = _label_id(name, cfg[name])
    if cfg["mode"] == "sparse" and cfg["background_id"] == 0:
        raise SpocoInputError(
            "background_id=0 collides with the unlabeled id 0 of sparse mode; paint background "
            "with another id, or use mode='dense' if every 0 pixel is background."
        )
    if cfg["background_id"] is not None and cfg["background_id"] == cfg["ignore_id"]:
        raise SpocoInputError(
            f"background_id and ignore_id are both {cfg['ignore_id']}; give them different ids."
        )
    anchors = cfg["max_anchors"]
    if isinstance(anchors, bool) or not isinstance(anchors, Integral) or anchors < 0:
        raise SpocoInputError(
            f"max_anchors={anchors!r} must be a non-negative integer (0 switches the "
            "consistency anchors off); the paper uses 20."
        )
    cfg["max_anchors"] = int(anchors)
    cfg["anchor_stop_fraction"] = _real("anchor_stop_fraction", cfg["anchor_stop_fraction"])
    if not 0.0 <= cfg["anchor_stop_fraction"] <= 1.0:
        raise SpocoInputError(
            f"anchor_stop_fraction={cfg['anchor_stop_fraction']} must be a fraction in [0, 1]; "
            "the paper uses 0.05."
        )
    if not isinstance(cfg["anchor_at_mean"], (bool, np.bool_)):
        raise SpocoInputError(f"anchor_at_mean={cfg['anchor_at_mean']!r} must be True or False.")
    cfg["anchor_at_mean"] = bool(cfg["anchor_at_mean"])
    return cfg


def _real(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise SpocoInputError(f"Loss setting {name}={value!r} must be a finite number.")
    return float(value)


def _label_id(name, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise SpocoInputError(f"{name}={value!r} must be an integer label id (or None).")
    value = int(value)
    if not -(2 ** 63) <= value < 2 ** 64:
        raise SpocoInputError(f"{name}={value} does not fit a 64-bit label; use a smaller id.")
    return value


def _id_as_int64(value: int) -> int:
    # uint64 labels are reinterpreted bit for bit as int64 (see _labels_as_int64)
    return value - 2 ** 64 if value >= 2 ** 63 else value


def _labels_as_int64(labels: torch.Tensor) -> torch.Tensor:
    # Reinterpreting uint64 bits keeps distinct ids distinct and 0 at 0; a value cast would
    # not be defined for ids of 2**63 and above.
    if labels.dtype == torch.uint64:
        return labels.view(torch.int64)
    return labels.to(torch.int64)


def _check_inputs(emb_f, emb_g, labels) -> torch.Tensor:
    for name, emb in (("emb_f", emb_f), ("emb_g", emb_g)):
        if not isinstance(emb, torch.Tensor) or not emb.is_floating_point():
            raise SpocoInputError(
                f"{name} must be a float torch tensor (B, E, *spatial); got "
                f"{type(emb).__name__} {getattr(emb, 'dtype', '')}. Pass the network output."
            )
        if emb.dim() not in (4, 5):
            raise SpocoInputError(
                f"{name} has shape {tuple(emb.shape)}; expected (B, E, Y, X) or (B, E, Z, Y, X). "
                "Add the batch axis with .unsqueeze(0) for a single image."
            )
    if emb_f.shape[0] == 0 or emb_f.shape[1] == 0:
        raise SpocoInputError(
            f"emb_f has shape {tuple(emb_f.shape)}: the batch and the embedding axis must not be "
            "empty."
        )
    if emb_f.shape != emb_g.shape:
        raise SpocoInputError(
            f"emb_f {tuple(emb_f.shape)} and emb_g {tuple(emb_g.shape)} differ in shape; both "
            "networks must see crops of the same size and give the same number of channels."
        )
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    if not isinstance(labels, torch.Tensor):
        raise SpocoInputError(f"labels must be a torch tensor, got {type(labels).__name__}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise SpocoInputError(
            f"labels have dtype {labels.dtype}; instance labels must be integers. Convert them "
            "with .long() after checking that they hold whole numbers."
        )
    expected = (emb_f.shape[0],) + tuple(emb_f.shape[2:])
    if tuple(labels.shape) != expected:
        raise SpocoInputError(
            f"labels have shape {tuple(labels.shape)} but the embeddings need {expected} "
            "(batch, then the spatial shape of the embeddings)."
        )
    return labels
