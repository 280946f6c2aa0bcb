"""SPOCO vs CRAC vs both at equal CPU time, with the nuclei quality protocol.

Same data, split, label subsampling, default segmentation and Otsu+watershed baseline as
``benchmarks/nuclei_quality.py`` (its functions are called, not copied). Equal time, not equal
steps: each method's per-step time is measured first (``--probe-steps`` steps after one
warm-up step, in this process, interleaved), and its step count is ``--budget`` seconds divided
by it.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/crac_vs_spoco.py \\
        --settings sparse@0.1 --seeds 0 --budget 180
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

from napari_spoco.core.evaluation.metrics import evaluate  # noqa: E402
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


def seconds_per_step(image, labels, convention, method, probe_steps) -> float:
    trainer = Trainer([(image, labels)],
                      protocol_config(image, labels, convention, 0, method, probe_steps + 1))
    times = [report.seconds_per_step for report in trainer.steps()]
    return float(np.median(times[1:]))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="stardist_2d")
    parser.add_argument("--settings", nargs="+", default=["sparse@0.01", "sparse@0.1",
                                                           "sparse@0.4"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds each")
    parser.add_argument("--probe-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
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
    per_step = {m: seconds_per_step(train_image, labels0, convention0, m, args.probe_steps)
                for m in args.methods}
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
