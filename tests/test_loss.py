"""SPOCO loss: each term against hand-computed or brute-force values, edge cases, gradients.

The building blocks (pixel-to-centre kernels, anchor sampling) are tested in
``test_loss_kernels.py``.
"""

import math

import numpy as np
import pytest
import torch

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.loss import TERM_NAMES, SpocoLoss

SIGMA_SQ = -0.25 / (2 * math.log(0.9))  # defaults delta_v = 0.5, t = 0.9


def kernel(dist):
    return math.exp(-dist ** 2 / (2 * SIGMA_SQ))


def row(f, labels, g=None, dtype=torch.float64):
    """One image of N pixels laid out as a 1 x N 2D image; f is (N,) or (N, E)."""
    f = np.asarray(f, dtype=float)
    f = f[:, None] if f.ndim == 1 else f
    emb_f = torch.tensor(f.T[None, :, None, :], dtype=dtype, requires_grad=True)
    g = f if g is None else np.asarray(g, dtype=float).reshape(f.shape[0], -1)
    emb_g = torch.tensor(g.T[None, :, None, :], dtype=dtype)
    return emb_f, emb_g, torch.as_tensor(np.asarray(labels)[None, None, :])


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def value(terms, name):
    return terms[name].item()


# ---------------------------------------------------------------- hand-computed terms


def test_pull_push_reg_by_hand():
    # object 1 at {0, 2}: mean 1, both pixels 1 away -> (1 - 0.5)² each
    # object 2 at {5, 5, 8}: mean 6, distances 1, 1, 2 -> 0.25, 0.25, 2.25
    f = [0, 2, 5, 5, 8]
    _, terms = SpocoLoss()(*row(f, [1, 1, 2, 2, 2]), generator=seeded())
    assert value(terms, "pull") == pytest.approx((0.25 + (0.25 + 0.25 + 2.25) / 3) / 2)
    # means 1 and 6 are 5 apart, beyond 2 delta_d = 4
    assert value(terms, "push") == 0.0
    assert value(terms, "reg") == pytest.approx((1 + 6) / 2)
    # means 0 and 3: [4 - 3]_+² for both ordered pairs, divided by K(K-1) = 2
    _, terms = SpocoLoss()(*row([0, 3], [4, 9]), generator=seeded())
    assert value(terms, "push") == pytest.approx(1.0)
    assert value(terms, "pull") == 0.0


def test_obj_is_mean_of_per_object_dice():
    # object A: 3 pixels at 0, object B: 2 pixels at 1. Every anchor of an object has the
    # object's only embedding, so the random draw does not matter.
    k = kernel(1.0)
    dice_a = 1 - 2 * 3 / (3 + 2 * k ** 2 + 3 + 1e-6)
    dice_b = 1 - 2 * 2 / (2 + 3 * k ** 2 + 2 + 1e-6)
    _, terms = SpocoLoss()(*row([0, 0, 0, 1, 1], [5, 5, 5, 6, 6]), generator=seeded())
    assert value(terms, "obj") == pytest.approx((dice_a + dice_b) / 2, rel=1e-9)
    # pooling all objects into one Dice would give another number: guard the per-object mean
    pooled = 1 - 2 * 5 / (3 + 2 * k ** 2 + 2 + 3 * k ** 2 + 5)
    assert abs(value(terms, "obj") - pooled) > 1e-3


def test_obj_random_anchor_is_one_of_the_object_pixels():
    # two objects with two distinct embeddings each: four possible anchor pairs
    f = np.array([0.0, 0.3, 1.0, 1.4])
    labels = np.array([1, 1, 2, 2])

    def expected(anchor_a, anchor_b):
        result = []
        for anchor, member in ((anchor_a, labels == 1), (anchor_b, labels == 2)):
            s = np.exp(-(f - anchor) ** 2 / (2 * SIGMA_SQ))
            result.append(1 - 2 * s[member].sum() / ((s ** 2).sum() + member.sum() + 1e-6))
        return np.mean(result)

    candidates = {(a, b): expected(a, b) for a in (0.0, 0.3) for b in (1.0, 1.4)}
    seen = set()
    for seed in range(40):
        _, terms = SpocoLoss()(*row(f, labels), generator=seeded(seed))
        match = [key for key, v in candidates.items() if abs(v - value(terms, "obj")) < 1e-9]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(candidates)  # every anchor pair occurs


def test_obj_anchor_at_mean():
    f = np.array([0.0, 0.4, 2.0, 2.2, 2.9])
    labels = np.array([1, 1, 2, 2, 2])
    result = []
    for member in (labels == 1, labels == 2):
        s = np.exp(-(f - f[member].mean()) ** 2 / (2 * SIGMA_SQ))
        result.append(1 - 2 * s[member].sum() / ((s ** 2).sum() + member.sum() + 1e-6))
    _, terms = SpocoLoss(anchor_at_mean=True)(*row(f, labels))
    assert value(terms, "obj") == pytest.approx(np.mean(result), rel=1e-9)


def test_unlabeled_push_by_hand():
    # objects at 0 (mean 0) and at {9, 11} (mean 10); unlabeled pixels at 1 and 8.5
    # margin delta_d = 2: pixel 1 is 1 from mean 0 -> 1²; pixel 8.5 is 1.5 from mean 10 -> 0.5²
    f = [0, 9, 11, 1, 8.5]
    _, terms = SpocoLoss()(*row(f, [3, 4, 4, 0, 0]), generator=seeded())
    assert value(terms, "u_push") == pytest.approx((1.0 + 0.25) / (2 * 2))


def test_consistency_single_anchor_by_hand():
    # four unlabeled pixels share f = g = 0, so the first anchor covers them all (A = 1);
    # the soft masks span every non-ignored pixel, including the two labeled ones.
    f = [0, 0, 0, 0, 0.3, 3.0]
    g = [0, 0, 0, 0, 3.0, 3.0]
    s_f = np.array([1, 1, 1, 1, kernel(0.3), kernel(3.0)])
    s_g = np.array([1, 1, 1, 1, kernel(3.0), kernel(3.0)])
    dice = 1 - 2 * (s_f * s_g).sum() / ((s_f ** 2).sum() + (s_g ** 2).sum() + 1e-6)
    _, terms = SpocoLoss()(*row(f, [0, 0, 0, 0, 1, 2], g=g), generator=seeded())
    assert dice > 0.01
    assert value(terms, "u_con") == pytest.approx(dice, rel=1e-9)


# ---------------------------------------------------------------- brute force on random data


def numpy_terms(f, labels, delta_v=0.5, delta_d=2.0):
    """Straight from the specification's table, one object at a time (anchors at the means)."""
    ids = [i for i in np.unique(labels) if i != 0]
    means = np.array([f[labels == i].mean(0) for i in ids])
    unl = f[labels == 0]
    lab = f[labels != 0]
    pull = np.mean([
        np.mean(np.maximum(np.linalg.norm(f[labels == i] - m, axis=1) - delta_v, 0) ** 2)
        for i, m in zip(ids, means)
    ])
    pairs = [(k, m) for k in range(len(ids)) for m in range(len(ids)) if k != m]
    push = np.mean([max(2 * delta_d - np.linalg.norm(means[k] - means[m]), 0) ** 2
                    for k, m in pairs])
    reg = np.mean(np.linalg.norm(means, axis=1))
    obj = []
    for i, m in zip(ids, means):
        s = np.exp(-((lab - m) ** 2).sum(1) / (2 * SIGMA_SQ))
        member = labels[labels != 0] == i
        obj.append(1 - 2 * s[member].sum() / ((s ** 2).sum() + member.sum() + 1e-6))
    u_push = np.mean([
        np.mean(np.maximum(delta_d - np.linalg.norm(unl - m, axis=1), 0) ** 2) for m in means
    ])
    return dict(pull=pull, push=push, reg=reg, obj=np.mean(obj), u_push=u_push)


def test_terms_match_brute_force_on_random_embeddings():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, size=(12, 10))
    f = rng.normal(scale=1.5, size=(12, 10, 3))
    emb_f = torch.tensor(f.transpose(2, 0, 1)[None])
    _, terms = SpocoLoss(anchor_at_mean=True)(emb_f, emb_f, torch.tensor(labels[None]))
    expected = numpy_terms(f.reshape(-1, 3), labels.reshape(-1))
    for name, v in expected.items():
        assert value(terms, name) == pytest.approx(v, rel=1e-9), name


def test_no_consistency_anchor_when_unlabeled_region_is_below_stop_fraction():
    # 1 unlabeled pixel of 30 (3 %) is under the 5 % stop fraction
    labels = np.ones(30, dtype=int)
    labels[0] = 0
    f = np.linspace(0, 3, 30)
    g = f ** 1.5  # f and g disagree, so a drawn anchor gives a positive Dice loss
    _, terms = SpocoLoss()(*row(f, labels, g=g), generator=seeded())
    assert value(terms, "u_con") == 0.0
    _, terms = SpocoLoss(anchor_stop_fraction=0.0)(*row(f, labels, g=g), generator=seeded())
    assert value(terms, "u_con") > 0.0


# ---------------------------------------------------------------- empty and degenerate cases


def test_no_labeled_pixel_gives_zero_terms_and_backpropagates():
    emb_f, emb_g, labels = row([0.0, 0.5, 3.0, 4.0], [0, 0, 0, 0])
    total, terms = SpocoLoss()(emb_f, emb_g, labels, generator=seeded())
    for name in ("pull", "push", "reg", "obj", "u_push"):
        assert value(terms, name) == 0.0
    assert np.isfinite(value(terms, "u_con"))
    total.backward()
    assert torch.isfinite(emb_f.grad).all()


def test_everything_ignored_gives_zero_and_backpropagates():
    emb_f, emb_g, labels = row([0.0, 1.0, 2.0], [5, 5, 5])
    total, terms = SpocoLoss(ignore_id=5)(emb_f, emb_g, labels, generator=seeded())
    assert all(value(terms, name) == 0.0 for name in TERM_NAMES)
    total.backward()
    assert (emb_f.grad == 0).all()


def test_single_object_has_no_push_and_no_unlabeled_terms_when_fully_labeled():
    _, terms = SpocoLoss()(*row([0.0, 0.1, 1.0], [7, 7, 7]), generator=seeded())
    assert value(terms, "push") == 0.0
    assert value(terms, "u_push") == 0.0
    assert value(terms, "u_con") == 0.0
    assert value(terms, "pull") == pytest.approx((1.0 - 1.1 / 3 - 0.5) ** 2 / 3)


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_all_equal_embeddings_give_finite_terms_and_gradients(mode):
    emb_f = torch.ones(2, 4, 6, 5, requires_grad=True)
    emb_g = torch.ones(2, 4, 6, 5)
    labels = torch.zeros(2, 6, 5, dtype=torch.int64)
    labels[:, :2] = 1
    labels[:, 2:4, :3] = 2
    total, terms = SpocoLoss(mode=mode)(emb_f, emb_g, labels, generator=seeded())
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(emb_f.grad).all()
    assert value(terms, "pull") == 0.0
    assert value(terms, "push") == pytest.approx(16.0, rel=1e-5)  # (2 delta_d)², all pairs
    assert value(terms, "u_con") == pytest.approx(0.0, abs=1e-6)  # S^f = S^g = 1
    # every kernel is 1 everywhere, so Dice_k = 1 - 2 N_k / (N_labeled + N_k)
    sizes = [10, 6] if mode == "sparse" else [10, 6, 14]
    n_lab = sum(sizes)
    obj = np.mean([1 - 2 * n / (n_lab + n) for n in sizes])
    assert value(terms, "obj") == pytest.approx(obj, rel=1e-5)
    assert value(terms, "u_push") == pytest.approx(4.0 if mode == "sparse" else 0.0, rel=1e-5)


# ---------------------------------------------------------------- label conventions


def random_case(seed, shape=(9, 11), num_ids=5, emb_dim=3, batch=1):
    gen = seeded(seed)
    emb_f = torch.randn((batch, emb_dim) + shape, generator=gen, dtype=torch.float64) * 0.6
    emb_g = emb_f + 0.2 * torch.randn(emb_f.shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, num_ids, (batch,) + shape, generator=gen)
    return emb_f.requires_grad_(), emb_g, labels


def assert_same_terms(a, b):
    for name in TERM_NAMES:
        assert a[name].item() == pytest.approx(b[name].item(), rel=1e-9, abs=1e-12), name


def test_dense_mode_treats_zero_as_an_object_and_runs_consistency_on_it():
    emb_f, emb_g, labels = random_case(10)
    dense = SpocoLoss(mode="dense", anchor_at_mean=True)
    _, d_terms = dense(emb_f, emb_g, labels, generator=seeded(1))
    relabeled = torch.where(labels == 0, 99, labels)
    sparse = SpocoLoss(anchor_at_mean=True)
    _, s_all = sparse(emb_f, emb_g, relabeled, generator=seeded(1))
    for name in ("pull", "push", "reg", "obj"):
        assert value(d_terms, name) == pytest.approx(value(s_all, name), rel=1e-9)
    assert value(d_terms, "u_push") == 0.0
    # the consistency term is the one sparse mode computes when 0 marks the same pixels
    _, s_zero = sparse(emb_f, emb_g, labels, generator=seeded(1))
    assert value(d_terms, "u_con") == pytest.approx(value(s_zero, "u_con"), rel=1e-9)
    assert value(d_terms, "u_con") > 0


def test_background_id_is_an_object_in_sparse_mode_that_unlabeled_pixels_may_join():
    emb_f, emb_g, labels = random_case(11)
    painted = torch.where(labels == 4, 1000, labels)
    _, with_bg = SpocoLoss(background_id=1000)(emb_f, emb_g, painted, generator=seeded(2))
    _, plain = SpocoLoss()(emb_f, emb_g, painted, generator=seeded(2))
    for name in set(TERM_NAMES) - {"u_push"}:
        assert with_bg[name].item() == pytest.approx(plain[name].item(), rel=1e-9), name
    # u_push by hand: unlabeled pixels pushed from the means of objects 1-3 only, not 1000's
    rows, flat = emb_f.detach()[0].reshape(3, -1).T, painted.reshape(-1)
    means = torch.stack([rows[flat == k].mean(0) for k in (1, 2, 3)])
    distances = torch.cdist(rows[flat == 0], means)
    expected = (torch.clamp(2.0 - distances, min=0) ** 2).mean()
    assert with_bg["u_push"].item() == pytest.approx(expected.item(), rel=1e-9)
    assert with_bg["u_push"].item() != pytest.approx(plain["u_push"].item(), rel=1e-6)
    with pytest.raises(SpocoInputError, match="dense"):
        SpocoLoss(background_id=0)


def test_background_id_joins_the_consistency_region_in_dense_mode():
    emb_f, emb_g, labels = random_case(12)
    painted = torch.where(labels == 4, 0, labels)
    _, merged = SpocoLoss(mode="dense", anchor_at_mean=True)(
        emb_f, emb_g, painted, generator=seeded(3))
    _, with_bg = SpocoLoss(mode="dense", background_id=4, anchor_at_mean=True)(
        emb_f, emb_g, labels, generator=seeded(3))
    assert value(with_bg, "u_con") == pytest.approx(value(merged, "u_con"), rel=1e-9)


def test_ignored_pixels_act_like_absent_pixels():
    rng = np.random.default_rng(13)
    f = rng.normal(scale=0.5, size=(16, 2))
    g = f + rng.normal(scale=0.1, size=f.shape)
    labels = rng.integers(0, 4, size=16)
    labels[[2, 5, 11]] = 0
    keep = labels != 3
    loss = SpocoLoss(ignore_id=3, anchor_stop_fraction=0.0)
    emb_f, emb_g, lab = row(f, labels, g=g)
    total, full = loss(emb_f, emb_g, lab, generator=seeded(4))
    _, cropped = loss(*row(f[keep], labels[keep], g=g[keep]), generator=seeded(4))
    assert_same_terms(full, cropped)
    total.backward()
    ignored = torch.as_tensor(~keep)
    assert (emb_f.grad[0, :, 0, ignored] == 0).all()
    assert (emb_f.grad[0, :, 0, ~ignored] != 0).any()


def test_3d_input_equals_same_pixels_as_2d():
    emb_f, emb_g, labels = random_case(14, shape=(3, 4, 5))
    _, terms_3d = SpocoLoss()(emb_f, emb_g, labels, generator=seeded(5))
    _, terms_2d = SpocoLoss()(emb_f.reshape(1, 3, 12, 5), emb_g.reshape(1, 3, 12, 5),
                              labels.reshape(1, 12, 5), generator=seeded(5))
    assert_same_terms(terms_3d, terms_2d)


def test_large_non_consecutive_ids_and_unsigned_dtypes():
    emb_f, emb_g, labels = random_case(15)
    _, small = SpocoLoss(ignore_id=3)(emb_f, emb_g, labels, generator=seeded(6))
    big_ids = torch.tensor([0, 2 ** 40, 17, 2 ** 40 + 1, 5])[labels]
    _, big = SpocoLoss(ignore_id=2 ** 40 + 1)(emb_f, emb_g, big_ids, generator=seeded(6))
    assert_same_terms(small, big)
    huge = np.array([0, 2 ** 63 + 5, 2 ** 64 - 1, 2 ** 64 - 2, 9], dtype=np.uint64)
    labels_u64 = torch.from_numpy(huge[labels.numpy()])
    _, unsigned = SpocoLoss(ignore_id=2 ** 64 - 2)(emb_f, emb_g, labels_u64, generator=seeded(6))
    assert_same_terms(small, unsigned)
    labels_u8 = labels.to(torch.uint8)
    _, small_dtype = SpocoLoss(ignore_id=3)(emb_f, emb_g, labels_u8, generator=seeded(6))
    assert_same_terms(small, small_dtype)


def test_batch_terms_are_the_mean_of_per_image_terms():
    emb_f, emb_g, labels = random_case(16, batch=2)
    loss = SpocoLoss(anchor_at_mean=True, anchor_stop_fraction=0.0, max_anchors=1)
    _, both = loss(emb_f, emb_g, labels)
    _, first = loss(emb_f[:1], emb_g[:1], labels[:1])
    _, second = loss(emb_f[1:], emb_g[1:], labels[1:])
    for name in ("pull", "push", "reg", "obj", "u_push"):
        expected = (value(first, name) + value(second, name)) / 2
        assert value(both, name) == pytest.approx(expected, rel=1e-9)


def test_total_is_the_weighted_sum_of_unweighted_terms():
    emb_f, emb_g, labels = random_case(17)
    weights = dict(alpha=0.5, beta=2.0, w_reg=0.1, w_obj=3.0, w_upush=0.7, w_ucon=1.3)
    total, terms = SpocoLoss(**weights)(emb_f, emb_g, labels, generator=seeded(7))
    _, plain = SpocoLoss()(emb_f, emb_g, labels, generator=seeded(7))
    assert_same_terms(terms, plain)
    expected = sum(w * value(terms, n) for w, n in zip(weights.values(), TERM_NAMES))
    assert total.item() == pytest.approx(expected, rel=1e-9)


def test_seeded_generator_reproduces_and_seeds_differ():
    emb_f, emb_g, labels = random_case(18, shape=(16, 16), num_ids=8)
    loss = SpocoLoss()
    _, a = loss(emb_f, emb_g, labels, generator=seeded(9))
    _, b = loss(emb_f, emb_g, labels, generator=seeded(9))
    for name in TERM_NAMES:
        assert torch.equal(a[name], b[name])
    _, c = loss(emb_f, emb_g, labels, generator=seeded(10))
    assert value(a, "obj") != value(c, "obj")


def test_evaluation_without_gradient_gives_the_same_terms():
    emb_f, emb_g, labels = random_case(23)
    _, with_grad = SpocoLoss()(emb_f, emb_g, labels, generator=seeded(14))
    with torch.no_grad():
        total, without = SpocoLoss()(emb_f, emb_g, labels, generator=seeded(14))
    assert not total.requires_grad
    assert_same_terms(with_grad, without)


def test_half_precision_embeddings_are_computed_in_float32():
    emb_f, emb_g, labels = random_case(24)
    _, reference = SpocoLoss()(emb_f.float(), emb_g.float(), labels, generator=seeded(16))
    half_f = emb_f.detach().to(torch.bfloat16).requires_grad_()
    total, terms = SpocoLoss()(half_f, emb_g.to(torch.bfloat16), labels, generator=seeded(16))
    total.backward()
    assert half_f.grad.dtype == torch.bfloat16 and torch.isfinite(half_f.grad.float()).all()
    for name in TERM_NAMES:
        assert terms[name].dtype == torch.float32
        assert value(terms, name) == pytest.approx(value(reference, name), rel=0.05, abs=1e-3)


# ---------------------------------------------------------------- gradients


def test_g_embeddings_never_receive_gradient():
    emb_f, emb_g, labels = random_case(19)
    emb_g.requires_grad_()
    total, _ = SpocoLoss()(emb_f, emb_g, labels, generator=seeded(11))
    total.backward()
    assert emb_g.grad is None
    assert emb_f.grad.abs().sum() > 0


def unlabeled_gradient(weights, seed=20):
    emb_f, emb_g, labels = random_case(seed, shape=(10, 10), num_ids=4)
    emb_f.data *= 0.3  # keep pixels within the kernels' and margins' reach
    emb_g.data = emb_f.data + 0.05 * torch.randn(emb_f.shape, dtype=emb_f.dtype)
    total, _ = SpocoLoss(**weights)(emb_f, emb_g, labels, generator=seeded(12))
    total.backward()
    return emb_f.grad[:, :, labels[0] == 0], emb_f.grad[:, :, labels[0] != 0]


def test_only_unlabeled_push_and_consistency_reach_unlabeled_pixels():
    off = dict(w_upush=0.0, w_ucon=0.0)
    grad_unl, grad_lab = unlabeled_gradient(off)
    assert (grad_unl == 0).all()
    assert (grad_lab != 0).any()
    others_off = dict(alpha=0.0, beta=0.0, w_reg=0.0, w_obj=0.0)
    grad_unl, _ = unlabeled_gradient(dict(others_off, w_ucon=0.0))
    assert (grad_unl != 0).any()
    grad_unl, _ = unlabeled_gradient(dict(others_off, w_upush=0.0))
    assert (grad_unl != 0).any()


def test_gradient_matches_finite_differences():
    emb_f, emb_g, labels = random_case(21, shape=(4, 5), num_ids=3)
    loss = SpocoLoss(anchor_stop_fraction=0.0)

    def total(f):
        return loss(f, emb_g, labels, generator=seeded(13))[0]

    assert torch.autograd.gradcheck(total, (emb_f,), fast_mode=True)


# ---------------------------------------------------------------- settings and inputs


def test_config_round_trips_and_is_plain():
    loss = SpocoLoss(delta_v=0.4, mode="dense", background_id=np.int64(7), max_anchors=5)
    rebuilt = SpocoLoss(**loss.config)
    assert rebuilt.config == loss.config
    assert loss.config["background_id"] == 7 and type(loss.config["background_id"]) is int
    assert set(loss.config) >= {"delta_v", "delta_d", "kernel_threshold", "mode", "ignore_id"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="full"), "sparse"),
    (dict(delta_v=0.0), "positive"),
    (dict(delta_d=-1.0), "positive"),
    (dict(kernel_threshold=1.0), "between 0 and 1"),
    (dict(w_obj=-1.0), "negative"),
    (dict(alpha=float("nan")), "finite"),
    (dict(max_anchors=2.5), "integer"),
    (dict(anchor_stop_fraction=1.5), "fraction"),
    (dict(ignore_id=1.5), "integer"),
    (dict(ignore_id=4, background_id=4), "different"),
])
def test_invalid_settings_raise(kwargs, match):
    with pytest.raises(SpocoInputError, match=match):
        SpocoLoss(**kwargs)


def test_invalid_inputs_raise():
    emb = torch.zeros(1, 2, 4, 4)
    loss = SpocoLoss()
    with pytest.raises(SpocoInputError, match="integers"):
        loss(emb, emb, torch.zeros(1, 4, 4))
    with pytest.raises(SpocoInputError, match="shape"):
        loss(emb, emb, torch.zeros(1, 4, 5, dtype=torch.int64))
    with pytest.raises(SpocoInputError, match="differ"):
        loss(emb, torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64))
    with pytest.raises(SpocoInputError, match="unsqueeze"):
        loss(emb[0], emb[0], torch.zeros(4, 4, dtype=torch.int64))
