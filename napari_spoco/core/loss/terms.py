"""The six SPOCO loss terms for one image, on flattened ``(pixels, E)`` embeddings.

Objects are given as a segment index per labeled pixel (``0 .. K-1``), so every per-object
statistic is a segment sum (``index_add``) and nothing loops over pixels or objects. Every
function returns an exactly-zero term that stays attached to the autograd graph when it has
nothing to act on, so a batch of empty patches still back-propagates (with zero gradients).
"""

from __future__ import annotations

import torch

from .kernels import kernel_dice, radial_sum

# Squared norms below this are treated as zero before the square root: the norm's gradient
# x / |x| has no limit at 0, and clamping makes it exactly zero there instead of NaN.
_SQ_NORM_FLOOR = 1e-12
DICE_EPS = 1e-6


def attached_zero(reference: torch.Tensor) -> torch.Tensor:
    """An exact 0-d zero in ``reference``'s graph (an empty sum is 0 even for inf/NaN input)."""
    return reference[:0].sum()


def safe_norm(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean norm along the last axis with a finite (zero) gradient at the origin."""
    return (vectors * vectors).sum(-1).clamp_min(_SQ_NORM_FLOOR).sqrt()


def segment_mean(values: torch.Tensor, segment: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` rows per segment; ``counts`` (float, >= 1) holds the segment sizes."""
    sums = values.new_zeros((counts.shape[0],) + values.shape[1:])
    sums = sums.index_add(0, segment, values)
    return sums / counts.reshape((-1,) + (1,) * (values.dim() - 1))


def pull_term(emb, segment, means, counts, delta_v):
    """(1/K) sum_k (1/N_k) sum_{i in M_k} [|e_i - mu_k| - delta_v]_+²."""
    if means.shape[0] == 0:
        return attached_zero(emb)
    # index_select, not means[segment]: its backward (index_add) is the cheaper one
    dist = safe_norm(emb - means.index_select(0, segment))
    hinge = (dist - delta_v).clamp_min(0.0) ** 2
    return segment_mean(hinge, segment, counts).mean()


def push_term(means, delta_d):
    """1/(K(K-1)) sum_{k != l} [2 delta_d - |mu_k - mu_l|]_+²; zero for fewer than two objects."""
    num = means.shape[0]
    if num < 2:
        return attached_zero(means)
    dist = safe_norm(means[:, None, :] - means[None, :, :])
    hinge = (2.0 * delta_d - dist).clamp_min(0.0) ** 2
    # The off-diagonal entries in row-major order, as views instead of a boolean mask (whose
    # nonzero + gather, and index_put backward, cost a third of this term): in the flat
    # matrix without its first entry, the diagonal entries end the rows of a (K-1, K+1) view.
    off_diagonal = hinge.reshape(-1)[1:].view(num - 1, num + 1)[:, :num]
    return off_diagonal.reshape(-1).sum() / (num * (num - 1))


def regularizer_term(means):
    """(1/K) sum_k |mu_k|: keeps the embedding space bounded."""
    if means.shape[0] == 0:
        return attached_zero(means)
    return safe_norm(means).mean()


def draw_one_per_segment(segment, num_segments, generator, device):
    """Index of one pixel per segment, uniform within each segment, from a single permutation.

    The pixel with the smallest rank under a uniformly random permutation is a uniform draw
    from its segment, so all K draws cost one ``randperm`` and one segment minimum.
    """
    order = _randperm(segment.shape[0], generator, device)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.shape[0], device=device)
    first_rank = torch.full((num_segments,), order.shape[0], dtype=rank.dtype, device=device)
    first_rank = first_rank.scatter_reduce(0, segment, rank, reduce="amin")
    return order[first_rank]


def object_term(emb, segment, counts, anchors, inv_two_sigma_sq, emb_aug=None):
    """(1/K) sum_k Dice(S_k, M_k), S_k(i) = exp(-|e_i - a_k|² / (2 sigma²)) over ``emb``'s pixels.

    The overlap sum S_k·M_k only needs each pixel's kernel value for its own object; the
    denominator sum S_k² needs every pixel for every object and goes through the chunked
    ``radial_sum`` (S² = exp(-|e - a|² / sigma²)). sum M_k² = N_k. ``emb_aug``: the rows
    ``[e, |e|², 1]`` (``kernels.augment_points``) when the caller has them.
    """
    if anchors.shape[0] == 0:
        return attached_zero(emb)
    own_sq = ((emb - anchors.index_select(0, segment)) ** 2).sum(-1)
    own_kernel = torch.exp(-inv_two_sigma_sq * own_sq)
    overlap = own_kernel.new_zeros(anchors.shape[0]).index_add(0, segment, own_kernel)
    soft_sq = radial_sum(emb, anchors, "gauss", 2.0 * inv_two_sigma_sq, emb_aug)
    dice = 1.0 - 2.0 * overlap / (soft_sq + counts + DICE_EPS)
    return dice.mean()


def unlabeled_push_term(emb_unlabeled, means, delta_d, emb_aug=None):
    """(1/K) sum_k (1/|U|) sum_{i in U} [delta_d - |e_i - mu_k|]_+²; ``emb_aug`` as in
    :func:`object_term`."""
    if means.shape[0] == 0 or emb_unlabeled.shape[0] == 0:
        return attached_zero(emb_unlabeled) + attached_zero(means)
    per_object = radial_sum(emb_unlabeled, means, "hinge", delta_d, emb_aug)
    return per_object.sum() / (means.shape[0] * emb_unlabeled.shape[0])


# Candidates examined per round of the anchor sampling: enough for the default 20 anchors in
# one round when each anchor removes few pixels, small enough that a round's (pixels, window)
# distance blocks stay at a few MB.
ANCHOR_WINDOW = 32


@torch.no_grad()
def draw_consistency_anchors(cand_f, cand_g, delta_v, max_anchors, min_remaining, generator,
                             aug_f=None, aug_g=None):
    """Exhaustive anchor sampling over the candidate pixels (rows of ``cand_f`` / ``cand_g``).

    Repeatedly draw a uniformly random remaining candidate and drop every candidate within
    ``delta_v`` of it in f-space or g-space, while at least ``min_remaining`` candidates are
    left and fewer than ``max_anchors`` were drawn. ``aug_f`` / ``aug_g``: the rows
    ``[x, |x|², 1]`` of ``cand_f`` / ``cand_g`` (``kernels.augment_points``) when the caller
    has them.

    Returns
    -------
    torch.Tensor
        int64 row indices of the anchors, in drawing order.
    """
    num = cand_f.shape[0]
    device = cand_f.device
    # Walking the candidates in one random order and taking the first one still remaining is
    # a uniform draw from the remaining set at every step. Instead of one anchor per pass over
    # all candidates, each round measures all candidates against the next ANCHOR_WINDOW
    # remaining ones at once and replays the sequential rule on that small window.
    order = _randperm(num, generator, device)
    aug_f = _augmented(cand_f) if aug_f is None else aug_f
    aug_g = _augmented(cand_g) if aug_g is None else aug_g
    remaining = torch.ones(num, dtype=torch.bool, device=device)
    picks, num_picked = [], 0
    count, start = num, 0  # order[:start] holds no remaining candidate
    while count > 0 and count >= min_remaining and num_picked < max_anchors:
        positions = remaining[order[start:]].nonzero()[:ANCHOR_WINDOW, 0] + start
        window = order[positions]
        near = _near(aug_f, aug_g, window, delta_v)
        near[window, torch.arange(len(window), device=device)] = True
        chosen = _replay_window(near[window].cpu().numpy(), max_anchors - num_picked)
        chosen = torch.as_tensor(chosen, device=device)
        # near to any chosen pick, as a matrix-vector product with the chosen columns' 0/1
        # mask (exact: small whole numbers), twice as fast as near[:, chosen].any(1)
        chosen_mask = aug_f.new_zeros(len(window))
        chosen_mask[chosen] = 1.0
        removed_total = torch.mv(near.to(aug_f.dtype), chosen_mask).gt(0.0)
        removed_total &= remaining
        left = count - int(removed_total.sum())  # removed_total lies within remaining
        if left < min_remaining:
            # the stop rule binds inside this round: keep the picks made while enough was left
            removed = near[:, chosen] & remaining[:, None]
            left_before = count - removed.cumsum(1).gt_(0).sum(0)
            left_before = torch.cat([left_before.new_full((1,), count), left_before[:-1]])
            allowed = int((left_before >= min_remaining).cumprod(0).sum())
            chosen = chosen[:allowed]
            removed_total = removed[:, :allowed].any(1)
            left = count - int(removed_total.sum())
        picks.append(window[chosen])
        num_picked += len(chosen)
        if num_picked >= max_anchors:
            break  # nothing after this round needs what remains
        remaining &= ~removed_total
        count = left
        start = int(positions[-1]) + 1  # the window is now picked or removed, or we stop
    if not picks:
        return torch.empty(0, dtype=torch.int64, device=device)
    return torch.cat(picks)


def _augmented(rows):
    return torch.cat([rows, (rows * rows).sum(1, keepdim=True), torch.ones_like(rows[:, :1])], 1)


def _near(aug_f, aug_g, window, radius):
    """(candidates, window) booleans: within ``radius`` of the window's rows in f or in g.

    One matmul of augmented rows per space gives |x_i - x_w|². (``minimum`` of the two and
    one comparison would be faster, but it would let a NaN in g hide a neighbour in f.)
    """
    radius_sq = radius * radius
    near = aug_f @ _center_rows(aug_f[window]).t() <= radius_sq
    return near.logical_or_(aug_g @ _center_rows(aug_g[window]).t() <= radius_sq)


def _center_rows(centers):
    # [x, |x|², 1] · [-2 c, 1, |c|²] = |x - c|²
    return torch.cat([-2.0 * centers[:, :-2], centers[:, -1:], centers[:, -2:-1]], 1)


def _replay_window(block, budget):
    """Positions taken by the sequential rule within a window; ``block[i, j]``: i near pick j."""
    alive = [True] * block.shape[0]
    chosen = []
    for j in range(block.shape[0]):
        if not alive[j]:
            continue
        chosen.append(j)
        if len(chosen) == budget:
            break
        alive = [a and not near for a, near in zip(alive, block[:, j])]
    return chosen


def consistency_term(scope_f, scope_g, anchor_rows, inv_two_sigma_sq, aug_f=None, aug_g=None):
    """(1/A) sum_a Dice(S^f_a, S^g_a), kernels around the anchors' f and g embeddings.

    ``scope_f`` / ``scope_g``: ``(N, E)`` embeddings of every pixel the soft masks cover;
    ``anchor_rows``: anchor indices into them. g never receives gradient. ``aug_f`` /
    ``aug_g``: their rows ``[x, |x|², 1]`` (``kernels.augment_points``) when the caller has them.
    """
    if anchor_rows.shape[0] == 0:
        return attached_zero(scope_f)
    dice = kernel_dice(scope_f, anchor_rows, scope_g, inv_two_sigma_sq, DICE_EPS, aug_f, aug_g)
    return dice.mean()


def _randperm(num, generator, device):
    # A generator only draws on its own device; draw there and move, so a CPU generator can
    # seed a loss computed on the GPU.
    draw_device = generator.device if generator is not None else device
    return torch.randperm(num, generator=generator, device=draw_device).to(device)
