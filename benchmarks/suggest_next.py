"""Does painting the suggested object teach the model faster than painting a random one?

Simulated annotator on the issue's protocol (``nuclei_quality.py``): train on the left half of
StarDist 2D, segment the right half. Start from a few painted objects plus background strokes
and a short training; then, each round, the annotator paints the ground truth of one more
object of the training half, chosen either by ``core.uncertainty.suggest_next`` ("suggested")
or at random among the unpainted ones ("random"); the model fine-tunes a fixed number of
steps (``Trainer.set_labels``, then more steps) and the test half is segmented and scored.
Both strategies continue from the same initial checkpoint per seed.

When the suggested segment lies mostly on ground-truth background (a false object), the
annotator paints it as background instead, as a user would; that round adds no object.

Each round also records how well the score predicts the errors on the training half (Spearman
correlation of the score with ``1 − best IoU`` to the ground truth, over predicted segments).

    python benchmarks/suggest_next.py --seeds 0 1 2 --initial-steps 300 --rounds 8 --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from nuclei_quality import BACKGROUND_ID, split, training_labels

from napari_spoco.core.evaluation.metrics import evaluate, overlaps
from napari_spoco.core.inference.prediction import predict_with_foreground
from napari_spoco.core.inference.segmentation import segment_output, settings_for
from napari_spoco.core.inference.uncertainty import suggest_next, uncertainty_scores
from napari_spoco.core.training import Trainer, TrainingConfig
from napari_spoco.datasets import sample_dataset


def test_scores(trainer, test_image, test_truth) -> dict:
    embeddings, foreground = predict_with_foreground(trainer.model, test_image,
                                                     trainer.normalization, device="cpu")
    return evaluate(test_truth, segment_output(embeddings, foreground, settings_for(trainer)))


def score_quality(segments, scores, truth) -> float:
    """Spearman correlation of the segment scores with the segments' error 1 − best GT IoU."""
    table = overlaps(segments, truth)
    best = np.zeros(table.gt_ids.size)
    np.maximum.at(best, table.pair_gt, table.iou())
    errors = dict(zip(table.gt_ids.tolist(), (1 - best).tolist()))
    ids = [i for i in scores if i in errors]
    if len(ids) < 3:
        return float("nan")
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    a, b = rank([scores[i] for i in ids]), rank([errors[i] for i in ids])
    return float(np.corrcoef(a, b)[0, 1])


def paint_next(strategy, trainer, image, truth, labels, rng) -> tuple[np.ndarray, str]:
    """The annotator's next stroke: the labels with one more object (or a false one erased)."""
    painted_ids = set(np.unique(labels).tolist()) - {0, BACKGROUND_ID}
    unpainted = [i for i in np.unique(truth).tolist() if i != 0 and i not in painted_ids]
    labels = labels.copy()
    info = {}
    if strategy == "suggested":
        result = uncertainty_scores(trainer, image)
        info["score_vs_error"] = score_quality(result.segments, result.scores, truth)
        suggestion = suggest_next(result.segments, result.scores, labels,
                                  background_id=BACKGROUND_ID)
        if suggestion.segment_id is not None:
            region = result.segments == suggestion.segment_id
            under = truth[region]
            under = under[np.isin(under, unpainted)]
            if under.size < 0.5 * region.sum():  # mostly background: paint it as background
                labels[region & (truth == 0)] = BACKGROUND_ID
                return labels, {**info, "painted": "background"}
            target = int(np.bincount(under).argmax())
            labels[truth == target] = target
            return labels, {**info, "painted": target}
    if not unpainted:
        return labels, {**info, "painted": None}
    target = int(rng.choice(unpainted))
    labels[truth == target] = target
    return labels, {**info, "painted": target}


def run_seed(image, truth, seed, args) -> list[dict]:
    train_image, test_image = split(image)
    train_truth, test_truth = split(truth)
    start_labels, convention = training_labels(train_truth, f"sparse@{args.start_fraction}", seed)
    config = TrainingConfig(iterations=args.initial_steps, patch_shape=(128, 128), batch_size=4,
                            seed=seed, device="cpu", autosave_seconds=None, **convention)
    trainer = Trainer([(train_image, start_labels)], config)
    for _ in trainer.steps():
        pass
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        initial = trainer.save(os.path.join(tmp, "initial.pt"))
        for strategy in args.strategies:
            labels = start_labels.copy()
            run = Trainer.from_checkpoint(initial, [(train_image, labels)])
            rng = np.random.default_rng(1000 + seed)
            for round_ in range(args.rounds + 1):
                if round_ > 0:
                    labels, info = paint_next(strategy, run, train_image, train_truth, labels,
                                              rng)
                    run.set_labels(0, labels)
                    run.config.iterations += args.steps
                    for _ in run.steps():
                        pass
                else:
                    info = {}
                n_objects = len(set(np.unique(labels).tolist()) - {0, BACKGROUND_ID})
                row = {"seed": seed, "strategy": strategy, "round": round_,
                       "objects": n_objects, "steps": run.iteration,
                       **{k: v for k, v in info.items()},
                       **test_scores(run, test_image, test_truth)}
                rows.append(row)
                print(f"  seed {seed} {strategy:<9} round {round_}: {n_objects} objects, "
                      f"SBD {row['sbd']:.3f} AP50 {row['ap50']:.3f} "
                      f"{'score~error %.2f' % info['score_vs_error'] if 'score_vs_error' in info else ''}",
                      flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--start-fraction", type=float, default=0.05)
    parser.add_argument("--initial-steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps per round")
    parser.add_argument("--strategies", nargs="+", default=["suggested", "random"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write all rows here (docs/results/suggest_next.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = sample_dataset("stardist_2d", seed=0)
    image, truth = np.asarray(data["image"]), np.asarray(data["labels"])
    start = time.perf_counter()
    rows = []
    for seed in args.seeds:
        rows.extend(run_seed(image, truth, seed, args))
        if args.json:  # after every seed, so a cut-short run keeps what it measured
            with open(args.json, "w") as fh:
                json.dump({"args": vars(args), "rows": rows}, fh, indent=1, default=str)
    print(f"{time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
