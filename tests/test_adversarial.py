"""WGAN-GP critic term: penalty math, critic learning, warm-up, Trainer and checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from training_support import blobs, tiny

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.loss import TERM_NAMES
from napari_spoco.core.model.checkpoint import load_checkpoint, load_model
from napari_spoco.core.training import Trainer, TrainingConfig
from napari_spoco.core.training.adversarial import (
    AdversarialSettings,
    Critic,
    WganGp,
    gradient_penalty,
    kernel_scale,
    object_masks,
)


class HalfSquaredNorm(torch.nn.Module):
    """D(x) = |x|² / 2 per sample: its gradient is x itself."""

    def forward(self, x):
        return 0.5 * (x.flatten(1) ** 2).sum(1)


def test_gradient_penalty_matches_hand_computation():
    # linear critic D(x) = w·x: the gradient is w everywhere, penalty (|w| - 1)²
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        linear[1].weight.copy_(torch.tensor([[3.0, 0.0, 4.0, 0.0]]))  # |w| = 5
    real, fake = torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2)
    assert gradient_penalty(linear, real, fake).item() == pytest.approx(16.0)
    # D = |x|²/2: gradient x_hat; with real == fake the interpolation is that mask whatever eps
    masks = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.5)])  # norms 2 and 1
    penalty = gradient_penalty(HalfSquaredNorm(), masks, masks.clone())
    assert penalty.item() == pytest.approx(((2 - 1) ** 2 + (1 - 1) ** 2) / 2)
    # the penalty keeps its graph (create_graph), so it trains the critic's parameters
    critic = Critic(2, (4,))
    gradient_penalty(critic, masks, torch.zeros_like(masks)).backward()
    weights = [p for p in critic.parameters() if p.dim() > 1]  # biases cannot move a gradient
    assert weights and all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def disks(count, rng, size=32):
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((count, 1, size, size), np.float32)
    for index in range(count):
        cy, cx = rng.uniform(8, size - 8, 2)
        radius = rng.uniform(4, 8)
        out[index, 0] = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    return out


def test_critic_learns_to_separate_binary_masks_from_blurred_ones():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def batch(count):
        real = disks(count, rng)
        fake = ndimage.gaussian_filter(real, sigma=(0, 0, 2, 2))
        return torch.from_numpy(real), torch.from_numpy(fake)

    wgan = WganGp(Critic(2, (8, 16)), AdversarialSettings(critic_iterations=5, critic_lr=3e-3))

    def gap():
        real, fake = batch(32)
        with torch.no_grad():
            return (wgan.critic(real).mean() - wgan.critic(fake).mean()).item()

    before = gap()
    for _ in range(15):
        wgan.train_critic(*batch(8))
    after = gap()
    # held-out masks: the critic scores binary masks clearly above blurred ones
    assert after > 0.5 and after > before + 0.5, (before, after)


def test_object_masks_are_the_loss_kernel_around_the_object_mean():
    emb = torch.randn(2, 3, 6, 5)
    labels = torch.zeros(2, 6, 5, dtype=torch.long)
    labels[0, :2] = 4
    labels[1, 3:, 2:] = 4  # same id in another image: another object
    labels[1, 0, 0] = 9  # ignored pixel
    scale = kernel_scale(0.5, 0.9)
    fake, real = object_masks(emb, labels, scale, ignore_id=9, max_objects=10)
    assert fake.shape == real.shape == (2, 1, 6, 5)
    assert sorted(real.sum((1, 2, 3)).tolist()) == [9.0, 10.0]
    for mask, soft in zip(real, fake):
        image = 0 if mask[0, 0, 0] else 1
        anchor = emb[image][:, mask[0].bool()].mean(1)
        expected = torch.exp(-scale * ((emb[image] - anchor[:, None, None]) ** 2).sum(0))
        if image == 1:
            expected[0, 0] = 0  # ignore pixel
        torch.testing.assert_close(soft[0], expected)
    # crops centred on the centroid, zero where they leave the patch
    crop_fake, crop_real = object_masks(emb, labels, scale, ignore_id=9, max_objects=10,
                                        crop_shape=(4, 3))
    for soft, mask, small_soft, small_mask in zip(fake, real, crop_fake, crop_real):
        ys, xs = np.nonzero(mask[0].numpy())
        y0, x0 = int(np.round(ys.mean())) - 2, int(np.round(xs.mean())) - 1
        padded = np.pad(soft[0].numpy(), 4)[y0 + 4:y0 + 8, x0 + 4:x0 + 7]
        np.testing.assert_allclose(small_soft[0].numpy(), padded, rtol=1e-6)
        assert small_mask.sum() == np.pad(mask[0].numpy(), 4)[y0 + 4:y0 + 8, x0 + 4:x0 + 7].sum()
    fewer, _ = object_masks(emb, labels, scale, max_objects=1)
    assert fewer.shape[0] == 1
    none, _ = object_masks(emb, torch.zeros_like(labels), scale)
    assert none.shape[0] == 0


def test_generator_term_moves_f_only_after_the_warm_up():
    # SPOCO terms off and no weight decay: f changes only through the adversarial term
    off = dict(alpha=0, beta=0, w_reg=0, w_obj=0, w_upush=0, w_ucon=0)
    config = tiny(iterations=4, weight_decay=0.0, augment=False, loss=off, lr=1e-2,
                  foreground=False, adversarial=AdversarialSettings(weight=1.0, warmup_iterations=2,
                                                  critic_iterations=2, features=(4, 8)))
    trainer = Trainer([blobs()], config)
    snapshots = [[p.detach().clone() for p in trainer.model.parameters()]]
    critic_before = [p.detach().clone() for p in trainer.adversarial.critic.parameters()]
    reports = []
    for report in trainer.steps():
        reports.append(report)
        snapshots.append([p.detach().clone() for p in trainer.model.parameters()])
    changed = [any(not torch.equal(a, b) for a, b in zip(before, after))
               for before, after in zip(snapshots, snapshots[1:])]
    assert changed == [False, False, True, True]
    # the critic trains during the warm-up already
    assert any(not torch.equal(a, b)
               for a, b in zip(critic_before, trainer.adversarial.critic.parameters()))
    for report in reports:
        assert set(report.terms) == set(TERM_NAMES) | {"adv", "critic"}
        assert np.isfinite(list(report.terms.values())).all()
    # after the warm-up the total holds weight * adv (every SPOCO weight is 0)
    assert reports[0].loss == 0.0
    assert reports[3].loss == pytest.approx(reports[3].terms["adv"], rel=1e-5)


def test_trainer_checkpoint_keeps_the_critic_and_old_configs_load(tmp_path):
    settings = AdversarialSettings(warmup_iterations=1, critic_iterations=1, features=(4, 8))
    trainer = Trainer([blobs()], tiny(iterations=2, adversarial=settings))
    list(trainer.steps())
    path = trainer.save(tmp_path / "adv.pt")
    checkpoint = load_checkpoint(path)
    assert "adversarial_state" in checkpoint
    resumed = Trainer.from_checkpoint(path, [blobs()], iterations=3)
    assert resumed.config.adversarial == settings
    for a, b in zip(trainer.adversarial.critic.state_dict().values(),
                    resumed.adversarial.critic.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.adversarial.optimizer.state_dict()["state"]  # Adam moments came back
    assert len(list(resumed.steps())) == 1
    assert load_model(path, "cpu").model is not None  # the ordinary loader ignores the critic

    # a checkpoint config without the key (older napari-spoco) means "off"
    config = json.loads(json.dumps(tiny().to_dict()))
    config.pop("adversarial")
    assert TrainingConfig.from_dict(config).adversarial is None
    plain = Trainer([blobs()], tiny(iterations=1))
    assert plain.adversarial is None and "adversarial_state" not in plain.checkpoint_payload()
    with pytest.raises(SpocoInputError, match="critic_iterations"):
        AdversarialSettings(critic_iterations=0)


def test_adversarial_training_runs_in_3d():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(8, 24, 24)).astype(np.float32)
    labels = np.zeros((8, 24, 24), np.uint16)
    labels[2:6, 4:12, 4:12], labels[1:7, 14:22, 10:20] = 1, 2
    image[labels > 0] += 2
    config = TrainingConfig(features=(8, 16), patch_shape=(8, 16, 16), batch_size=1,
                            iterations=2, device="cpu", mode="dense",
                            adversarial={"warmup_iterations": 0, "critic_iterations": 1,
                                         "features": [4, 8, 8]})
    reports = list(Trainer([(image, labels)], config).steps())
    assert len(reports) == 2
    assert all(np.isfinite(list(r.terms.values())).all() for r in reports)
