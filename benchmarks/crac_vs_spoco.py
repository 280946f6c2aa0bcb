"""SPOCO vs CRAC vs both at equal CPU time, with the nuclei quality protocol.

Same data, split, label subsampling, default segmentation and Otsu+watershed baseline as
``benchmarks/nuclei_quality.py`` (its functions are called, not copied). Equal time, not equal
steps: each method's per-step time is measured first (``--probe-steps`` steps after one
warm-up step, in this process, interleaved), and its step count is ``--budget`` seconds divided
by it.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/crac_vs_spoco.py \\
        --settings sparse@0.1 --seeds 0 --budget 180

``--dataset transfer_2d``: the transfer pair of ``benchmarks/transfer.py`` (its data, sparse
draw and fine-tuning config are called, not copied). Every method fine-tunes the shipped
``ovules_2d`` source on the stem-like training image with ``sparse@p`` of its cells labeled
(lr: a tenth of the source's, ``run_defaults``); "crac" and "both" start with a new affinity
head on the source's backbone (``load_source_state``). The held-out stem-like images are
segmented with the defaults and scored next to the source model as it is and the seeded
watershed of the membranes, both measured in the same run. CRAC models are also scored with
the mutex watershed on their embeddings' affinities (``segmented_on`` "embeddings"), which
tells the explicit head from the embeddings it was trained with. Equal time here is equal CPU
time of this process (``time.process_time``, probe and runs), since the machine is shared.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/crac_vs_spoco.py \\
        --dataset transfer_2d --settings sparse@0.05 --budget 80 --probe-steps 10 --threads 1
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

import nuclei_quality as protocol  # noqa: E402
import transfer  # noqa: E402

from napari_spoco.core.evaluation.metrics import evaluate  # noqa: E402
from napari_spoco.core.inference.segmentation import settings_for  # noqa: E402
from napari_spoco.core.model.checkpoint import load_model  # noqa: E402
from napari_spoco.core.model.normalization import Normalization  # noqa: E402
from napari_spoco.core.training import Trainer, TrainingConfig  # noqa: E402
from napari_spoco.datasets import sample_dataset  # noqa: E402

METHODS = ("spoco", "crac", "both")


def protocol_config(image, labels, convention, seed, method, iterations) -> TrainingConfig:
    """The config ``nuclei_quality.run_setting`` builds, with the training method."""
    patch = (128, 128) if image.ndim == 2 else (16, 64, 64)
    patch = tuple(min(p, s) for p, s in zip(patch, image.shape))
    return TrainingConfig(iterations=iterations, patch_shape=patch,
                          batch_size=4 if image.ndim == 2 else 1, seed=seed, device="cpu",
                          autosave_seconds=None, method=method, **convention)


def seconds_per_step(pairs, config: TrainingConfig, probe_steps, source=None,
                     clock=None) -> float:
    """Median time of ``probe_steps`` steps of ``config`` after one warm-up step.

    ``clock``: None for each step's wall time (``TrainingReport.seconds_per_step``), or a
    function such as ``time.process_time``, whose differences between steps are taken.
    """
    trainer = Trainer(pairs, config.replace(iterations=probe_steps + 1), source=source)
    if clock is None:
        times = [report.seconds_per_step for report in trainer.steps()]
    else:
        times, last = [], clock()
        for _ in trainer.steps():
            now = clock()
            times.append(now - last)
            last = now
    return float(np.median(times[1:]))


def mean_scores(model, normalization, settings, tests) -> dict:
    """The metrics of the default segmentation, averaged over the held-out ``tests``."""
    scores = [evaluate(truth, protocol.default_segmentation(model, image, normalization,
                                                            settings)[2])
              for image, truth in tests]
    return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}


def print_row(label, row) -> None:
    print(f"  {label}: SBD {row['sbd']:.3f} AP50 {row['ap50']:.3f} "
          f"ARand {row['adapted_rand_error']:.3f} segments {row['n_seg']:.0f}", flush=True)


def network_lr_for_new_head(trainer) -> None:
    """Ablation: the new affinity head learns at the network's lr, as before issue 14's fix."""
    if trainer.model.affinity_head is None:
        return
    head = {id(p) for p in trainer.model.affinity_head.parameters()}
    for group in trainer.optimizer.param_groups:
        if {id(p) for p in group["params"]} == head:
            group["lr"] = trainer.config.lr


def run_transfer(args) -> list[dict]:
    """SPOCO, CRAC and both fine-tuning the shipped ovules source at equal time (see top)."""
    source_path = transfer.shipped_source(2)
    if source_path is None:
        raise SystemExit("the shipped ovules_2d model is missing; see napari_spoco/models")
    patch = transfer.SETTINGS[2, False][3]
    _, (target_image, target_labels), tests = transfer.transfer_data(2)
    target_norm = Normalization.fit([target_image], None)
    rows = []
    for image, truth in tests:  # one baseline per image, averaged as the models' scores
        rows.append(evaluate(truth, protocol.classical_baseline(image, truth)[1]))
    baseline = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    name = protocol.classical_baseline(*tests[0])[0]
    source = load_model(source_path, "cpu")
    # applied with the target's statistics, as transfer.py's "source only" row
    only = mean_scores(source.model, target_norm, settings_for(source), tests)
    rows = [{"setting": name, "method": "-", "seed": "-", **baseline},
            {"setting": "source only", "method": "spoco", "seed": "-", "steps": 0, **only}]
    print(f"transfer_2d: {len(tests)} test images {tests[0][0].shape}, target "
          f"{int(target_labels.max())} cells; load {os.getloadavg()[0]:.1f}", flush=True)
    print_row(f"baseline, {name}", baseline)
    print_row(f"source only ({source.iteration} it)", only)
    fractions = {s: float(s.split("@")[1]) for s in args.settings}

    def config(method, seed, iterations):
        return transfer.fine_tune_config(patch, seed, iterations, method=method)

    probe = [(target_image, transfer.sparse_target(target_labels, fractions[args.settings[0]],
                                                   0))]
    # CPU time of this process, not wall time: the machine is shared, and other jobs' load
    # inflated a wall-clock probe up to fourfold (and unevenly across methods)
    per_step = {m: seconds_per_step(probe, config(m, 0, 0), args.probe_steps, source_path,
                                    clock=time.process_time) for m in args.methods}
    steps = {m: max(1, int(args.budget / per_step[m])) for m in args.methods}
    print("CPU seconds/step " + ", ".join(f"{m} {per_step[m]:.3f}" for m in args.methods)
          + "; steps " + str(steps), flush=True)
    for setting, fraction in fractions.items():
        for seed in args.seeds:
            sparse = transfer.sparse_target(target_labels, fraction, seed)
            kept = len(np.unique(sparse)) - 1
            for method in args.methods:
                start, cpu_start = time.perf_counter(), time.process_time()
                trainer = Trainer([(target_image, sparse)], config(method, seed, steps[method]),
                                  source=source_path)
                if args.new_head_lr == "network":
                    network_lr_for_new_head(trainer)
                for _ in trainer.steps():
                    pass
                train_s = time.perf_counter() - start
                train_cpu_s = time.process_time() - cpu_start
                settings = settings_for(trainer)
                variants = [settings.affinity_source]
                if settings.affinity_source == "explicit":
                    variants.append("embeddings")
                for on in variants:
                    scores = mean_scores(trainer.model, trainer.normalization,
                                         settings_for(trainer, affinity_source=on), tests)
                    rows.append({"setting": setting, "method": method, "seed": seed,
                                 "segmented_on": on, "steps": steps[method],
                                 "train_s": train_s, "train_cpu_s": train_cpu_s,
                                 "cells": kept, "input_scale": trainer.config.input_scale,
                                 **scores})
                    print_row(f"{setting} seed {seed} {method:<5} ({kept} cells) on {on:<10} "
                              f"{steps[method]} steps {train_cpu_s:.0f} CPU s "
                              f"({train_s:.0f} s wall)", rows[-1])
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="stardist_2d")
    parser.add_argument("--settings", nargs="+",
                        help="sparse@p ... (default: @1/10/40 %%; transfer_2d: @5 %%)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--budget", type=float, default=600.0,
                        help="training seconds each (transfer_2d: CPU seconds of this process)")
    parser.add_argument("--probe-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-head-lr", choices=("heads", "network"), default="heads",
                        help="transfer_2d ablation: lr of the new affinity head (heads: "
                             "foreground_lr, the trainer's default; network: the network's)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.dataset == "transfer_2d":
        args.settings = args.settings or ["sparse@0.05"]
        rows = run_transfer(args)
        print(f"wall time {time.perf_counter() - start:.0f} s", flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"rows": rows, "budget_s": args.budget, "threads": args.threads,
                           "new_head_lr": args.new_head_lr,
                           "wall_s": time.perf_counter() - start}, fh, indent=1, default=str)
        return rows
    args.settings = args.settings or ["sparse@0.01", "sparse@0.1", "sparse@0.4"]
    data = sample_dataset(args.dataset, seed=0)
    image, truth = np.asarray(data["image"]), np.asarray(data["labels"])
    train_image, test_image = protocol.split(image)
    train_truth, test_truth = protocol.split(truth)
    baseline_name, baseline_labels = protocol.classical_baseline(test_image, test_truth)
    baseline = evaluate(test_truth, baseline_labels)
    rows = [{"setting": baseline_name, "method": "-", "seed": "-", **baseline}]
    print(f"{data['name']}: load {os.getloadavg()[0]:.1f}; baseline {baseline_name}: "
          f"SBD {baseline['sbd']:.3f} AP50 {baseline['ap50']:.3f} "
          f"ARand {baseline['adapted_rand_error']:.3f}", flush=True)
    labels0, convention0 = protocol.training_labels(train_truth, args.settings[0], 0)
    per_step = {m: seconds_per_step([(train_image, labels0)], protocol_config(
        train_image, labels0, convention0, 0, m, 0), args.probe_steps) for m in args.methods}
    steps = {m: max(1, int(args.budget / per_step[m])) for m in args.methods}
    print("seconds/step " + ", ".join(f"{m} {per_step[m]:.3f}" for m in args.methods)
          + "; steps " + str(steps), flush=True)
    for setting in args.settings:
        for seed in args.seeds:
            labels, convention = protocol.training_labels(train_truth, setting, seed)
            for method in args.methods:
                start = time.perf_counter()
                trainer = Trainer([(train_image, labels)], protocol_config(
                    train_image, labels, convention, seed, method, steps[method]))
                for _ in trainer.steps():
                    pass
                row = protocol.score(trainer, test_image, test_truth, setting, seed,
                                     steps[method], start,
                                     argparse.Namespace(keep=None))
                row["method"] = method
                rows.append(row)
                print(f"  {setting} seed {seed} {method:<5} {steps[method]} steps "
                      f"{row['train_s']:.0f} s: SBD {row['sbd']:.3f} AP50 {row['ap50']:.3f} "
                      f"ARand {row['adapted_rand_error']:.3f} segments {row['n_seg']}",
                      flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=str)
    return rows


if __name__ == "__main__":
    main()
