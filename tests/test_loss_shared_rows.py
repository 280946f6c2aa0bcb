"""The SPOCO loss's shortcuts give exactly what the plain computations give.

The loss augments every pixel's row ``[x, |x|², 1]`` once and hands the rows to the kernels and
the anchor draw, and the push term reads the off-diagonal pairs through views. These tests pin
that each shortcut is equal bit for bit to the computation it replaces, so a change of speed can
never become a change of the loss.
"""

import pytest
import torch

# the kernel tests' seeding; their block_mode fixture lives in conftest.py
from test_loss_kernels import seeded

from napari_spoco.core.loss.kernels import augment_points, kernel_dice, radial_sum
from napari_spoco.core.loss.terms import draw_consistency_anchors, push_term, safe_norm


def test_rows_of_a_subset_are_the_subsets_rows():
    points = torch.randn(500, 16, generator=seeded(1))
    rows = torch.randperm(500, generator=seeded(2))[:123]
    assert torch.equal(augment_points(points)[rows], augment_points(points[rows]))
    aug = augment_points(points)
    assert torch.equal(aug[:, :16], points) and torch.equal(aug[:, 17], torch.ones(500))


@pytest.mark.parametrize("kind,param", [("hinge", 2.0), ("gauss", 0.84)])
def test_radial_sum_with_given_rows_equals_its_own(block_mode, kind, param):
    gen = seeded(3)
    points = 0.8 * torch.randn(300, 16, generator=gen)
    centers = 0.8 * torch.randn(40, 16, generator=gen)
    points[5] = centers[3]  # a pair at distance 0: the hinge's factor is 0 there
    results = []
    for given in (None, augment_points(points)):
        x, c = points.clone().requires_grad_(), centers.clone().requires_grad_()
        sums = radial_sum(x, c, kind, param, given)
        (sums * torch.linspace(0.5, 1.5, 40)).sum().backward()
        results.append((sums.detach(), x.grad, c.grad))
    for plain, shared in zip(*results):
        assert torch.equal(plain, shared)
    assert results[0][0].abs().sum() > 0 and results[0][1].abs().sum() > 0


def test_kernel_dice_with_given_rows_equals_its_own(block_mode):
    gen = seeded(4)
    f = 0.5 * torch.randn(400, 16, generator=gen)
    g = f + 0.1 * torch.randn(400, 16, generator=gen)
    anchors = torch.tensor([3, 50, 51, 399])
    results = []
    for given in ((None, None), (augment_points(f), augment_points(g))):
        x = f.clone().requires_grad_()
        dice = kernel_dice(x, anchors, g, 0.42, 1e-6, *given)
        dice.sum().backward()
        results.append((dice.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert results[0][1].abs().sum() > 0


@pytest.mark.parametrize("seed", range(8))
def test_anchor_draw_with_given_rows_draws_the_same_anchors(seed):
    gen = seeded(seed)
    cand_f = [0.3, 1.0, 3.0][seed % 3] * torch.randn(700, 8, generator=gen)
    cand_g = cand_f + 0.3 * torch.randn(700, 8, generator=gen)
    max_anchors, min_remaining = [5, 20, 100][seed % 3], [0.0, 35.0, 350.0][seed % 3]
    plain = draw_consistency_anchors(cand_f, cand_g, 0.5, max_anchors, min_remaining,
                                     seeded(50 + seed))
    shared = draw_consistency_anchors(cand_f, cand_g, 0.5, max_anchors, min_remaining,
                                      seeded(50 + seed), augment_points(cand_f),
                                      augment_points(cand_g))
    assert torch.equal(plain, shared) and len(plain) >= 1


@pytest.mark.parametrize("num", [2, 3, 17])
def test_push_term_sums_exactly_the_off_diagonal_pairs(num):
    means = (0.7 * torch.randn(num, 5, generator=seeded(num))).requires_grad_()
    got = push_term(means, 2.0)
    got.backward()
    reference_means = means.detach().clone().requires_grad_()
    dist = safe_norm(reference_means[:, None, :] - reference_means[None, :, :])
    hinge = (4.0 - dist).clamp_min(0.0) ** 2
    expected = hinge[~torch.eye(num, dtype=torch.bool)].sum() / (num * (num - 1))
    expected.backward()
    assert torch.equal(got.detach(), expected.detach()) and expected > 0
    assert torch.equal(means.grad, reference_means.grad)
