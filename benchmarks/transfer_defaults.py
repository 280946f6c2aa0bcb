"""The transfer pair with the defaults a user gets: ovules-trained model → stem-like cells.

Rows, each scored on the same held-out stem-like images with SBD, AP50 and adapted Rand error
(default segmentation: ``settings_for`` + ``segment_output``, as ``napari-spoco segment``):

* the classical baseline: seeded watershed of the membranes (``nuclei_quality``), same images;
* source only: the shipped ``ovules_2d`` (or ``ovules_3d``) applied as it is;
* target only: the source's recipe (``train_source_models.RECIPES``: as many training images,
  network, patch, batch, lr) trained densely from scratch on stem-like images (the fine-tuning
  image and new ones; never the test images), ``--target-iterations`` steps. Target only /
  source only is the domain gap (the paper: 0.074 / 0.227 = 0.33);
* source at the painted cells' scale: the same network at step 0 of an ``input_scale="auto"``
  run, i.e. on the grid the painted cells decide;
* fine-tuned @p: ``Trainer(source=...)`` on the stem-like training image with a fraction p of
  its cells painted (sparse SPOCO, lr, consistency weight and everything else from the
  defaults), for each ``--placements`` (scattered cells, or one group of neighbours);
* ``--w-ucon 1``: the same runs with the paper's consistency weight, the default before
  ``run_defaults.default_consistency_weight`` (10 when fine-tuning sparse labels);
* ``--auto-scale``: the same runs with ``input_scale="auto"`` (painted cells resampled to the
  source's cell size, ``run_defaults.default_input_scale``), and the source at step 0 of such
  a run, at equal steps and seeds.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/transfer_defaults.py \\
        --fractions 0.05 0.01 --placements random clustered --seeds 0 1 2 --iterations 200 \\
        --w-ucon 1 --json docs/results/transfer_defaults.json

``--target-iterations 0`` skips the target-only row; ``--target-checkpoint PATH`` saves the
target-only model there, or scores the one saved there by an earlier run instead of training it
again (it takes most of the script's time).
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
from train_source_models import RECIPES
from transfer import sparse_target, transfer_data

from napari_spoco.core.evaluation.metrics import evaluate
from napari_spoco.core.inference.prediction import predict_with_foreground
from napari_spoco.core.inference.segmentation import segment_output, settings_for
from napari_spoco.core.model.checkpoint import load_model
from napari_spoco.core.synthetic import make_tissue
from napari_spoco.core.training import LossSettings, Trainer, TrainingConfig
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


def fine_tune(target, fraction, seed, iterations, source, ndim, input_scale=None,
              placement="random", w_ucon=None) -> tuple:
    """Fine-tune ``source`` on ``target`` with a fraction of its cells painted (defaults else)."""
    image, labels = target
    sparse = sparse_target(labels, fraction, seed, placement)
    patch = (128, 128) if ndim == 2 else (16, 64, 64)
    config = TrainingConfig(mode="sparse", iterations=iterations, patch_shape=patch,
                            batch_size=4 if ndim == 2 else 1, seed=seed, device="cpu",
                            autosave_seconds=None, input_scale=input_scale,
                            loss=LossSettings(w_ucon=w_ucon))
    trainer = Trainer([(image, sparse)], config, source=source)
    for _ in trainer.steps():
        pass
    return trainer, int(len(np.unique(sparse)) - 1)


def train_target_only(target, ndim: int, iterations: int) -> Trainer:
    """The source's recipe, trained densely from scratch on images of the target's preset.

    As many images as the source had: the fine-tuning image ``target`` and new ones of the
    same shape (seeds 3, 4, ...; the test images are seeds 100 and up).
    """
    recipe = RECIPES[f"ovules_{ndim}d"]
    shape = target[1].shape
    pairs = [target] + [make_tissue(shape, preset="stem", seed=3 + i)
                        for i in range(len(recipe.train_seeds) - 1)]
    config = TrainingConfig(**{**recipe.config, "iterations": iterations}, device="cpu",
                            autosave_seconds=None)
    trainer = Trainer(pairs, config)
    for _ in trainer.steps():
        pass
    return trainer


def line(row: str, scores: dict, extra: str = "") -> str:
    return (f"{row:<44} SBD {scores['sbd']:.3f}  AP50 {scores['ap50']:.3f}  ARand "
            f"{scores['adapted_rand_error']:.3f}  segments {scores['n_seg']:.0f}/"
            f"{scores['n_gt']:.0f}  {extra}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ndim", type=int, default=2, choices=(2, 3))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05])
    parser.add_argument("--placements", nargs="+", default=["random"],
                        choices=("random", "clustered"),
                        help="clustered runs only for fractions that paint >= 5 cells")
    parser.add_argument("--w-ucon", type=float, nargs="*", default=[],
                        help="also run these consistency weights (e.g. 1, the paper's)")
    parser.add_argument("--auto-scale", action="store_true",
                        help="also run input_scale='auto' and the source at its grid")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--target-iterations", type=int, default=2000,
                        help="steps of the target-only row (0: skip it)")
    parser.add_argument("--target-checkpoint", default=None,
                        help="save the target-only model here, or reuse the one saved here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="transfer.py's small images (a smoke test, numbers mean nothing)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    source = resolve_checkpoint(f"ovules_{args.ndim}d")
    _, target, tests = transfer_data(args.ndim, quick=args.quick)
    rows = []

    def record(row, scores, **extra):
        rows.append({"row": row, **scores, **extra})
        print(line(row, scores, " ".join(f"{k} {v}" for k, v in extra.items())), flush=True)

    baseline = [evaluate(truth, membrane_watershed(image)) for image, truth in tests]
    record("seeded watershed of the membranes", {k: float(np.mean([b[k] for b in baseline]))
                                                 for k in METRICS})
    loaded = load_model(source)
    record("source only", mean_scores(loaded, loaded.model, loaded.normalization, tests))
    if args.target_iterations > 0:
        start = time.perf_counter()
        saved = args.target_checkpoint and os.path.exists(args.target_checkpoint)
        if saved:
            trained = load_model(args.target_checkpoint)
        else:
            trained = train_target_only(target, args.ndim, args.target_iterations)
            if args.target_checkpoint:
                trained.save(args.target_checkpoint)
        record("target only", mean_scores(trained, trained.model, trained.normalization, tests),
               steps=trained.iteration, seconds=round(time.perf_counter() - start, 1),
               reused=bool(saved))
        gap = rows[-1]["adapted_rand_error"] / max(rows[-2]["adapted_rand_error"], 1e-9)
        print(f"domain gap: target only / source only ARand {gap:.2f} (paper 0.33)",
              flush=True)
    variants = [("default", None, None)]
    variants += [(f"w_ucon {w:g}", None, w) for w in args.w_ucon]
    if args.auto_scale:
        variants.append(("input scale auto", "auto", None))
    labels_of_rows = []
    for fraction in args.fractions:
        painted_cells = max(1, round(fraction * int(target[1].max())))
        for placement in args.placements:
            if placement == "clustered" and painted_cells < 5:
                continue  # a "group" of one to four cells says little about neighbours
            setting = f"@{fraction:g} {placement}"
            for seed in args.seeds:
                if args.auto_scale:
                    # step 0 of fine-tuning: the source, on the grid the painted cells decide
                    trainer, painted = fine_tune(target, fraction, seed, 0, source, args.ndim,
                                                 "auto", placement)
                    record(f"source at the painted cells' scale {setting}",
                           mean_scores(trainer, trainer.model, trainer.normalization, tests),
                           seed=seed, painted=painted, input_scale=trainer.config.input_scale)
                for name, scale, w_ucon in variants:
                    start = time.perf_counter()
                    trainer, painted = fine_tune(target, fraction, seed, args.iterations, source,
                                                 args.ndim, scale, placement, w_ucon)
                    scores = mean_scores(trainer, trainer.model, trainer.normalization, tests)
                    record(f"fine-tuned {setting}, {name}", scores, seed=seed, painted=painted,
                           input_scale=trainer.config.input_scale,
                           w_ucon=trainer.config.loss.w_ucon,
                           seconds=round(time.perf_counter() - start, 1))
            labels_of_rows += [f"fine-tuned {setting}, {name}" for name, _, _ in variants]
            if args.auto_scale:
                labels_of_rows.append(f"source at the painted cells' scale {setting}")
    for label in labels_of_rows:
        chosen = [r for r in rows if r["row"] == label]
        means = {k: float(np.mean([r[k] for r in chosen])) for k in METRICS}
        sds = {k: float(np.std([r[k] for r in chosen]))
               for k in ("sbd", "ap50", "adapted_rand_error")}
        print(line(f"{label} (mean of {len(chosen)})", means,
                   f"sd SBD {sds['sbd']:.3f} AP50 {sds['ap50']:.3f} "
                   f"ARand {sds['adapted_rand_error']:.3f}"))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rows": rows}, handle, indent=1)
    return rows


if __name__ == "__main__":
    main()
