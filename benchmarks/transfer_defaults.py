"""The transfer pair with the defaults a user gets: ovules-trained model → stem-like cells.

Rows, each scored on the same held-out stem-like images with SBD, AP50 and adapted Rand error
(default segmentation: ``settings_for`` + ``segment_output``, as ``napari-spoco segment``):

* the classical baseline: seeded watershed of the membranes (``nuclei_quality``), same images;
* source only: the shipped ``ovules_2d`` (or ``ovules_3d``) applied as it is;
* source at the painted cells' scale: the same network at step 0 of an ``input_scale="auto"``
  run, i.e. on the grid the painted cells decide;
* fine-tuned @p: ``Trainer(source=...)`` on the stem-like training image with a fraction p of
  its cells painted (sparse SPOCO, lr and everything else from the defaults), once with the
  default input scale (1: the images' own grid) and once with ``input_scale="auto"`` (painted
  cells resampled to the source's cell size, ``run_defaults.default_input_scale``), at equal
  steps and seeds.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/transfer_defaults.py \\
        --fractions 0.05 --seeds 0 1 2 --iterations 400 --json docs/results/transfer_defaults.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))

from nuclei_quality import membrane_watershed
from transfer import sparse_target, transfer_data

from napari_spoco.core.evaluation.metrics import evaluate
from napari_spoco.core.inference.prediction import predict_with_foreground
from napari_spoco.core.inference.segmentation import segment_output, settings_for
from napari_spoco.core.model.checkpoint import load_model
from napari_spoco.core.training import Trainer, TrainingConfig
from napari_spoco.models import resolve_checkpoint

METRICS = ("sbd", "ap50", "adapted_rand_error", "n_seg", "n_gt")


def mean_scores(model_or_trainer, model, normalization, tests) -> dict:
    settings = settings_for(model_or_trainer)
    scores = []
    for image, truth in tests:
        embeddings, foreground = predict_with_foreground(model, image, normalization,
                                                         device="cpu")
        scores.append(evaluate(truth, segment_output(embeddings, foreground, settings)))
    return {key: float(np.mean([s[key] for s in scores])) for key in METRICS}


def fine_tune(target, fraction, seed, iterations, source, ndim, input_scale=None) -> tuple:
    image, labels = target
    sparse = sparse_target(labels, fraction, seed)
    patch = (128, 128) if ndim == 2 else (16, 64, 64)
    config = TrainingConfig(mode="sparse", iterations=iterations, patch_shape=patch,
                            batch_size=4 if ndim == 2 else 1, seed=seed, device="cpu",
                            autosave_seconds=None, input_scale=input_scale)
    trainer = Trainer([(image, sparse)], config, source=source)
    for _ in trainer.steps():
        pass
    return trainer, int(len(np.unique(sparse)) - 1)


def line(row: str, scores: dict, extra: str = "") -> str:
    return (f"{row:<44} SBD {scores['sbd']:.3f}  AP50 {scores['ap50']:.3f}  ARand "
            f"{scores['adapted_rand_error']:.3f}  segments {scores['n_seg']:.0f}/"
            f"{scores['n_gt']:.0f}  {extra}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ndim", type=int, default=2, choices=(2, 3))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    source = resolve_checkpoint(f"ovules_{args.ndim}d")
    _, target, tests = transfer_data(args.ndim)
    rows = []

    def record(row, scores, **extra):
        rows.append({"row": row, **scores, **extra})
        print(line(row, scores, " ".join(f"{k} {v}" for k, v in extra.items())), flush=True)

    baseline = [evaluate(truth, membrane_watershed(image)) for image, truth in tests]
    record("seeded watershed of the membranes", {k: float(np.mean([b[k] for b in baseline]))
                                                 for k in METRICS})
    loaded = load_model(source)
    record("source only", mean_scores(loaded, loaded.model, loaded.normalization, tests))
    for fraction in args.fractions:
        for seed in args.seeds:
            # step 0 of fine-tuning: the source, on the grid the painted cells decide
            trainer, painted = fine_tune(target, fraction, seed, 0, source, args.ndim, "auto")
            record(f"source at the painted cells' scale @{fraction:g}",
                   mean_scores(trainer, trainer.model, trainer.normalization, tests), seed=seed,
                   painted=painted, input_scale=trainer.config.input_scale)
            for name, scale in (("input scale 1 (default)", None), ("input scale auto", "auto")):
                start = time.perf_counter()
                trainer, painted = fine_tune(target, fraction, seed, args.iterations, source,
                                             args.ndim, scale)
                scores = mean_scores(trainer, trainer.model, trainer.normalization, tests)
                record(f"fine-tuned @{fraction:g}, {name}", scores, seed=seed, painted=painted,
                       input_scale=trainer.config.input_scale,
                       seconds=round(time.perf_counter() - start, 1))
    for fraction in args.fractions:
        for label in (f"source at the painted cells' scale @{fraction:g}",
                      f"fine-tuned @{fraction:g}, input scale 1 (default)",
                      f"fine-tuned @{fraction:g}, input scale auto"):
            chosen = [r for r in rows if r["row"] == label]
            means = {k: float(np.mean([r[k] for r in chosen])) for k in METRICS}
            sds = {k: float(np.std([r[k] for r in chosen])) for k in ("sbd", "ap50")}
            print(line(f"{label} (mean of {len(chosen)})", means,
                       f"sd SBD {sds['sbd']:.3f} AP50 {sds['ap50']:.3f}"))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rows": rows}, handle, indent=1)
    return rows


if __name__ == "__main__":
    main()
