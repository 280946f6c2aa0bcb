"""Pixel-to-centre sums for the SPOCO loss, in bounded memory and few passes.

Three SPOCO terms need every pixel's distance to every one of K centres: the unlabeled push
(unlabeled pixels against object means), the denominator of the object Dice (labeled pixels
against object anchors) and the consistency Dice (all pixels against up to 20 anchors). Through
plain autograd, each would keep several ``(pixels, K)`` matrices alive until the backward pass
(130 MB each for a 256² patch with 500 objects) and allocate a fresh one for every elementwise
step. Here each term is one ``autograd.Function`` that walks the pixels in blocks:

* a block of scaled squared distances is one matmul of augmented rows,
  ``[x, |x|², 1] · [-2 s c, s, s |c|²]ᵀ = s |x - c|²``, so no broadcast additions follow;
* the per-pair derivative is kept from the forward pass while it is small and recomputed
  block by block when it is not, so memory stays bounded and time grows linearly with K;
* with ``w[i, k] = 2 dL/d|x_i - c_k|²`` (the 2 folded into per-centre coefficients), the
  gradients are ``dL/dx = x sum_k w - w c`` and ``dL/dc = c sum_i w - wᵀ x``: two matmuls per
  block (augmented with a column of ones to get the sums of ``w`` for free).
"""

from __future__ import annotations

import math

import torch

# Elements of one (rows, centres) block: 2 MB in float32 stays in cache across the few
# passes made over it, while the matmuls stay efficient (2^17 ... 2^21 measured: 2^19 was
# fastest for the 2D benchmark step, 2^16 was 20 % slower).
_BLOCK_ELEMENTS = 1 << 19
# Up to this many (pixel, centre) pairs the per-pair derivatives are kept from the forward
# pass (16 MB in float32) instead of being recomputed in the backward pass.
_KEEP_ELEMENTS = 1 << 22

# Squared distances below this count as zero for the hinge slope: the distance's gradient
# (x - c) / |x - c| has no limit there, and the matmul form of |x - c|² carries rounding
# noise of about 1e-7 * |x|², so a smaller floor would let noise pick the push direction.
HINGE_SQ_FLOOR = 1e-6
_HINGE_DIST_FLOOR = math.sqrt(HINGE_SQ_FLOOR)


def _augment_points(points):
    """Rows ``[x, |x|², 1]``, written into one buffer (no concatenation of temporaries)."""
    dim = points.shape[1]
    aug = points.new_empty(points.shape[0], dim + 2)
    aug[:, :dim] = points
    torch.sum(points * points, 1, out=aug[:, dim])
    aug[:, dim + 1] = 1.0
    return aug


def _augment_centers(centers, scale):
    """Rows ``c'`` with ``[x, |x|², 1] · c' = scale * |x - c|²``."""
    ones = torch.ones_like(centers[:, :1])
    sq = (centers * centers).sum(1, keepdim=True)
    return torch.cat([centers * (-2.0 * scale), ones * scale, sq * scale], dim=1)


def _blocks(num_rows: int, num_centers: int):
    step = max(1, _BLOCK_ELEMENTS // max(num_centers, 1))
    return [(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]


def _column_sums(block):
    # a matrix-vector product reads the block once and is faster than sum(0) on row-major data
    return block.t() @ block.new_ones(block.shape[0])


def _gauss(block, param, scratch):
    """exp(-param d²) in place of the block ``-param d²``; the value doubles as the factor."""
    return block.clamp_(max=0.0).exp_()


def _hinge(block, margin, scratch):
    """[margin - d]_+² and, in place of the block ``d²``, the factor ``[margin - d]_+ / d``.

    The value goes to ``scratch`` (same shape); the factor is 0 where d² <= HINGE_SQ_FLOOR.
    Every step writes into one of the two buffers, which the caller reuses for every block:
    a fresh (rows, K) tensor per step made the hinge sum 15-20 % slower (its pages are handed
    back to the system and faulted in again). The values are those of the out-of-place steps.
    """
    dist = block.clamp_(min=0.0).sqrt_()
    gap = torch.sub(block.new_tensor(margin), dist, out=scratch).clamp_(min=0.0)
    # dividing by inf where d² <= HINGE_SQ_FLOOR makes the factor exactly 0 there, in one pass
    # (a comparison plus masked_fill costs two slow ones)
    torch.nn.functional.threshold_(dist, _HINGE_DIST_FLOOR, math.inf)
    torch.div(gap, dist, out=block)
    return gap.square_()


# profile -> (function, scale of the distance block, d(value)/d(d²) = multiplier * factor)
_PROFILES = {
    "gauss": (_gauss, lambda param: -param, lambda param: -param),
    "hinge": (_hinge, lambda param: 1.0, lambda param: -1.0),
}


class _Grads:
    """Accumulates the two gradients of ``|x - c|²`` sums over blocks of rows of ``points``.

    ``add`` takes blocks of ``v``, and the weights are ``w[i, k] = v[i, k] * scale[k]``
    (``w = 2 dL/d|x_i - c_k|²``): the per-centre scale is applied to the small (K, E) matrices,
    which spares a pass over every (rows, K) block.
    """

    def __init__(self, points_aug, centers, needs, scale=None):
        self.points_aug, self.centers, self.dim = points_aug, centers, centers.shape[1]
        self.per_row = None  # (rows, dim + 1) buffer reused by every block
        self.scale = torch.ones_like(centers[:, 0]) if scale is None else scale
        self.points = torch.empty(points_aug.shape[0], self.dim, dtype=centers.dtype,
                                  device=centers.device) if needs[0] else None
        # v @ [-s c, s] = [-w c, sum_k w] per row
        self.centers_ones = torch.cat([-centers, torch.ones_like(centers[:, :1])], 1)
        self.centers_ones *= self.scale[:, None]
        # ([x, |x|², 1]ᵀ v)ᵀ: columns :dim hold vᵀx, the last one sum_i v (scaled in result).
        # Accumulated transposed, as (dim + 2, K): the same sums in the same order (equal bit
        # for bit), but this matmul runs about 30 % faster than vᵀ [x, |x|², 1].
        self.per_center = (points_aug.new_zeros(self.dim + 2, centers.shape[0]) if needs[1]
                           else None)

    def add(self, start, stop, values):
        """Accumulate a ``(rows, centres)`` block of ``v`` for the rows ``start:stop``."""
        if self.points is not None:
            rows = stop - start
            if self.per_row is None or self.per_row.shape[0] < rows:
                self.per_row = values.new_empty(rows, self.dim + 1)
            per_row = torch.mm(values, self.centers_ones, out=self.per_row[:rows])  # [-w c, sum w]
            # dL/dx = x sum_k w - w c, in one pass
            torch.addcmul(per_row[:, :-1], self.points_aug[start:stop, :self.dim],
                          per_row[:, -1:], out=self.points[start:stop])
        if self.per_center is not None:
            self.per_center.addmm_(self.points_aug[start:stop].t(), values)

    def result(self):
        """``(dL/dx, dL/dc)``; dL/dc = c sum_i w - wᵀ x."""
        grad_centers = None
        if self.per_center is not None:
            per_center = self.per_center.t() * self.scale[:, None]
            weighted, weight_sum = per_center[:, :self.dim], per_center[:, -1:]
            grad_centers = self.centers * weight_sum - weighted
        return self.points, grad_centers


class _RadialSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, centers, kind, param, points_aug):
        profile, scale, multiplier = _PROFILES[kind]
        points_aug = _augment_points(points) if points_aug is None else points_aug
        centers_aug = _augment_centers(centers, scale(param))
        blocks = _blocks(points.shape[0], centers.shape[0])
        keep = points.shape[0] * centers.shape[0] <= _KEEP_ELEMENTS
        sums = points.new_zeros(centers.shape[0])
        # kept factors: one (N, K) buffer whose row slices are the blocks; otherwise one block
        # buffer for all blocks (the derivative is recomputed in the backward pass)
        work = _BlockBuffers(points, centers.shape[0], blocks, 2 - keep)
        factors = points.new_empty(points.shape[0], centers.shape[0]) if keep else None
        for start, stop in blocks:
            block = factors[start:stop] if keep else work.get(0, stop - start)
            torch.mm(points_aug[start:stop], centers_aug.t(), out=block)
            sums += _column_sums(profile(block, param, work.get(-1, stop - start)))
        ctx.profile, ctx.param, ctx.multiplier = profile, param, multiplier(param)
        ctx.blocks, ctx.factors, ctx.centers_aug = blocks, factors, centers_aug
        ctx.save_for_backward(points_aug, centers)
        return sums

    @staticmethod
    def backward(ctx, grad_sums):
        points_aug, centers = ctx.saved_tensors
        # w = 2 dL/d|x - c|² = factor * grad_sums * 2 multiplier: the (K,) part is the scale
        grads = _Grads(points_aug, centers, ctx.needs_input_grad,
                       scale=grad_sums * (2.0 * ctx.multiplier))
        work = None if ctx.factors is not None else _BlockBuffers(
            points_aug, centers.shape[0], ctx.blocks, 2)
        for start, stop in ctx.blocks:
            if ctx.factors is not None:
                factor = ctx.factors[start:stop]
            else:
                factor = torch.mm(points_aug[start:stop], ctx.centers_aug.t(),
                                  out=work.get(0, stop - start))
                ctx.profile(factor, ctx.param, work.get(1, stop - start))
            grads.add(start, stop, factor)
        return (*grads.result(), None, None, None)


class _BlockBuffers:
    """``count`` (rows, K) buffers, each reused for every block (sliced to the block's rows)."""

    def __init__(self, like, num_centers, blocks, count):
        rows = max((stop - start for start, stop in blocks), default=0)
        self.buffers = [like.new_empty(rows, num_centers) for _ in range(count)]

    def get(self, index, rows):
        return self.buffers[index][:rows]


def radial_sum(
    points: torch.Tensor, centers: torch.Tensor, kind: str, param: float,
    points_aug: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per centre, the sum over all points of a radial profile of their distance.

    Parameters
    ----------
    points : torch.Tensor
        ``(N, E)`` float.
    centers : torch.Tensor
        ``(K, E)`` float, same dtype and device.
    kind : {"gauss", "hinge"}
        ``"gauss"``: ``exp(-param * |x - c|²)``; ``"hinge"``: ``max(param - |x - c|, 0)²``.
    param : float
        Inverse squared scale for ``"gauss"``, margin for ``"hinge"``.
    points_aug : torch.Tensor, optional
        ``(N, E + 2)`` rows ``[x, |x|², 1]`` of ``points`` (see :func:`augment_points`), when
        the caller has them already; computed here otherwise.

    Returns
    -------
    torch.Tensor
        ``(K,)``, differentiable with respect to ``points`` and ``centers``.
    """
    if kind not in _PROFILES:
        raise ValueError(f"unknown radial profile {kind!r}; use one of {sorted(_PROFILES)}")
    return _RadialSum.apply(points, centers, kind, float(param), _detached(points_aug))


class _KernelDice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points_f, anchor_rows, points_g, scale, eps, aug_f, aug_g):
        aug_f = _augment_points(points_f) if aug_f is None else aug_f
        aug_g = _augment_points(points_g) if aug_g is None else aug_g
        anchors_f = points_f[anchor_rows]
        centers_f = _augment_centers(anchors_f, -scale)
        centers_g = _augment_centers(points_g[anchor_rows], -scale)
        num, num_anchors = points_f.shape[0], anchor_rows.shape[0]
        blocks = _blocks(num, num_anchors)
        keep = num * num_anchors <= _KEEP_ELEMENTS
        sums = points_f.new_zeros(3, num_anchors)  # sum Sf Sg, sum Sf², sum Sg²
        # kept masks: (N, A) buffers whose row slices are the blocks; else reused block buffers
        work = _BlockBuffers(points_f, num_anchors, blocks, 1 if keep else 3)
        kept = [points_f.new_empty(num, num_anchors) for _ in range(2)] if keep else None
        for start, stop in blocks:
            rows = stop - start
            out = ([m[start:stop] for m in kept] if keep
                   else [work.get(1, rows), work.get(2, rows)])
            soft_f, soft_g = _soft_masks(aug_f, aug_g, centers_f, centers_g, start, stop, out)
            product = work.get(0, rows)
            sums[0] += _column_sums(torch.mul(soft_f, soft_g, out=product))
            sums[1] += _column_sums(torch.mul(soft_f, soft_f, out=product))
            sums[2] += _column_sums(torch.mul(soft_g, soft_g, out=product))
        denominator = sums[1] + sums[2] + eps
        ctx.blocks, ctx.kept, ctx.scale = blocks, kept, scale
        ctx.centers = (centers_f, centers_g)
        ctx.save_for_backward(aug_f, aug_g, anchors_f, anchor_rows, sums[0], denominator)
        return 1.0 - 2.0 * sums[0] / denominator

    @staticmethod
    def backward(ctx, grad_dice):
        aug_f, aug_g, anchors_f, anchor_rows, overlap, denominator = ctx.saved_tensors
        # L = 1 - 2 I / (P + Q + eps), I = sum Sf Sg, P = sum Sf², dSf/d(d²) = -scale Sf:
        # dL/d(d²) = Sf (by_overlap Sg + by_square Sf)
        # both carry the extra 2 of d|x - c|²/dx (see _Grads.result)
        by_overlap = 4.0 * ctx.scale * grad_dice / denominator
        by_square = -8.0 * ctx.scale * grad_dice * overlap / denominator.square()
        grads = _Grads(aug_f, anchors_f, (True, True))
        work = _BlockBuffers(aug_f, anchors_f.shape[0], ctx.blocks, 1 if ctx.kept else 3)
        for start, stop in ctx.blocks:
            rows = stop - start
            if ctx.kept:
                soft_f, soft_g = (m[start:stop] for m in ctx.kept)
            else:
                soft_f, soft_g = _soft_masks(aug_f, aug_g, *ctx.centers, start, stop,
                                             [work.get(1, rows), work.get(2, rows)])
            weight = torch.mul(soft_g, by_overlap, out=work.get(0, rows))
            weight.addcmul_(soft_f, by_square).mul_(soft_f)
            grads.add(start, stop, weight)
        grad_points, grad_anchors = grads.result()
        # the anchors are rows of points_f: their gradient lands on those rows
        grad_points.index_add_(0, anchor_rows, grad_anchors)
        return grad_points, None, None, None, None, None, None


def _soft_masks(aug_f, aug_g, centers_f, centers_g, start, stop, out):
    """The f and g soft masks of the rows ``start:stop``, written into the two ``out`` blocks."""
    return [
        torch.mm(aug[start:stop], centers.t(), out=block).clamp_(max=0.0).exp_()
        for aug, centers, block in ((aug_f, centers_f, out[0]), (aug_g, centers_g, out[1]))
    ]


def kernel_dice(points_f, anchor_rows, points_g, inv_two_sigma_sq, eps, aug_f=None,
                aug_g=None):
    """Per anchor, the Dice loss between the Gaussian soft masks of f and of g.

    Parameters
    ----------
    points_f, points_g : torch.Tensor
        ``(N, E)`` embeddings of the pixels the masks cover, from f and from g.
    anchor_rows : torch.Tensor
        ``(A,)`` int64 rows of the anchor pixels; their f- and g-embeddings are the anchors.
    inv_two_sigma_sq : float
        ``1 / (2 sigma²)``; ``S(i) = exp(-|e_i - a|² / (2 sigma²))``.
    eps : float
        Added to the Dice denominator.
    aug_f, aug_g : torch.Tensor, optional
        ``(N, E + 2)`` rows ``[x, |x|², 1]`` of ``points_f`` / ``points_g`` (see
        :func:`augment_points`), when the caller has them already.

    Returns
    -------
    torch.Tensor
        ``(A,)`` values ``1 - 2 sum Sf Sg / (sum Sf² + sum Sg² + eps)``; gradient flows to
        ``points_f`` only (including through the anchors); g is a fixed target.
    """
    return _KernelDice.apply(points_f, anchor_rows, points_g.detach(),
                             float(inv_two_sigma_sq), float(eps), _detached(aug_f),
                             _detached(aug_g))


def augment_points(points: torch.Tensor) -> torch.Tensor:
    """Rows ``[x, |x|², 1]`` of ``(N, E)`` points (detached), for :func:`radial_sum` and
    :func:`kernel_dice`.

    A row's entries depend on that row only, so the rows of a subset of pixels are the same
    rows of the whole image's: augmenting every pixel once and gathering rows spares one
    ``|x|²`` pass per term.
    """
    with torch.no_grad():
        return _augment_points(points.detach())


def _detached(tensor):
    return None if tensor is None else tensor.detach()
