"""Paper Tables 1 and 10 and appendix A.5 on real nuclei with dense ground truth.

Data: the StarDist 2D nuclei (``napari_spoco/data/stardist/img2d.tif`` / ``mask2d.tif``,
512×512, BSD-3). Split: columns 0-255 train, columns 256-511 test (nuclei cut by the split line
appear as partial objects on both sides).

Rows (Tables 1 and 10): SPOCO@0.1, @0.4, @0.8 (sparse mode, that fraction of the training
nuclei labeled, the background painted as one more labeled object ``background_id``) and dense
(every nucleus, 0 = background), each with the full loss, without u_con (``w_ucon=0``) and
without u_push (``w_upush=0``; dense has no unlabeled pixel, so u_push is always 0 there and
that row is skipped). Scores on the test half: SBD and |DiC| of mutex-watershed segmentations
after setting the largest segment (the background) and segments under 20 pixels to 0.

Appendix A.5, same object budget: "dense crop" trains on one 128×128 crop of the training half
with every nucleus in it labeled (B nuclei plus the crop's background); "sparse spread" labels B
nuclei drawn at random over the whole training half, plus the background inside the same crop
(the same background effort), in sparse mode.

``--quick`` is a few-minute smoke version (few iterations): its numbers only show the pipeline
runs. Run: ``python benchmarks/sparse_vs_dense.py [--quick] [--seeds 1] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tifffile
from experiment_utils import drop_largest, dump, embed, mean_sd, mws, set_threads, train

from napari_spoco.core.evaluation.metrics import dic, sbd
from napari_spoco.core.training import TrainingConfig
from napari_spoco.core.training.sampling import subsample_objects

DATA = Path(__file__).resolve().parents[1] / "napari_spoco" / "data" / "stardist"
CROP = (slice(192, 320), slice(64, 192))
FRACTIONS = (0.1, 0.4, 0.8)
# Segments below this many pixels are dropped (a nucleus here covers ~100-400 pixels).
MIN_SIZE = 20
VARIANTS = {"": {}, " w/o u_con": {"w_ucon": 0.0}, " w/o u_push": {"w_upush": 0.0}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto... (timings: cpu)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    start = time.perf_counter()
    iterations = args.iterations or (80 if args.quick else 600)

    image = tifffile.imread(DATA / "img2d.tif").astype(np.float32)
    mask = tifffile.imread(DATA / "mask2d.tif").astype(np.uint32)
    train_image, train_mask = image[:, :256], mask[:, :256]
    test_image, test_mask = image[:, 256:], mask[:, 256:]
    background = int(mask.max()) + 1
    # lr 1e-3 and m = 0.99 (the shipped models' recipe): short CPU runs, not the paper's 80K
    base = dict(features=(16, 32, 64), patch_shape=(128, 128), batch_size=2, lr=1e-3,
                momentum=0.99, device=args.device, autosave_seconds=None, iterations=iterations)
    print(f"train half: {len(np.unique(train_mask)) - 1} nuclei, test half: "
          f"{len(np.unique(test_mask)) - 1} nuclei; {iterations} iterations per run", flush=True)

    def scores(trainer):
        seg = drop_largest(mws(embed(trainer.model, test_image, trainer.normalization),
                               min_size=MIN_SIZE))
        return sbd(test_mask, seg), dic(test_mask, seg)

    def run(label, pairs, mode, loss, seed, background_id=None):
        config = TrainingConfig(mode=mode, loss=loss, seed=seed, background_id=background_id,
                                **base)
        return scores(train(pairs, config, label=f"{label} seed {seed}"))

    results: dict[str, list] = {}
    for seed in range(args.seeds):
        for fraction in FRACTIONS:
            sparse = subsample_objects(train_mask, fraction, seed)
            sparse[train_mask == 0] = background
            for suffix, loss in VARIANTS.items():
                row = f"SPOCO@{fraction}{suffix}"
                results.setdefault(row, []).append(run(
                    row, [(train_image, sparse)], "sparse", loss, seed, background))
        for suffix, loss in list(VARIANTS.items())[:2]:
            row = f"dense{suffix}"
            results.setdefault(row, []).append(run(
                row, [(train_image, train_mask)], "dense", loss, seed))

        crop_mask = train_mask[CROP]
        budget = len(np.unique(crop_mask)) - 1
        results.setdefault(f"A.5 dense crop ({budget} nuclei)", []).append(run(
            "A.5 dense crop", [(train_image[CROP], crop_mask)], "dense", {}, seed))
        spread = subsample_objects(train_mask, budget / (len(np.unique(train_mask)) - 1), seed)
        painted = np.zeros(train_mask.shape, bool)
        painted[CROP] = train_mask[CROP] == 0
        spread[painted] = background
        results.setdefault(f"A.5 sparse spread ({budget} nuclei)", []).append(run(
            "A.5 sparse spread", [(train_image, spread)], "sparse", {}, seed, background))

    seconds = time.perf_counter() - start
    print(f"\n{iterations} iterations per run, patch 128², batch 2, U-Net (16, 32, 64), "
          "lr 1e-3, m 0.99, "
          f"{args.seeds} seed(s)")
    print("| setting | SBD | abs(DiC) |\n|---|---|---|")
    for row, values in results.items():
        print(f"| {row} | {mean_sd([v[0] for v in values])} | "
              f"{mean_sd([v[1] for v in values])} |")
    print(f"wall time: {seconds:.0f} s")
    dump(args.json, {"results": results, "seconds": seconds, "quick": args.quick,
                     "iterations": iterations})
    return results


if __name__ == "__main__":
    main()
