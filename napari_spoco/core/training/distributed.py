"""Data-parallel training over several processes, and mixed precision on GPUs.

Distributed training (``torch.distributed``, DistributedDataParallel)
--------------------------------------------------------------------
Start ``napari-spoco train`` under ``torchrun`` (``torchrun --nproc-per-node 2 -m
napari_spoco.cli train ...``): the launcher sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and
:func:`init_from_environment` joins the process group (NCCL on GPUs, gloo on the CPU). A
:class:`~napari_spoco.core.training.Trainer` built while a process group is initialised
trains data-parallel:

- ``batch_size`` is per process; the global batch is ``batch_size × world_size``. Every rank
  draws the *global* batch from the shared, identically seeded patch stream and keeps its own
  slice (:func:`rank_batch`), so the patches are those of one process with the combined batch.
  The price is that each rank augments the whole global batch on its CPU.
- The SPOCO loss is a mean of per-image terms, so DDP's gradient average over equal-sized
  rank batches equals the combined-batch gradient. Two parts are not image-wise: the random
  anchor draws (each rank has its own stream, :func:`loss_seed`) and the foreground head's
  class balancing (done per rank batch). With ``anchor_at_mean=True``, consistency weight 0 and
  no foreground head a 2-rank run reproduces the 1-process run (tests/test_distributed.py).
- Loss values are averaged over ranks (:func:`average_values`): every rank reports, schedules
  and checks finiteness on the same global numbers, so all ranks stop together.
- f's parameters are kept equal by DDP (same start, same averaged gradient, same Adam step), so
  updating g from f on every rank keeps g equal too (tested).
- Only rank 0 writes checkpoints and prints.

Mixed precision
---------------
:func:`amp_dtype` decides once: on CUDA bfloat16 autocast where the GPU supports it, else
float16 with a gradient scaler; off on the CPU and MPS unless asked for
(``TrainingConfig.mixed_precision``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..errors import SpocoInputError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        """Whether gradients are averaged over several processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    def describe(self) -> str:
        """``"rank 0 of 2 (gloo)"`` or ``"single process"``."""
        if not self.active:
            return "single process"
        return f"rank {self.rank} of {self.world_size} ({self.backend})"


def current_context() -> DistContext:
    """The :class:`DistContext` of the initialised process group (or a single process).

    Examples
    --------
    >>> current_context().world_size if not dist.is_initialized() else 1
    1
    """
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_backend())


def init_from_environment(device: str | None = "auto") -> DistContext:
    """Join the process group ``torchrun`` describes in the environment; no-op otherwise.

    NCCL when the run uses CUDA, gloo otherwise. Returns the resulting context.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current_context()
    if not dist.is_available():
        raise SpocoInputError("This torch build has no torch.distributed; run one process.")
    cuda = torch.cuda.is_available() and (device or "auto").split(":")[0] in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return current_context()


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, context: DistContext) -> torch.device:
    """``cuda`` → ``cuda:LOCAL_RANK`` in a distributed run, so each rank has its own GPU."""
    if context.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", context.local_rank)
    return device


def check_supported(config, context: DistContext) -> None:
    """Refuse settings data-parallel training does not handle (``SpocoInputError``)."""
    if context.active and config.adversarial is not None:
        raise SpocoInputError(
            "The adversarial term is not supported in distributed training (its critic would "
            "not be synchronised); switch it off or train in one process."
        )
    if context.active and config.batch_size < 1:
        raise SpocoInputError("batch_size must be at least 1 per process.")


def wrap_model(model: torch.nn.Module, context: DistContext, device: torch.device):
    """The module to call for f's forward pass: DDP around ``model`` when distributed."""
    if not context.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def loss_seed(seed: int, context: DistContext, iteration: int = 0) -> int:
    """Seed of a rank's anchor-draw generator: ``seed`` on rank 0, a derived one elsewhere.

    Examples
    --------
    >>> loss_seed(3, DistContext()), loss_seed(3, DistContext(1, 2)) != 3
    (3, True)
    """
    if context.rank == 0:
        return int(seed)
    state = np.random.SeedSequence([int(seed), context.rank, int(iteration)]).generate_state(1)
    return int(state[0])


def rank_batch(data, batch_size: int, rng, context: DistContext):
    """This rank's ``batch_size`` patches of the global batch (all of it in one process).

    Every rank draws the same ``batch_size × world_size`` patches from the shared stream
    ``rng`` and keeps slice ``rank``; the stream then stays equal on every rank.
    """
    if not context.active:
        return data.sample_batch(batch_size, rng)
    batch = data.sample_batch(batch_size * context.world_size, rng)
    part = slice(context.rank * batch_size, (context.rank + 1) * batch_size)
    return tuple(tensor[part].contiguous() for tensor in batch)


def average_values(values: list[float], context: DistContext) -> list[float]:
    """Mean of each value over the ranks (unchanged in one process)."""
    if not context.active:
        return values
    backend_device = "cuda" if context.backend == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(tensor)
    return (tensor / context.world_size).cpu().tolist()


def amp_dtype(device: torch.device | str, setting: bool | None = None) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None for full float32.

    Parameters
    ----------
    device : torch.device or str
    setting : bool or None
        None (default): on for CUDA only. True: also bfloat16 on the CPU. False: off.

    Examples
    --------
    >>> amp_dtype("cpu"), amp_dtype("cpu", True), amp_dtype("cuda", False)
    (None, torch.bfloat16, None)
    """
    kind = torch.device(device).type
    if setting is False or (setting is None and kind != "cuda"):
        return None
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu":
        return torch.bfloat16
    return None  # MPS: autocast support is partial; stay in float32


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` (a no-op context when None)."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def make_scaler(device: torch.device, dtype: torch.dtype | None):
    """A ``GradScaler`` for float16 (bfloat16 and float32 need none): enabled only then."""
    return torch.amp.GradScaler(torch.device(device).type,
                                enabled=dtype == torch.float16)


def describe_device(device: torch.device | str, dtype: torch.dtype | None) -> str:
    """``"cpu"``, ``"cuda:0 (bf16)"``, ``"cuda:0 (fp16)"``: the device line of CLI and GUI.

    Examples
    --------
    >>> describe_device("cpu", None), describe_device("cuda:0", torch.bfloat16)
    ('cpu', 'cuda:0 (bf16)')
    """
    names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    return str(device) + (f" ({names[dtype]})" if dtype in names else "")


def pin(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Page-locked copy for an asynchronous (``non_blocking``) copy to a CUDA device."""
    return tensor.pin_memory() if device.type == "cuda" else tensor


def device_line(trainer) -> str:
    """:func:`describe_device` of a trainer: what CLI and Train tab show at the start."""
    return describe_device(trainer.device, trainer.amp_dtype)


def scaled_step(scaler, optimizer, total: torch.Tensor, iteration: int) -> bool:
    """Backward and optimizer step through ``scaler``; False (with a warning) if skipped.

    A float16 ``GradScaler`` skips the step whose gradients overflowed and halves its scale,
    so no inf/NaN reaches the weights; without float16 this is ``backward(); step()``.
    """
    import warnings

    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    if scale is not None and scaler.get_scale() < scale:
        warnings.warn(f"float16 gradients overflowed at iteration {iteration}: the step was "
                      f"skipped and the loss scale lowered to {scaler.get_scale():g}.",
                      RuntimeWarning, stacklevel=2)
        return False
    return True
