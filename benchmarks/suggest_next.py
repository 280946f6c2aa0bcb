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

The score is chosen by ``--signal``: ``momentum`` (the f/g embedding disagreement),
``augmentation`` (instability of each segment under photometric jitter) or ``both`` (one
suggested arm per signal, all from the same checkpoint). Each suggested round also records how
well every signal predicts the errors on the training half (Spearman correlation of the score
with ``1 − best IoU`` to the ground truth, over predicted segments), and the error of the
segment it picked against the mean error of the unpainted segments.

``--figure PATH`` draws test SBD against the number of painted objects (per-seed lines thin,
the mean thick, one colour per strategy) as a PNG with pillow (matplotlib is no dependency);
with ``--load`` it draws rows of earlier runs (e.g. one json per seed run in parallel) without
training anything.

    python benchmarks/suggest_next.py --seeds 0 1 2 --initial-steps 300 --rounds 6 --steps 50 \
        --signal both --json ../docs/results/suggest_next.json --figure ../docs/suggest_next.png
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
from PIL import Image, ImageDraw

from napari_spoco.core.evaluation.metrics import evaluate, overlaps
from napari_spoco.core.inference.prediction import predict_with_foreground
from napari_spoco.core.inference.segmentation import segment_output, settings_for
from napari_spoco.core.inference.uncertainty import SIGNALS, suggest_next, uncertainty_scores
from napari_spoco.core.training import Trainer, TrainingConfig
from napari_spoco.datasets import sample_dataset


def test_scores(trainer, test_image, test_truth) -> dict:
    embeddings, foreground = predict_with_foreground(trainer.model, test_image,
                                                     trainer.normalization, device="cpu")
    return evaluate(test_truth, segment_output(embeddings, foreground, settings_for(trainer)))


def segment_errors(segments, truth) -> dict:
    """``1 − best IoU`` with the ground truth of every predicted segment."""
    table = overlaps(segments, truth)
    best = np.zeros(table.gt_ids.size)
    np.maximum.at(best, table.pair_gt, table.iou())
    return dict(zip(table.gt_ids.tolist(), (1 - best).tolist()))


def score_quality(segments, scores, truth) -> float:
    """Spearman correlation of the segment scores with the segments' error 1 − best GT IoU."""
    errors = segment_errors(segments, truth)
    ids = [i for i in scores if i in errors]
    if len(ids) < 3:
        return float("nan")
    rank = lambda v: np.argsort(np.argsort(v))
    a, b = rank([scores[i] for i in ids]), rank([errors[i] for i in ids])
    return float(np.corrcoef(a, b)[0, 1])


def paint_next(strategy, trainer, image, truth, labels, rng, seed=0) -> tuple[np.ndarray, dict]:
    """The annotator's next stroke: the labels with one more object (or a false one erased)."""
    painted_ids = set(np.unique(labels).tolist()) - {0, BACKGROUND_ID}
    unpainted = [i for i in np.unique(truth).tolist() if i != 0 and i not in painted_ids]
    labels = labels.copy()
    info = {}
    if strategy.startswith("suggested-"):
        signal = strategy.split("-", 1)[1]
        start = time.perf_counter()
        results = {name: uncertainty_scores(trainer, image, signal=name, seed=seed)
                   for name in SIGNALS}  # both scores of the same model, to compare them
        info["score_seconds"] = round(time.perf_counter() - start, 1)
        for name, res in results.items():
            info[f"spearman_{name}"] = score_quality(res.segments, res.scores, truth)
        result = results[signal]
        info["score_vs_error"] = info[f"spearman_{signal}"]
        suggestion = suggest_next(result.segments, result.scores, labels,
                                  background_id=BACKGROUND_ID)
        if suggestion.segment_id is not None:
            # Was the pick wrong where the model is wrong? Its error against the unpainted mean.
            errors = segment_errors(result.segments, truth)
            flat, painted = result.segments.reshape(-1), labels.reshape(-1) != 0
            open_ids = [i for i in result.scores if i in errors and
                        painted[flat == i].mean() <= 0.5]
            info["picked_error"] = errors.get(suggestion.segment_id, float("nan"))
            info["unpainted_mean_error"] = float(np.mean([errors[i] for i in open_ids]))
            info["picked_size"] = int((flat == suggestion.segment_id).sum())
            info["unpainted_median_size"] = float(np.median(
                [np.count_nonzero(flat == i) for i in open_ids]))
            info["picked_score"] = suggestion.score
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
                                              rng, seed=1000 * seed + round_)
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
                row["elapsed_s"] = round(time.perf_counter() - args.start, 1)
                rows.append(row)
                if args.json:  # after every round, so a cut-short run keeps what it measured
                    with open(args.json, "w") as fh:
                        json.dump({"args": settings_of(args), "rows": args.done + rows}, fh,
                                  indent=1, default=str)
                quality = info.get("score_vs_error")
                print(f"  seed {seed} {strategy:<22} round {round_}: {n_objects} objects, "
                      f"SBD {row['sbd']:.3f} AP50 {row['ap50']:.3f} "
                      f"{'' if quality is None else f'score~error {quality:.2f}'}", flush=True)
    return rows


COLOURS = {"random": (120, 120, 120), "suggested-momentum": (31, 119, 180),
           "suggested-augmentation": (214, 39, 40)}


def draw_figure(rows, path, metric="sbd", x="objects", size=(900, 600)):
    """Test ``metric`` against painted objects (or rounds): thin per-seed lines, the mean thick.

    Drawn with pillow, which comes with the project's imageio; matplotlib is not needed.
    """
    width, height = size
    left, right, top, bottom = 80, 250, 50, 70
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    xs = [r[x] for r in rows]
    ys = [r[metric] for r in rows]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0 = np.floor(min(ys) * 20) / 20
    y1 = max(np.ceil(max(ys) * 20) / 20, y0 + 0.05)

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                top + (y1 - y) / (y1 - y0) * (height - top - bottom))

    draw.rectangle([px(x0, y1), px(x1, y0)], outline="black")
    for tick in range(x0, x1 + 1):
        tx, ty = px(tick, y0)
        draw.line([(tx, ty), (tx, ty + 5)], fill="black")
        draw.text((tx - 4, ty + 8), str(tick), fill="black")
    for y in np.arange(y0, y1 + 1e-9, 0.05):
        draw.line([px(x0, y), px(x1, y)], fill=(225, 225, 225))
        draw.text((left - 40, px(x0, y)[1] - 6), f"{y:.2f}", fill="black")
    x_name = {"objects": "painted objects", "round": "annotator rounds"}.get(x, x)
    draw.text(((left + width - right) / 2 - 70, height - 35), f"{x_name} (training half)",
              fill="black")
    draw.text((left, 15), f"StarDist 2D, test-half {metric.upper()} vs {x_name} "
              "(thin: seeds, thick: mean)", fill="black")
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    for k, strategy in enumerate(strategies):
        colour = COLOURS.get(strategy, (44, 160, 44))
        mine = [r for r in rows if r["strategy"] == strategy]
        by_round = {}
        for seed in sorted({r["seed"] for r in mine}):
            line = sorted((r["round"], r[x], r[metric]) for r in mine if r["seed"] == seed)
            draw.line([px(o, v) for _, o, v in line], fill=tuple(c // 2 + 127 for c in colour),
                      width=1)
            for round_, o, v in line:
                by_round.setdefault(round_, []).append((o, v))
        mean = [(np.mean([o for o, _ in p]), np.mean([v for _, v in p]))
                for _, p in sorted(by_round.items())]
        draw.line([px(o, v) for o, v in mean], fill=colour, width=4)
        for o, v in mean:
            cx, cy = px(o, v)
            draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour)
        ly = top + 20 + 25 * k
        draw.line([(width - right + 15, ly), (width - right + 45, ly)], fill=colour, width=4)
        n_seeds = len({r["seed"] for r in mine})
        draw.text((width - right + 52, ly - 6), f"{strategy} ({n_seeds} seeds)", fill="black")
    image.save(path)
    return path


def settings_of(args) -> dict:
    """The command-line settings (without the rows and the clock the run carries along)."""
    return {k: v for k, v in vars(args).items() if k not in ("done", "start")}


def arms(strategies, signal) -> list:
    """The strategies to run: each "suggested" becomes one arm per chosen signal."""
    signals = list(SIGNALS) if signal == "both" else [signal]
    out = []
    for strategy in strategies:
        out.extend([f"suggested-{s}" for s in signals] if strategy == "suggested"
                   else [strategy])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--start-fraction", type=float, default=0.05)
    parser.add_argument("--initial-steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps per round")
    parser.add_argument("--strategies", nargs="+", default=["suggested", "random"],
                        choices=["suggested", "random"])
    parser.add_argument("--signal", choices=[*SIGNALS, "both"], default="both",
                        help="the score of the suggested arm; both: one arm per signal")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write all rows here (docs/results/suggest_next.json)")
    parser.add_argument("--figure", help="save SBD vs painted objects here as a PNG")
    parser.add_argument("--x", choices=["objects", "round"], default="objects",
                        help="the figure's x axis: painted objects, or annotator rounds (a "
                             "round that paints a false object as background adds none)")
    parser.add_argument("--load", nargs="+", default=[],
                        help="json files of earlier runs: draw --figure from their rows "
                             "without training")
    args = parser.parse_args(argv)
    if args.load:
        rows = []
        for path in args.load:
            with open(path) as fh:
                rows.extend(json.load(fh)["rows"])
        if not args.figure:
            parser.error("--load only draws a figure; give --figure PATH.")
        print(draw_figure(rows, args.figure, x=args.x))
        return rows
    args.strategies = arms(args.strategies, args.signal)
    torch.set_num_threads(args.threads)
    data = sample_dataset("stardist_2d", seed=0)
    image, truth = np.asarray(data["image"]), np.asarray(data["labels"])
    args.start = time.perf_counter()
    args.done = []
    for seed in args.seeds:
        args.done = args.done + run_seed(image, truth, seed, args)
    rows = args.done
    print(f"{time.perf_counter() - args.start:.0f} s")
    if args.figure:
        print(draw_figure(rows, args.figure, x=args.x))
    return rows


if __name__ == "__main__":
    main()
