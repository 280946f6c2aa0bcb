"""Building blocks of the SPOCO loss: pixel-to-centre kernels with custom backward passes,
the per-object Dice with given anchors, and the anchor sampling."""

import math

import numpy as np
import pytest
import torch

from napari_spoco.core.loss import terms as loss_terms
from napari_spoco.core.loss.kernels import radial_sum
from napari_spoco.core.loss.terms import (
    consistency_term,
    draw_consistency_anchors,
    draw_one_per_segment,
    object_term,
)

SIGMA_SQ = -0.25 / (2 * math.log(0.9))  # defaults delta_v = 0.5, t = 0.9


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_consistency_term_gradient(block_mode):
    gen = seeded(22)
    f = (0.3 * torch.randn(10, 2, generator=gen, dtype=torch.float64)).requires_grad_()
    g = f.detach() + 0.1 * torch.randn(10, 2, generator=gen, dtype=torch.float64)
    rows = torch.tensor([3, 7, 8])
    assert torch.autograd.gradcheck(lambda x: consistency_term(x, g, rows, 0.42), (f,))


def test_consistency_term_matches_numpy_for_given_anchors():
    rng = np.random.default_rng(4)
    f, g = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    f[:10] *= 0.2  # some pixels close together, so the kernels overlap
    anchors = np.array([0, 7, 20])
    expected = []
    for a in anchors:
        s_f = np.exp(-((f - f[a]) ** 2).sum(1) / (2 * SIGMA_SQ))
        s_g = np.exp(-((g - g[a]) ** 2).sum(1) / (2 * SIGMA_SQ))
        expected.append(1 - 2 * (s_f * s_g).sum() / ((s_f ** 2).sum() + (s_g ** 2).sum() + 1e-6))
    got = consistency_term(torch.tensor(f), torch.tensor(g), torch.tensor(anchors),
                           1 / (2 * SIGMA_SQ))
    assert got.item() == pytest.approx(np.mean(expected), rel=1e-9)


def test_radial_sum_values_and_gradients(block_mode):
    gen = seeded(5)
    points = torch.randn(17, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    centers = torch.randn(3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    dist = torch.cdist(points, centers)
    gauss = torch.exp(-0.7 * dist ** 2).sum(0)
    hinge = ((1.5 - dist).clamp_min(0) ** 2).sum(0)
    assert torch.allclose(radial_sum(points, centers, "gauss", 0.7), gauss)
    assert torch.allclose(radial_sum(points, centers, "hinge", 1.5), hinge)
    for kind, param in (("gauss", 0.7), ("hinge", 1.5)):
        assert torch.autograd.gradcheck(
            lambda p, c, kind=kind, param=param: radial_sum(p, c, kind, param), (points, centers)
        )


def test_object_term_with_given_anchors_matches_dense_computation():
    gen = seeded(6)
    emb = torch.randn(50, 2, dtype=torch.float64, generator=gen) * 0.4
    segment = torch.randint(0, 3, (50,), generator=gen)
    counts = torch.bincount(segment, minlength=3).double()
    anchors = emb[torch.tensor([0, 1, 2])]
    soft = torch.exp(-torch.cdist(anchors, emb) ** 2 / (2 * SIGMA_SQ))  # (K, N)
    target = torch.nn.functional.one_hot(segment, 3).t().double()
    dice = 1 - 2 * (soft * target).sum(1) / ((soft ** 2).sum(1) + target.sum(1) + 1e-6)
    got = object_term(emb, segment, counts, anchors, 1 / (2 * SIGMA_SQ))
    assert got.item() == pytest.approx(dice.mean().item(), rel=1e-9)


def test_one_per_segment_draws_are_uniform_within_segments():
    segment = torch.tensor([0, 0, 1, 1, 1, 1, 2])
    hits = np.zeros(7)
    gen = seeded(7)
    for _ in range(2000):
        picked = draw_one_per_segment(segment, 3, gen, torch.device("cpu"))
        assert segment[picked].tolist() == [0, 1, 2]
        hits[picked.numpy()] += 1
    np.testing.assert_allclose(hits[:2] / 2000, 0.5, atol=0.05)
    np.testing.assert_allclose(hits[2:6] / 2000, 0.25, atol=0.05)
    assert hits[6] == 2000


def test_exhaustive_anchors_cover_each_cluster_once():
    # five clusters 10 apart in f and in g: each anchor removes exactly its own cluster
    centers = torch.arange(5, dtype=torch.float64)[:, None] * 10
    cand = (centers.repeat_interleave(8, 0) + 0.01 * torch.randn(40, 1, dtype=torch.float64))
    picks = draw_consistency_anchors(cand, cand, 0.5, 20, 0.0, seeded(8))
    assert sorted((picks // 8).tolist()) == [0, 1, 2, 3, 4]
    assert len(draw_consistency_anchors(cand, cand, 0.5, 3, 0.0, seeded(8))) == 3
    # stop once fewer than 17 candidates remain: after three clusters 16 are left
    assert len(draw_consistency_anchors(cand, cand, 0.5, 20, 17, seeded(8))) == 3


@pytest.mark.parametrize("window", [4, 32])
@pytest.mark.parametrize("seed", range(6))
def test_consistency_anchors_follow_the_sequential_rule(seed, window, monkeypatch):
    monkeypatch.setattr(loss_terms, "ANCHOR_WINDOW", window)
    gen = seeded(seed)
    centers = 2.0 * torch.randn(12, 2, generator=gen, dtype=torch.float64)
    cand_f = centers[torch.randint(0, 12, (300,), generator=gen)]
    cand_f = cand_f + 0.3 * torch.randn(cand_f.shape, generator=gen, dtype=torch.float64)
    cand_g = cand_f + 0.2 * torch.randn(cand_f.shape, generator=gen, dtype=torch.float64)
    max_anchors, min_remaining = [3, 20, 100][seed % 3], [0, 30][seed % 2]
    picks = draw_consistency_anchors(cand_f, cand_g, 0.5, max_anchors, min_remaining,
                                     seeded(100 + seed))
    remaining = torch.ones(300, dtype=torch.bool)
    for pick in picks:
        assert remaining[pick]  # drawn from what is left, while enough is left
        assert remaining.sum() >= max(min_remaining, 1)
        near = ((cand_f - cand_f[pick]).norm(dim=1) <= 0.5) | \
            ((cand_g - cand_g[pick]).norm(dim=1) <= 0.5)
        near[pick] = True
        remaining &= ~near
    left = int(remaining.sum())
    assert len(picks) == max_anchors or left < min_remaining or left == 0
    assert len(picks) > 1


def test_first_consistency_anchor_is_uniform():
    cand = torch.arange(5, dtype=torch.float64)[:, None] * 10
    gen = seeded(15)
    hits = np.bincount([int(draw_consistency_anchors(cand, cand, 0.5, 1, 0.0, gen)[0])
                        for _ in range(1000)], minlength=5)
    np.testing.assert_allclose(hits / 1000, 0.2, atol=0.05)


def test_anchor_removes_candidates_close_in_either_space():
    # f sees one cluster, g sees two: one anchor removes everything because f-space suffices
    f = torch.zeros(10, 1, dtype=torch.float64)
    g = torch.cat([torch.zeros(5, 1), torch.full((5, 1), 10.0)]).double()
    assert len(draw_consistency_anchors(f, g, 0.5, 20, 0.0, seeded(0))) == 1
    assert len(draw_consistency_anchors(g, f, 0.5, 20, 0.0, seeded(0))) == 1
    assert len(draw_consistency_anchors(g, g, 0.5, 20, 0.0, seeded(0))) == 2
