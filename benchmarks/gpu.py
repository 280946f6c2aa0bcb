"""GPU throughput: training steps/s with and without mixed precision, prediction voxels/s,
and peak GPU memory, for the default 2D and 3D runs.

The settings are those every front end uses on a GPU (``core.run_defaults.resolve_run_settings``
with ``device_kind="cuda"``) on synthetic data of a typical size (2D 1024², 3D 64×256²). For
each of 2D and 3D it prints one line per precision: steps/s (after ``--warmup`` steps),
``torch.cuda.max_memory_allocated`` of the training, and tiled-prediction voxels/s with that
precision. On a machine without CUDA it says that nothing was measured and exits 0.

Usage: ``python benchmarks/gpu.py [--steps 30] [--warmup 5] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_spoco.core.inference.prediction import predict_embeddings
from napari_spoco.core.run_defaults import resolve_run_settings
from napari_spoco.core.synthetic import make_nuclei
from napari_spoco.core.training import Trainer, TrainingConfig
from napari_spoco.core.training.distributed import amp_dtype, describe_device

SHAPES = {"2D": (1024, 1024), "3D": (64, 256, 256)}


def synthetic_pair(shape):
    """Image and sparse labels (every third object) of ``shape``."""
    image, labels = make_nuclei(shape, seed=0)[:2]
    labels = np.where(labels % 3 == 1, labels, 0).astype(np.uint32)
    return image.astype(np.float32), labels


def train_rate(pair, device, mixed_precision, steps, warmup):
    """(steps/s, peak bytes, trainer) of ``steps`` timed training steps."""
    settings = resolve_run_settings([pair[0].shape], "cuda", iterations=warmup + steps)
    config = TrainingConfig(device=device, mixed_precision=mixed_precision,
                            autosave_seconds=None, **settings.as_dict())
    trainer = Trainer([pair], config)
    reports = trainer.steps()
    for _ in range(warmup):
        next(reports)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in reports:
        pass
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - start), torch.cuda.max_memory_allocated(), trainer


def predict_rate(trainer, image, device, use_amp):
    """Voxels/s of tiled prediction (autocast follows the device default unless off)."""
    import napari_spoco.core.inference.prediction as prediction

    original = prediction.amp_dtype
    if not use_amp:  # the prediction's precision is decided by amp_dtype(device)
        prediction.amp_dtype = lambda device, setting=None: None
    try:
        predict_embeddings(trainer.model, image, trainer.normalization, device=device)
        torch.cuda.synchronize()
        start = time.perf_counter()
        predict_embeddings(trainer.model, image, trainer.normalization, device=device)
        torch.cuda.synchronize()
        return image.size / (time.perf_counter() - start)
    finally:
        prediction.amp_dtype = original


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("No CUDA device: nothing was measured.")
        return 0
    print(f"{torch.cuda.get_device_name(args.device)}, torch {torch.__version__}")
    for name, shape in SHAPES.items():
        pair = synthetic_pair(shape)
        for mixed in (False, None):
            rate, peak, trainer = train_rate(pair, args.device, mixed, args.steps, args.warmup)
            label = describe_device(trainer.device, amp_dtype(trainer.device, mixed))
            voxels = predict_rate(trainer, pair[0], args.device, use_amp=mixed is None)
            print(f"{name} {label:16s} patch {list(trainer.config.patch_shape)} x "
                  f"{trainer.config.batch_size}: {rate:6.2f} steps/s, peak "
                  f"{peak / 2**30:5.2f} GiB; prediction {voxels / 1e6:7.2f} Mvoxel/s")
            del trainer
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
