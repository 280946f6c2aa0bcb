"""Segmentation quality of the default pipeline next to a classical baseline, same run.

Protocol (issue 9): train on the left half of an image (columns < W/2), segment the right half
with the **defaults** a user gets (``segmentation_settings`` + ``segment_output``, exactly what
``napari-spoco segment`` runs), and score SBD, AP50 and adapted Rand error against the ground
truth. The baseline is Otsu thresholding + distance-transform watershed (scikit-image, no
network), measured on the same half; for membrane images (no background in the ground truth)
it is a watershed of the membrane signal seeded by the dark cell interiors.

Settings: ``dense`` (every object and the background labeled) and ``sparse@p`` (a fraction p of
the objects plus a few background strokes, as a user would paint them).

    python benchmarks/nuclei_quality.py                                  # StarDist 2D, 3 seeds
    python benchmarks/nuclei_quality.py --dataset nuclei_2d --seeds 0
    python benchmarks/nuclei_quality.py --dataset stardist_3d --iterations 300
    python benchmarks/nuclei_quality.py --config foreground_ring=0    # an ablation
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from napari_spoco.core.evaluation.metrics import evaluate
from napari_spoco.core.inference.crac_segmentation import predict_affinities
from napari_spoco.core.inference.prediction import predict_with_foreground
from napari_spoco.core.inference.segmentation import (
    segment_output,
    segmentation_settings,
    settings_for,
    summarize_annotations,
)
from napari_spoco.core.training import Trainer, TrainingConfig
from napari_spoco.core.training.sampling import background_strokes, subsample_objects
from napari_spoco.datasets import sample_dataset

BACKGROUND_ID = 65535


def otsu_watershed(image: np.ndarray, min_distance: int = 4) -> np.ndarray:
    """The classical baseline: smooth, Otsu threshold, split touching nuclei by watershed."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    smooth = gaussian(image.astype(np.float32), sigma=1)
    mask = smooth > threshold_otsu(smooth)
    mask = ndimage.binary_fill_holes(mask)
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=ndimage.label(mask)[0],
                           exclude_border=False)
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask)


def membrane_watershed(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """The classical baseline for membranes (no background): seeded watershed of the signal.

    Seeds are the connected dark cell interiors (below Otsu's threshold of the smoothed
    image, eroded once so that thin gaps in a membrane do not join two cells).
    """
    from scipy import ndimage
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    smooth = gaussian(image.astype(np.float32), sigma=sigma)
    interiors = ndimage.binary_erosion(smooth < threshold_otsu(smooth))
    markers, _ = ndimage.label(interiors)
    return watershed(smooth, markers)


def classical_baseline(image: np.ndarray, truth: np.ndarray):
    """Otsu + watershed for objects on a background; seeded watershed for membranes."""
    if np.count_nonzero(truth == 0) < 0.01 * truth.size:
        return "seeded watershed of the membranes (no network)", membrane_watershed(image)
    return "Otsu + watershed (no network)", otsu_watershed(image)


def split(array: np.ndarray):
    half = array.shape[-1] // 2
    return array[..., :half], array[..., half:]


def training_labels(truth: np.ndarray, setting: str, seed: int) -> tuple[np.ndarray, dict]:
    """Labels and the label convention of one setting (``dense`` or ``sparse@p``)."""
    if setting == "dense":
        return truth.astype(np.uint32), {"mode": "dense"}
    fraction = float(setting.split("@")[1])
    labels = subsample_objects(truth, fraction, seed).astype(np.uint32)
    labels[background_strokes(truth, seed=seed)] = BACKGROUND_ID
    return labels, {"mode": "sparse", "background_id": BACKGROUND_ID}


def run_setting(image, truth, setting, seed, args) -> dict:
    train_image, test_image = split(image)
    train_truth, test_truth = split(truth)
    labels, convention = training_labels(train_truth, setting, seed)
    if args.rescore:
        return rescore(labels, convention, test_truth, setting, seed, args)
    ndim = image.ndim
    patch = (128, 128) if ndim == 2 else (16, 64, 64)
    patch = tuple(min(p, s) for p, s in zip(patch, train_image.shape))
    config = TrainingConfig(iterations=args.iterations, patch_shape=patch,
                            batch_size=4 if ndim == 2 else 1, seed=seed, device="cpu",
                            autosave_seconds=None, **convention, **args.config)
    start = time.perf_counter()
    trainer = Trainer([(train_image, labels)], config)
    rows = []
    for step, _ in enumerate(trainer.steps(), start=1):
        if step in args.report_at and step < args.iterations:
            rows.append(score(trainer, test_image, test_truth, setting, seed, step, start, args))
    rows.append(score(trainer, test_image, test_truth, setting, seed, args.iterations, start,
                      args))
    return rows


def default_segmentation(model, image, normalization, settings):
    """Embeddings, foreground and instances of ``image`` as ``napari-spoco segment`` makes them.

    ``settings`` come from ``settings_for`` (of a ``Trainer`` or a ``LoadedModel``); a CRAC
    model's (``affinity_source == "explicit"``) are segmented on its explicit affinities.
    """
    embeddings, foreground = predict_with_foreground(model, image, normalization, device="cpu")
    affinities = None
    if settings.affinity_source == "explicit":  # a CRAC model (--config method='"crac"')
        affinities = predict_affinities(model, image, normalization, device="cpu")
    seg = segment_output(embeddings, foreground, settings, affinities=affinities)
    return embeddings, foreground, seg


def score(trainer, test_image, test_truth, setting, seed, step, start, args) -> dict:
    """Segment the test half with the defaults of ``trainer`` at ``step`` and score it."""
    train_seconds = time.perf_counter() - start
    settings = settings_for(trainer)
    embeddings, foreground, seg = default_segmentation(trainer.model, test_image,
                                                       trainer.normalization, settings)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        path = os.path.join(args.keep, kept_name(args, setting, seed, step))
        np.savez_compressed(path + ".npz", embeddings=embeddings, foreground=foreground)
        trainer.save(path + ".pt")
    scores = evaluate(test_truth, seg)
    return {"setting": setting, "seed": seed, "steps": step, "train_s": train_seconds,
            "min_size": settings.min_size, "foreground": settings.use_foreground, **scores}


def kept_name(args, setting, seed, step) -> str:
    return f"{args.dataset}_{setting}_seed{seed}_step{step}"


def rescore(labels, convention, test_truth, setting, seed, args) -> list[dict]:
    """Segment the predictions a ``--keep`` run saved with today's clustering code.

    The settings are decided as ``settings_for`` decides them for the trainer: the training
    config's margins, the network's head, the annotation summary of the same training labels.
    """
    rows = []
    for step in sorted({*args.report_at, args.iterations}):
        if step > args.iterations:
            continue
        kept = np.load(os.path.join(args.rescore, kept_name(args, setting, seed, step) + ".npz"))
        config = TrainingConfig(**convention, **args.config)
        summary = summarize_annotations([labels], config.mode, config.background_id,
                                        config.ignore_id)
        settings = segmentation_settings(config, {"foreground": config.foreground}, summary)
        seg = segment_output(kept["embeddings"], kept["foreground"], settings)
        rows.append({"setting": setting, "seed": seed, "steps": step, "train_s": float("nan"),
                     "min_size": settings.min_size, "foreground": settings.use_foreground,
                     **evaluate(test_truth, seg)})
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="stardist_2d")
    parser.add_argument("--settings", nargs="+", default=["dense", "sparse@0.1", "sparse@0.4"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-at", type=int, nargs="*", default=[], metavar="STEP",
                        help="also score the model at these steps of the same run")
    parser.add_argument("--keep", metavar="DIR",
                        help="save the test half's embeddings and foreground, and the "
                             "checkpoint, per scored step")
    parser.add_argument("--rescore", metavar="DIR",
                        help="no training: segment and score the predictions a --keep DIR run "
                             "saved (same --dataset, --settings, --seeds, --iterations, "
                             "--report-at), with the clustering code of today")
    parser.add_argument("--json", help="write all rows here")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="TrainingConfig changes for an ablation, e.g. foreground_ring=0")
    args = parser.parse_args(argv)
    args.config = {key: json.loads(value) for key, value in
                   (item.split("=", 1) for item in args.config)}
    torch.set_num_threads(args.threads)
    data = sample_dataset(args.dataset, seed=0)
    image, truth = np.asarray(data["image"]), np.asarray(data["labels"])
    _, test_image = split(image)
    _, test_truth = split(truth)
    print(f"{data['name']}: image {image.shape}, {int(np.unique(test_truth).size - 1)} objects "
          f"in the test half; load {os.getloadavg()[0]:.1f}; config changes {args.config}",
          flush=True)
    baseline_name, baseline_labels = classical_baseline(test_image, test_truth)
    baseline = evaluate(test_truth, baseline_labels)
    rows = [{"setting": baseline_name, "seed": "-", **baseline}]
    print(f"  baseline, {baseline_name}: SBD {baseline['sbd']:.3f} AP50 {baseline['ap50']:.3f} "
          f"ARand {baseline['adapted_rand_error']:.3f} segments {baseline['n_seg']}", flush=True)
    for setting in args.settings:
        for seed in args.seeds:
            for row in run_setting(image, truth, setting, seed, args):
                rows.append(row)
                print(f"  {setting:<11} seed {seed} step {row['steps']}: SBD {row['sbd']:.3f} AP50 {row['ap50']:.3f} "
                  f"ARand {row['adapted_rand_error']:.3f} segments {row['n_seg']} "
                  f"(min_size {row['min_size']}, foreground {row['foreground']}, "
                  f"{row['train_s']:.0f} s)", flush=True)
    print(f"\n| {data['name']} | SBD | AP50 | ARand | segments (GT {baseline['n_gt']}) |")
    print("|---|---|---|---|---|")
    print(f"| {baseline_name} | {baseline['sbd']:.3f} | {baseline['ap50']:.3f} | "
          f"{baseline['adapted_rand_error']:.3f} | {baseline['n_seg']} |")
    for setting in args.settings:
        picked = [r for r in rows if r["setting"] == setting
                  and r["steps"] == args.iterations]

        def mean_sd(key):
            values = [float(r[key]) for r in picked]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.fmean(values):.3f} ± {sd:.3f}"

        print(f"| {setting}, {args.iterations} steps, {len(picked)} seeds | {mean_sd('sbd')} | "
              f"{mean_sd('ap50')} | {mean_sd('adapted_rand_error')} | {mean_sd('n_seg')} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=str)
    return rows


if __name__ == "__main__":
    main()
