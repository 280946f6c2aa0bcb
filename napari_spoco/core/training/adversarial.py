"""Optional adversarial term: a WGAN-GP critic on single-object masks (SPOCO appendix A.1).

The embedding network f acts as a generator of object masks: for a labeled object k with anchor
``a_k`` its soft mask is ``S_k(i) = exp(-|e_i - a_k|² / (2 sigma²))`` over the pixels of the
training patch (the same kernel as the object Dice term). A critic D learns to tell these soft
masks ("fake") from the binary ground-truth masks ``M_k`` ("real") with the WGAN-GP objective

    V_D = E[D(fake)] - E[D(real)] + lambda E[(|grad D(x_hat)| - 1)²],

``x_hat`` a random interpolation of a real and a fake mask, and f receives the generator term
``L_wgan = -E[D(fake)]`` with weight zeta on top of the SPOCO loss once a warm-up is over.

What the critic sees: a fixed-size crop centred on the object's centroid, as the paper's
40×64×64 crops around each ovule cell: by default 48×48 in 2D and 16×48×48 in 3D, zero-padded
where it leaves the patch. The crop holds the object and its neighbourhood (the soft mask
leaking into neighbours is exactly what the critic should see) at a fraction of the cost of the
whole patch; with ``crop_shape=None`` :func:`object_masks` returns whole patches, which the
critic also takes (it ends in a global average pool). Pixels with the ignore id are zeroed in
both masks, so they tell the critic nothing. See
``docs/method.md`` ("Adversarial term") for the other choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SpocoInputError

__all__ = ["AdversarialSettings", "Critic", "WganGp", "object_masks"]


@dataclass
class AdversarialSettings:
    """Settings of the adversarial term (``TrainingConfig.adversarial``; None switches it off).

    Attributes
    ----------
    weight : float
        zeta, weight of the generator term ``-E[D(fake)]`` in f's loss (paper: 0.1).
    warmup_iterations : int
        Steps of f before the generator term switches on; the critic trains from the first
        step so it is informative by then (paper: 50K of its long runs).
    critic_iterations : int
        Critic updates per step of f (paper: n_critic = 5).
    critic_lr : float
        Adam learning rate of the critic (paper: 1e-4, betas (0.5, 0.9)).
    gp_weight : float
        lambda of the gradient penalty (paper: 10).
    max_objects : int
        Most objects per step turned into masks (drawn at random from the batch's labeled
        objects); bounds the critic's cost.
    features : tuple of int
        Channels of the critic's conv blocks (paper, Table 9: 64, 128, 256, 512).
    crop_shape : tuple of int or None
        Spatial size of the crop around each object; None: (48, 48) in 2D, (16, 48, 48) in 3D.
    """

    weight: float = 0.1
    warmup_iterations: int = 1000
    critic_iterations: int = 5
    critic_lr: float = 1e-4
    gp_weight: float = 10.0
    max_objects: int = 8
    features: tuple[int, ...] = (8, 16, 32)
    crop_shape: tuple[int, ...] | None = None

    def __post_init__(self):
        self.features = tuple(int(f) for f in self.features)
        if self.crop_shape is not None:
            self.crop_shape = tuple(int(c) for c in self.crop_shape)
        problems = []
        if not self.weight >= 0:
            problems.append(f"weight must be >= 0, got {self.weight}")
        if self.warmup_iterations < 0:
            problems.append(f"warmup_iterations must be >= 0, got {self.warmup_iterations}")
        if self.critic_iterations < 1:
            problems.append(f"critic_iterations must be >= 1, got {self.critic_iterations}")
        if not self.critic_lr > 0:
            problems.append(f"critic_lr must be positive, got {self.critic_lr}")
        if not self.gp_weight >= 0:
            problems.append(f"gp_weight must be >= 0, got {self.gp_weight}")
        if self.max_objects < 1:
            problems.append(f"max_objects must be >= 1, got {self.max_objects}")
        if not self.features or min(self.features) < 1:
            problems.append(f"features must be positive channel counts, got {self.features}")
        if self.crop_shape is not None and (not self.crop_shape or min(self.crop_shape) < 1):
            problems.append(f"crop_shape must be positive sizes, got {self.crop_shape}")
        if problems:
            raise SpocoInputError(
                "Invalid adversarial settings: " + "; ".join(problems)
                + ". The paper uses weight 0.1, 5 critic iterations, gp_weight 10, critic_lr 1e-4."
            )


def default_crop_shape(ndim: int) -> tuple[int, ...]:
    """The crop around each object when ``AdversarialSettings.crop_shape`` is None."""
    return (48, 48) if ndim == 2 else (16, 48, 48)


class Critic(nn.Module):
    """WGAN critic on one-channel masks ``(N, 1, [Z,] Y, X)`` in [0, 1]; returns ``(N,)`` scores.

    Conv blocks (two 3×3(×3) convolutions, leaky ReLU 0.01, no normalisation: batch statistics
    would couple the samples, which the per-sample gradient penalty forbids) with max pooling
    between them, a global average pool and one linear unit, after Table 9 of the paper.
    """

    def __init__(self, ndim: int = 2, features=(8, 16, 32)):
        super().__init__()
        if ndim not in (2, 3):
            raise SpocoInputError(f"The critic is 2D or 3D, got ndim={ndim}.")
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        pool = nn.MaxPool2d if ndim == 2 else nn.MaxPool3d
        layers, channels = [], 1
        for index, out in enumerate(features):
            if index:
                # ceil_mode: a thin 3D patch (few z slices) must not pool down to nothing
                layers.append(pool(2, ceil_mode=True))
            layers += [conv(channels, out, 3, padding=1), nn.LeakyReLU(0.01),
                       conv(out, out, 3, padding=1), nn.LeakyReLU(0.01)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 1)
        self.ndim, self.features = ndim, tuple(int(f) for f in features)

    @property
    def config(self) -> dict:
        """Constructor arguments (``Critic(**critic.config)`` rebuilds the architecture)."""
        return {"ndim": self.ndim, "features": list(self.features)}

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        hidden = self.body(masks)
        return self.head(hidden.flatten(2).mean(-1)).squeeze(-1)


def object_masks(emb, labels, inv_two_sigma_sq, *, background_id=None,
                 ignore_id=None, max_objects=8, crop_shape=None, generator=None):
    """Soft masks S_k of f and binary masks M_k of up to ``max_objects`` labeled objects.

    Parameters
    ----------
    emb : torch.Tensor
        ``(B, E, *spatial)`` embeddings of f (gradient flows into the soft masks).
    labels : torch.Tensor
        ``(B, *spatial)`` integer labels.
    inv_two_sigma_sq : float
        ``1 / (2 sigma²)`` of the loss kernel.
    background_id, ignore_id
        The label conventions of the loss; label 0 (unlabeled in sparse mode, background in
        dense mode), the background id and the ignore id are no objects.
    max_objects : int
        Objects drawn uniformly at random (without replacement) from all objects of the batch.
    crop_shape : tuple of int, optional
        Return crops of this spatial size centred on each object's centroid (zero outside the
        patch) instead of whole patches.
    generator : torch.Generator, optional
        Source of the draw.

    Returns
    -------
    fake, real : torch.Tensor
        ``(K, 1, *spatial)`` (or ``(K, 1, *crop_shape)``) soft and binary masks,
        ``K <= max_objects`` (0 when the batch has no labeled object). The anchor ``a_k`` is
        the object's mean embedding.
    """
    batch, channels = emb.shape[:2]
    labels = labels.to(emb.device).long()
    flat_labels = labels.reshape(batch, -1)
    valid = torch.ones_like(flat_labels, dtype=torch.bool)
    if ignore_id is not None:
        valid &= flat_labels != ignore_id
    is_object = valid & (flat_labels != 0)
    if background_id is not None:
        is_object &= flat_labels != background_id
    # one (image, label) key per object of the batch
    span = int(flat_labels.max().item()) + 1 if flat_labels.numel() else 1
    keys = flat_labels + span * torch.arange(batch, device=emb.device)[:, None]
    object_keys = torch.unique(keys[is_object])
    if object_keys.numel() > max_objects:
        pick = torch.randperm(object_keys.numel(), generator=generator)[:max_objects]
        object_keys = object_keys[pick.to(object_keys.device)]
    spatial = tuple(emb.shape[2:])
    if object_keys.numel() == 0:
        empty = emb.new_zeros((0, 1) + spatial)
        return empty, empty.detach()
    images = torch.div(object_keys, span, rounding_mode="floor")
    real = (keys[images] == object_keys[:, None]) & is_object[images]  # (K, pixels)
    rows = emb.reshape(batch, channels, -1)[images]  # (K, E, pixels)
    real_f = real.to(rows.dtype)
    anchors = (rows * real_f[:, None]).sum(-1) / real_f.sum(-1, keepdim=True)
    sq_dist = ((rows - anchors[:, :, None]) ** 2).sum(1)
    fake = torch.exp(-inv_two_sigma_sq * sq_dist) * valid[images].to(rows.dtype)
    shape = (-1, 1) + spatial
    fake, real_f = fake.reshape(shape), real_f.reshape(shape)
    if crop_shape is None:
        return fake, real_f
    return crop_around_objects(fake, real_f, tuple(crop_shape))


def crop_around_objects(fake, real, crop_shape):
    """Crops of ``crop_shape`` centred on each real mask's centroid; zero outside the patch.

    One gather over broadcast index grids (no loop over objects), so gradients flow into the
    cropped soft masks.
    """
    spatial = real.shape[2:]
    if len(crop_shape) != len(spatial):
        raise SpocoInputError(
            f"crop_shape {crop_shape} has {len(crop_shape)} axes but the patches have "
            f"{len(spatial)}; give one size per spatial axis."
        )
    count = real.shape[0]
    mass = real.flatten(1).sum(1).clamp_min(1.0)
    index = [torch.arange(count, device=real.device)]
    inside = torch.ones((count,) + tuple(crop_shape), dtype=torch.bool, device=real.device)
    for axis, (size, crop) in enumerate(zip(spatial, crop_shape)):
        coords = torch.arange(size, device=real.device, dtype=real.dtype)
        others = [1 + other for other in range(len(spatial)) if other != axis]
        profile = real[:, 0].sum(others) if others else real[:, 0]  # (K, size) mass per slice
        centre = (profile * coords).sum(-1) / mass
        start = torch.round(centre).long() - crop // 2
        positions = start[:, None] + torch.arange(crop, device=real.device)  # (K, crop)
        view = [count] + [1] * len(crop_shape)
        view[1 + axis] = crop
        inside &= ((positions >= 0) & (positions < size)).reshape(view)
        index.append(positions.clamp(0, size - 1).reshape(view))
    index[0] = index[0].reshape([count] + [1] * len(crop_shape))
    keep = inside.unsqueeze(1).to(real.dtype)
    crop_fake = fake[:, 0][tuple(index)].unsqueeze(1) * keep
    crop_real = real[:, 0][tuple(index)].unsqueeze(1) * keep
    return crop_fake, crop_real


def gradient_penalty(critic: nn.Module, real, fake, generator=None):
    """``E[(|grad D(x_hat)|_2 - 1)²]``, ``x_hat = eps real + (1 - eps) fake``, eps ~ U(0, 1).

    The graph is kept (``create_graph``) so the penalty trains the critic.
    """
    eps_shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    eps = torch.rand(eps_shape, generator=generator).to(real.device, real.dtype)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    norms = grad.flatten(1).norm(dim=1)
    return ((norms - 1.0) ** 2).mean()


class WganGp:
    """The critic, its own Adam optimizer (betas 0.5, 0.9) and the two WGAN-GP objectives.

    Parameters
    ----------
    critic : Critic
        The critic network (moved to its device by the caller).
    settings : AdversarialSettings
        lr, gradient-penalty weight, critic iterations.
    seed : int
        Seeds the generator of the interpolation weights and of the object draw.
    """

    def __init__(self, critic: Critic, settings: AdversarialSettings, seed: int = 0):
        self.critic = critic
        self.settings = settings
        self.optimizer = torch.optim.Adam(critic.parameters(), lr=settings.critic_lr,
                                          betas=(0.5, 0.9))
        self.generator = torch.Generator().manual_seed(int(seed))

    def critic_loss(self, real, fake):
        """``E[D(fake)] - E[D(real)] + lambda GP`` (fake is detached); returns (loss, penalty)."""
        fake = fake.detach()
        wasserstein = self.critic(fake).mean() - self.critic(real).mean()
        penalty = gradient_penalty(self.critic, real, fake, self.generator)
        return wasserstein + self.settings.gp_weight * penalty, penalty

    def train_critic(self, real, fake) -> float:
        """``critic_iterations`` Adam steps on this batch of masks; returns the last critic loss.

        Every iteration reuses the step's masks with fresh interpolation weights: new masks
        would need a forward pass of f per iteration, the costly part on a CPU.
        """
        self.critic.train()
        self.critic.requires_grad_(True)
        loss = torch.zeros(())
        for _ in range(self.settings.critic_iterations):
            loss, _ = self.critic_loss(real, fake)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())

    def generator_loss(self, fake):
        """``-E[D(fake)]``; gradient flows into ``fake`` (and so into f), not into the critic."""
        self.critic.requires_grad_(False)
        try:
            return -self.critic(fake).mean()
        finally:
            self.critic.requires_grad_(True)

    def state_dict(self) -> dict:
        """Critic weights and architecture, optimizer and generator state (for checkpoints)."""
        return {
            "architecture": self.critic.config,
            "critic_state": self.critic.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`state_dict`; the architecture must match."""
        if dict(state.get("architecture", {})) != self.critic.config:
            raise SpocoInputError(
                f"The checkpoint's critic {dict(state.get('architecture', {}))} differs from "
                f"the configured one {self.critic.config}; keep the adversarial features setting "
                "of the saved run."
            )
        self.critic.load_state_dict(state["critic_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.generator.set_state(state["generator_state"])


def kernel_scale(delta_v: float, kernel_threshold: float) -> float:
    """``1 / (2 sigma²)`` with ``sigma² = -delta_v² / (2 ln t)``, as in the loss."""
    return 1.0 / (2.0 * (-delta_v ** 2 / (2.0 * math.log(kernel_threshold))))
