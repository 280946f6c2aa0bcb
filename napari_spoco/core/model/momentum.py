"""The momentum network g: an exponential moving average of f's parameters.

After every optimizer step ``theta_g <- m * theta_g + (1 - m) * theta_f`` (MoCo, and SPOCO's
reference code). Only *parameters* are averaged. Buffers (batch-norm running statistics) are g's
own: g runs in train mode during training, so batch norm normalises with the statistics of g's
own batch, exactly as f does, and g's running statistics track g's activations, which is what
g needs when it is later evaluated in eval mode (consistency clustering). Averaging f's running
statistics instead would pair g's weights with statistics of another network's activations.
Group norm, the default, has no buffers at all.
"""

from __future__ import annotations

import copy

import torch


def make_momentum_copy(model: torch.nn.Module) -> torch.nn.Module:
    """Return a deep copy of ``model`` that takes no gradient (g starts equal to f)."""
    momentum = copy.deepcopy(model)
    momentum.requires_grad_(False)
    return momentum


@torch.no_grad()
def momentum_update(momentum: torch.nn.Module, model: torch.nn.Module, m: float) -> None:
    """Set every parameter of ``momentum`` to ``m * momentum + (1 - m) * model`` in place.

    Parameters
    ----------
    momentum : torch.nn.Module
        g, updated in place.
    model : torch.nn.Module
        f, read only; must have the same architecture as g.
    m : float
        Momentum coefficient in [0, 1): 0 copies f, values near 1 change g slowly.
    """
    g_params = list(momentum.parameters())
    f_params = [param.detach() for param in model.parameters()]
    if len(g_params) != len(f_params):
        raise ValueError("momentum_update needs two networks of the same architecture")
    for g_param, f_param in zip(g_params, f_params):
        g_param.mul_(m).add_(f_param, alpha=1.0 - m)
