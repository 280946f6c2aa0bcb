"""Choosing the torch device: CUDA when there is one, then Apple's MPS, then the CPU."""

from __future__ import annotations

import torch

from .errors import SpocoInputError


def available_devices() -> list[str]:
    """Return the device names usable on this machine, best first (always ends with ``"cpu"``)."""
    names = []
    if torch.cuda.is_available():
        names.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"cpu"`` into a usable device.

    Raises
    ------
    SpocoInputError
        If the named device does not exist on this machine.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "", "auto"):
        return torch.device(available_devices()[0])
    kind = name.split(":")[0]
    if kind not in available_devices():
        raise SpocoInputError(
            f"Device {name!r} is not available on this machine; choose one of "
            f"{['auto', *available_devices()]}."
        )
    return torch.device(name)
