"""How much of a default SPOCO training step the loss takes, and how its cost grows with objects.

Everything a user would get by default is measured, nothing chosen for the benchmark:

* patch and batch from ``resolve_run_settings`` (the one decision function of the Train tab,
  ``napari-spoco train`` and the demo) for one 512² image (``--3d``: one 48 × 192 × 192
  stack) on ``--device`` (default cpu: 4 × 128², 3D 1 × 16 × 64²);
* the U-Net of ``TrainingConfig()`` (features, norm, embedding size, foreground head);
* the loss ``SpocoLoss(**TrainingConfig().loss_kwargs())`` (sparse labels, 20 anchors ...);
* the torch thread count of ``apply_torch_threads`` (``OMP_NUM_THREADS`` pins it) unless
  ``--threads`` is given.

For 2, 10, 50 and 200 labeled objects per patch (Voronoi cells of twice as many seeds, half of
them set to 0 = unlabeled, as painted sparse labels are) it times, interleaved in one process:

* the whole training step as the trainer does it: f forward (embeddings + foreground logit), g
  forward, SPOCO loss + foreground loss, zero_grad, backward, Adam step, momentum update;
* the SPOCO loss forward+backward alone, on the embeddings f and g produced in that same step;

and prints the loss's share of the step, the loss time per object, that time normalised to the
*fastest* per-object point (1.00 there; a row far above 1 pays a fixed cost spread over few
objects), the added time per added object, and the peak memory of one loss forward+backward.
The memory is, on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before;
on a CPU (Linux), the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``)
above the resident set just before the call, in a fresh subprocess that loads the same
embeddings and labels and runs the loss once (after a warm-up on a tiny crop, so library
start-up is not counted; glibc is told to map blocks of 64 KiB and more on their own, so the
loss cannot hide in pages freed earlier). The inputs are not counted; the gradient of f's
embeddings (one more embedding tensor) is. Timings are noisy on shared machines: read the
ratios. Run: ``python benchmarks/bench_loss.py [--3d] [--repeats 5] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from napari_spoco.core.loss import SpocoLoss
from napari_spoco.core.loss.foreground import foreground_loss, split_output
from napari_spoco.core.model.momentum import make_momentum_copy, momentum_update
from napari_spoco.core.model.unet import UNet
from napari_spoco.core.run_defaults import apply_torch_threads, resolve_run_settings
from napari_spoco.core.training import TrainingConfig
from napari_spoco.core.training.trainer import parameter_groups

OBJECTS = (2, 10, 50, 200)
IMAGE_2D, IMAGE_3D = (512, 512), (48, 192, 192)


def default_config(ndim: int, device_kind: str, features=None) -> TrainingConfig:
    """``TrainingConfig()`` with the run settings ``resolve_run_settings`` decides for one image."""
    shape = IMAGE_3D if ndim == 3 else IMAGE_2D
    settings = resolve_run_settings([shape], device_kind)
    config = TrainingConfig(ndim=ndim, in_channels=1, **settings.as_dict())
    if features is not None:
        config = config.replace(features=tuple(features))
    return config


def voronoi_batch(num_objects: int, batch: int, patch, seed: int):
    """Labels ``(B, *patch)`` with ``num_objects`` labeled cells per patch, and an image of them.

    The image is one random intensity per cell plus noise, so the network sees the cells.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in patch], indexing="ij"), -1)
    grid = grid.reshape(-1, len(patch))
    labels, images = [], []
    for _ in range(batch):
        cells = 2 * num_objects
        seeds = rng.uniform(0, 1, size=(cells, len(patch))) * np.asarray(patch)
        _, cell = cKDTree(seeds).query(grid)
        ids = rng.permutation(cells) + 1
        ids[rng.permutation(cells)[:num_objects]] = 0  # half the cells unlabeled (sparse)
        labels.append(ids[cell].reshape(patch))
        images.append((rng.uniform(0, 1, cells)[cell] + 0.1 * rng.standard_normal(len(cell)))
                      .reshape(patch))
    labels = torch.from_numpy(np.stack(labels)).long()
    image = torch.from_numpy(np.stack(images)[:, None]).float()
    return labels, image


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loss_fwd_bwd(loss, emb_f, emb_g, labels, seed=0) -> None:
    emb = emb_f.detach().requires_grad_()
    total, _ = loss(emb, emb_g, labels, generator=torch.Generator().manual_seed(seed))
    total.backward()


class DefaultStep:
    """One training step of ``Trainer._step`` for a fixed batch (no data sampling, no AMP)."""

    def __init__(self, config: TrainingConfig, device: torch.device):
        torch.manual_seed(config.seed)
        self.config, self.device = config, device
        self.model = UNet.from_config(config.architecture).to(device)
        self.momentum = make_momentum_copy(self.model).to(device)
        self.optimizer = torch.optim.Adam(parameter_groups(self.model, config), lr=config.lr,
                                          weight_decay=config.weight_decay)
        self.loss = SpocoLoss(**config.loss_kwargs())

    def __call__(self, x_f, x_g, labels):
        """Run the step; return f's and g's embeddings (detached) for the loss-only timing."""
        config, model = self.config, self.model
        model.train()
        self.momentum.train()
        out_f = model(x_f)
        with torch.no_grad():
            out_g = self.momentum(x_g)
        emb_f, fg_logit = split_output(out_f, model.foreground)
        emb_g, _ = split_output(out_g, model.foreground)
        total, _ = self.loss(emb_f, emb_g, labels, generator=torch.Generator().manual_seed(0))
        if fg_logit is not None:
            total = total + config.foreground_weight * foreground_loss(
                fg_logit, labels, config.mode, config.background_id, config.ignore_id,
                config.foreground_ring)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        momentum_update(self.momentum, model, config.momentum)
        return emb_f.detach(), emb_g.detach()


def timed(device, fn, *args):
    """``(seconds, fn(*args))``, waiting for the device's queue on both ends."""
    synchronize(device)
    start = time.perf_counter()
    result = fn(*args)
    synchronize(device)
    return time.perf_counter() - start, result


def peak_loss_memory(config, emb_f, emb_g, labels, device, threads) -> float:
    """Bytes one loss forward+backward needs at its peak (see the module docstring)."""
    loss = SpocoLoss(**config.loss_kwargs())
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        loss_fwd_bwd(loss, emb_f, emb_g, labels)
        synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "inputs.pt"
        torch.save({"emb_f": emb_f.cpu(), "emb_g": emb_g.cpu(), "labels": labels.cpu(),
                    "loss_kwargs": config.loss_kwargs()}, path)
        # glibc keeps freed blocks for reuse (and raises its mmap threshold as it frees), so a
        # loss could reuse the pages torch.load freed and never grow the RSS; with every block
        # of 64 KiB or more mapped and unmapped on its own, the RSS follows what is live.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(path), "--threads", str(threads)],
            check=True, capture_output=True, text=True, env=env)
    return float(out.stdout.split()[-1])


def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(text.split(f"{key}:")[1].split()[0])


def memory_child(path: str) -> None:
    """Print the growth of this process's peak RSS (bytes) over one loss forward+backward."""
    inputs = torch.load(path)
    loss = SpocoLoss(**inputs["loss_kwargs"])
    emb_f, emb_g, labels = inputs["emb_f"], inputs["emb_g"], inputs["labels"]
    crop = (slice(0, 1), slice(None)) + (slice(0, 8),) * (emb_f.ndim - 2)
    loss_fwd_bwd(loss, emb_f[crop].contiguous(), emb_g[crop].contiguous(),
                 labels[(slice(0, 1),) + crop[2:]].contiguous())  # library start-up
    # Linux: "5" resets the peak (VmHWM) to the current RSS, so torch.load's own peak is gone
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    loss_fwd_bwd(loss, emb_f, emb_g, labels)
    print((_status_kib("VmHWM") - before) * 1024)


def run(args) -> None:
    device = torch.device(args.device)
    ndim = 3 if args.three_d else 2
    config = default_config(ndim, device.type, args.features)
    patch, batch = config.patch_shape, config.batch_size
    step = DefaultStep(config, device)
    params = sum(p.numel() for p in step.model.parameters())
    threads = torch.get_num_threads()
    image = "x".join(map(str, IMAGE_3D if ndim == 3 else IMAGE_2D))
    print(f"default {ndim}D {device.type} run on one {image} image (resolve_run_settings): "
          f"batch {batch}, patch {'x'.join(map(str, patch))}")
    print(f"UNet of TrainingConfig(): features {config.features}, norm {config.norm}, "
          f"E={config.out_channels}, foreground head {config.foreground}, {params:,} parameters")
    loss_settings = config.loss
    print(f"SpocoLoss(**TrainingConfig().loss_kwargs()): mode {config.mode}, "
          f"max_anchors {loss_settings.max_anchors}, delta_v {loss_settings.delta_v}, "
          f"delta_d {loss_settings.delta_d}; {threads} torch threads, {args.repeats} repeats "
          "(medians)")
    mem_what = ("CUDA max_memory_allocated" if device.type == "cuda"
                else "peak RSS above start, subprocess")
    print(f"\n  objects/patch   step [ms]   loss [ms]   loss share   loss/object [ms]"
          f"   /fastest   +ms per +object   loss peak mem [MiB] ({mem_what})")
    rows = []
    for num in args.objects:
        labels, x_f = voronoi_batch(num, batch, patch, seed=num)
        x_g = x_f + 0.05 * torch.randn(x_f.shape, generator=torch.Generator().manual_seed(num))
        labels, x_f, x_g = labels.to(device), x_f.to(device), x_g.to(device)
        # a fresh network (same seed) per row: the loss's cost depends on the embeddings (how
        # many consistency anchors are drawn), so every row starts from the same weights
        step = DefaultStep(config, device)
        step_times, loss_times = [], []
        if args.skip_step:
            emb_f, emb_g = step(x_f, x_g, labels)
        for repeat in range(args.warmup + args.repeats):
            # interleaved, so a change of machine load hits both columns alike
            if args.skip_step:
                step_seconds = float("nan")
            else:
                step_seconds, (emb_f, emb_g) = timed(device, step, x_f, x_g, labels)
            loss_seconds, _ = timed(
                device, loss_fwd_bwd, step.loss, emb_f, emb_g, labels)
            if repeat >= args.warmup:
                step_times.append(step_seconds)
                loss_times.append(loss_seconds)
        memory = (float("nan") if args.no_memory
                  else peak_loss_memory(config, emb_f, emb_g, labels, device, threads))
        rows.append((num, statistics.median(step_times), statistics.median(loss_times), memory))
    fastest = min(loss / num for num, _, loss, _ in rows)
    previous = None
    for num, step_seconds, loss_seconds, memory in rows:
        marginal = "" if previous is None else \
            f"{(loss_seconds - previous[1]) / (num - previous[0]) * 1e3:10.3f}"
        print(f"  {num:13d}   {step_seconds * 1e3:9.1f}   {loss_seconds * 1e3:9.1f}   "
              f"{100 * loss_seconds / step_seconds:8.1f} %   {loss_seconds / num * 1e3:16.3f}   "
              f"{loss_seconds / num / fastest:8.2f}   {marginal:>15}   {memory / 2**20:10.1f}")
        previous = (num, loss_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: what a run gets, apply_torch_threads)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--3d", dest="three_d", action="store_true",
                        help="the default 3D run of a 48x192x192 stack instead of 2D 512²")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (decides the defaults)")
    parser.add_argument("--objects", type=int, nargs="+", default=list(OBJECTS),
                        help="labeled objects per patch")
    parser.add_argument("--features", type=int, nargs="+", default=None,
                        help="U-Net widths instead of TrainingConfig()'s (not the default run)")
    parser.add_argument("--skip-step", action="store_true",
                        help="time the loss only (the step and share columns read nan)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory column")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    else:
        apply_torch_threads()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    run(args)


if __name__ == "__main__":
    main()
