"""Shared helpers of the paper-reproduction scripts (``transfer.py``, ``sparse_vs_dense.py``).

Training runs through the ordinary :class:`~napari_spoco.core.training.Trainer`, evaluation
through ``predict_embeddings`` → ``segment`` → ``metrics``, so the experiments exercise exactly
what users run.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import torch

from napari_spoco.core.clustering import segment
from napari_spoco.core.inference.prediction import predict_embeddings
from napari_spoco.core.training import Trainer, TrainingConfig


def train(pairs, config: TrainingConfig, source=None, label: str = "") -> Trainer:
    """Run a Trainer to its iteration limit and print its wall time and final smoothed loss."""
    start = time.perf_counter()
    trainer = Trainer(pairs, config, source=source)
    report = None
    for report in trainer.steps():
        pass
    seconds = time.perf_counter() - start
    loss = float("nan") if report is None else report.smoothed_loss
    print(f"  trained {label:<28} {trainer.iteration:>5} it  {seconds:7.1f} s  "
          f"loss {loss:.3f}", flush=True)
    return trainer


def embed(model, image, normalization) -> np.ndarray:
    """Embeddings of one image with the model's training normalisation, where the model is."""
    device = next(model.parameters()).device
    return predict_embeddings(model, image, normalization, device=device)


def mws(embeddings: np.ndarray, anisotropic: bool = False, min_size: int = 0) -> np.ndarray:
    """Mutex-watershed instances with the loss's default margins."""
    return segment(embeddings, method="mws", anisotropic=anisotropic, min_size=min_size)


def drop_largest(seg: np.ndarray) -> np.ndarray:
    """Set the largest segment to 0: the background of a sparse-nuclei image is one segment."""
    ids, counts = np.unique(seg, return_counts=True)
    out = seg.copy()
    out[seg == ids[np.argmax(counts)]] = 0
    return out


def mean_sd(values) -> str:
    """``mean ± sd`` (sample sd; '± 0' for a single value)."""
    values = [float(v) for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def set_threads(threads: int) -> None:
    torch.set_num_threads(int(threads))


def dump(path, results) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump(results, fh, indent=1)
