"""Does the WGAN-GP critic term (appendix A.1) help? Dense training with and without it.

Trains the same U-Net on one ovules-like image densely, once with the SPOCO loss alone and once
with the adversarial term (weight 0.1, 5 critic iterations, gradient-penalty weight 10, switched
on after half of the iterations), and reports the adapted Rand error of mutex-watershed
segmentations of held-out ovules-like images plus the wall time of each run (the critic's cost).
3D stacks by default, where the paper reports its gain (``--ndim 2`` for 512² images).
``--quick``: a few-minute smoke version.

Run: ``python benchmarks/adversarial_ablation.py [--quick] [--ndim 3] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from experiment_utils import dump, embed, mean_sd, mws, set_threads, train

from napari_spoco.core.evaluation.metrics import adapted_rand_error
from napari_spoco.core.synthetic import make_tissue
from napari_spoco.core.training import TrainingConfig
from napari_spoco.core.training.adversarial import AdversarialSettings

SETTINGS = {
    # (train shape, test shape, n test, patch, iterations)
    (2, False): ((512, 512), (256, 256), 3, (128, 128), 2000),
    (2, True): ((256, 256), (192, 192), 2, (96, 96), 60),
    (3, False): ((32, 192, 192), (24, 128, 128), 2, (16, 64, 64), 600),
    (3, True): ((16, 96, 96), (16, 64, 64), 1, (16, 48, 48), 16),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ndim", type=int, choices=(2, 3), default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto... (timings: cpu)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    start = time.perf_counter()
    train_shape, test_shape, n_test, patch, iterations = SETTINGS[args.ndim, args.quick]
    image, labels = make_tissue(train_shape, preset="ovules", seed=1)
    tests = [make_tissue(test_shape, preset="ovules", seed=200 + i) for i in range(n_test)]
    adversarial = AdversarialSettings(warmup_iterations=iterations // 2)
    results: dict[str, list] = {"SPOCO loss": [], "SPOCO loss + 0.1 WGAN-GP": []}
    times: dict[str, list] = {name: [] for name in results}
    for seed in range(args.seeds):
        for name, adv in zip(results, (None, adversarial)):
            config = TrainingConfig(mode="dense", iterations=iterations, features=(16, 32, 64),
                                    lr=1e-3, momentum=0.99,
                                    patch_shape=patch, batch_size=2, device=args.device,
                                    seed=seed, autosave_seconds=None, adversarial=adv)
            tic = time.perf_counter()
            trainer = train([(image, labels)], config, label=f"{name} seed {seed}")
            times[name].append(time.perf_counter() - tic)
            results[name].append(float(np.mean([
                adapted_rand_error(gt, mws(embed(trainer.model, im, trainer.normalization),
                                           args.ndim == 3))
                for im, gt in tests
            ])))
    seconds = time.perf_counter() - start
    print(f"\n{args.ndim}D, {iterations} iterations (critic on after {iterations // 2}), "
          f"patch {patch}, batch 2, {args.seeds} seed(s)")
    print("| loss | adapted Rand error | training s |\n|---|---|---|")
    for name in results:
        print(f"| {name} | {mean_sd(results[name])} | {np.mean(times[name]):.0f} |")
    print(f"wall time: {seconds:.0f} s")
    dump(args.json, {"results": results, "times": times, "seconds": seconds,
                     "quick": args.quick, "ndim": args.ndim})
    return results


if __name__ == "__main__":
    main()
