"""``napari-spoco demo``: the annotate → train → segment loop on a sample, in napari or not.

With a display it opens napari with a sample image, its partly painted Labels layer and the
SPOCO dock, ready to press Train. Without one (or with ``--headless``) it runs the same loop
with the same core calls the widgets make: train a small network on the painted objects, predict
embeddings, segment them, and write the results and metrics against the sample's ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HELP = "try napari-spoco on a sample: open napari ready to train, or run the loop headless"
DEFAULT_SAMPLE = "nuclei_2d"
#: A U-Net of three levels: learns the samples in a few hundred CPU steps.
DEMO_FEATURES = (16, 32, 64)
#: Share of the sample's objects that come painted: 46 of the 309 nuclei of ``nuclei_2d``.
#: With 10 % (31 nuclei) the 600-step run scored SBD 0.79-0.80 depending on the thread count,
#: with 15 % 0.81 (docs/results.md, "The demo").
DEMO_FRACTION = 0.15


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser("demo", help=HELP, description=HELP + ".")
    parser.add_argument("--sample", default=DEFAULT_SAMPLE,
                        help=f"sample dataset (default {DEFAULT_SAMPLE}; also tissue_2d, "
                             "tissue_3d, stardist_2d, stardist_3d, ...)")
    parser.add_argument("--headless", action="store_true",
                        help="run without napari even if a display is available")
    parser.add_argument("--out", default="demo-output",
                        help="output folder (default ./%(default)s)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training steps (default: the run-length rule of the Train tab "
                             "with a shorter time budget: 600 in 2D on a CPU, about 2 min)")
    parser.add_argument("--fraction", type=float, default=DEMO_FRACTION,
                        help="fraction of the ground-truth objects that come painted "
                             "(default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", action="store_true",
                        help="with napari: press Train right away")
    parser.set_defaults(func=run)
    return parser


def has_display() -> bool:
    """Whether a GUI can open (always on macOS and Windows; X11 or Wayland on Linux)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run(args) -> int:
    if args.headless or not has_display() or _napari_missing():
        if not args.headless and has_display():
            print("napari is not installed: running the demo headless (pip install "
                  "'napari-spoco[gui]' to see it in napari).", file=sys.stderr)
        elif not args.headless:
            print("No display found: running the demo headless (use a desktop session, or "
                  "xvfb-run, to see napari).", file=sys.stderr)
        summary = run_headless(args.sample, Path(args.out), args.iterations, args.fraction,
                               args.device, args.seed)
        print(format_summary(summary))
        return 0
    return run_napari(args)


def _napari_missing() -> bool:
    """True when the `gui` extra (napari and a Qt binding) is not installed."""
    import importlib.util

    return importlib.util.find_spec("napari") is None


def demo_iterations(shape, device: str) -> int:
    """The demo's run length: the Train tab's rule with a budget that fits three minutes."""
    from napari_spoco.core.run_defaults import DEMO_BUDGET_SECONDS, default_iterations

    return default_iterations(shape, device, budget_seconds=DEMO_BUDGET_SECONDS)


def demo_config(ndim: int, iterations: int | None, device: str, seed: int, shape,
                background_id: int | None = None):
    """Settings of the demo: a small network that learns the sample in a few hundred steps.

    Patch and batch are the run defaults of ``core.run_defaults`` for the sample's shape and
    the device, as in the Train tab and ``napari-spoco train``; iterations (when None) follow
    the same rule with the demo's shorter time budget.
    """
    from napari_spoco.core.run_defaults import default_patch_and_batch
    from napari_spoco.core.training import TrainingConfig

    patch, batch = default_patch_and_batch(shape, device)
    if iterations is None:
        iterations = demo_iterations(shape, device)
    return TrainingConfig(ndim=ndim, features=DEMO_FEATURES, patch_shape=patch, batch_size=batch,
                          iterations=iterations, device=device, seed=seed,
                          background_id=background_id, autosave_seconds=None)


def run_headless(sample: str, out: Path, iterations: int | None = None,
                 fraction: float = DEMO_FRACTION,
                 device: str = "auto", seed: int = 0, log=print) -> dict:
    """Train, predict, segment and evaluate on ``sample``; write everything into ``out``.

    Returns
    -------
    dict
        Paths written, timings and the metrics against the sample's ground truth.
    """
    from napari_spoco.core.devices import resolve_device
    from napari_spoco.core.evaluation.metrics import evaluate
    from napari_spoco.core.inference.pca import EmbeddingPCA
    from napari_spoco.core.inference.prediction import predict_with_foreground
    from napari_spoco.core.inference.segmentation import segment_output, settings_for
    from napari_spoco.core.io import write_array
    from napari_spoco.core.training import Trainer
    from napari_spoco.datasets import sample_dataset

    out.mkdir(parents=True, exist_ok=True)
    data = sample_dataset(sample, fraction=fraction, seed=seed)
    image, truth, painted = data["image"], data["labels"], data["partial_labels"]
    background_id = data["background_id"]
    n_painted = int(np.setdiff1d(np.unique(painted), [0, background_id or 0]).size)
    log(f"sample {data['name']}: image {image.shape}, {n_painted} of "
        f"{int(np.unique(truth).size - 1)} objects painted"
        + ("" if background_id is None else ", plus a few background strokes"))
    device = resolve_device(device).type
    config = demo_config(image.ndim, iterations, device, seed, image.shape, background_id)
    checkpoint = out / "model.pt"
    trainer = Trainer([(image, painted)], config, autosave_path=checkpoint)
    start = time.perf_counter()
    report = None
    for report in trainer.steps():
        if report.iteration % 50 == 0 or report.iteration == report.iterations:
            log(f"  step {report.iteration}/{report.iterations}  loss {report.loss:.3f}  "
                f"({report.seconds_per_step:.2f} s/step)")
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    embeddings, foreground = predict_with_foreground(trainer.model, image, trainer.normalization,
                                                     device=trainer.device)
    predict_seconds = time.perf_counter() - start
    start = time.perf_counter()
    settings = settings_for(trainer)  # what the Segment tab and `napari-spoco segment` use
    labels = segment_output(embeddings, foreground, settings)
    segment_seconds = time.perf_counter() - start
    rgb = EmbeddingPCA().fit_transform(embeddings, seed=seed)

    files = {
        "checkpoint": checkpoint,
        "segmentation": write_array(out / "segmentation.tif", labels.astype(np.uint32)),
        "embeddings_pca_tif": write_array(out / "embeddings_pca.tif",
                                          (rgb * 255).round().astype(np.uint8)),
        "embeddings_pca_png": _write_png(out / "embeddings_pca.png", rgb),
        "painted": write_array(out / "painted_labels.tif", painted.astype(np.uint32)),
    }
    metrics = evaluate(truth, labels)
    summary = {
        "sample": data["name"],
        "image_shape": list(image.shape),
        "objects_painted": n_painted,
        "iterations": int(trainer.iteration),
        "final_loss": None if report is None else float(report.loss),
        "device": str(trainer.device),
        "clustering": settings.to_dict(),
        "seconds": {"train": train_seconds, "predict": predict_seconds,
                    "segment": segment_seconds},
        "metrics": metrics,
        "files": {k: str(v) for k, v in files.items()},
    }
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(summary, indent=2, default=float))
    summary["files"]["metrics"] = str(metrics_path)
    return summary


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    """The PCA colours as a PNG; the middle slice for a 3D stack."""
    import imageio.v3 as iio

    if rgb.ndim == 4:
        rgb = rgb[rgb.shape[0] // 2]
    iio.imwrite(path, (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    return path


def format_summary(summary: dict) -> str:
    metrics = summary["metrics"]
    seconds = summary["seconds"]
    lines = [
        f"napari-spoco demo on {summary['sample']} {tuple(summary['image_shape'])}, "
        f"{summary['objects_painted']} objects painted, {summary['iterations']} steps on "
        f"{summary['device']}:",
        f"  train {seconds['train']:.1f} s, predict {seconds['predict']:.1f} s, "
        f"segment {seconds['segment']:.1f} s",
        f"  vs ground truth: SBD {metrics['sbd']:.3f}, AP50 {metrics['ap50']:.3f}, "
        f"mAP {metrics['map']:.3f}, adapted Rand error {metrics['adapted_rand_error']:.3f}, "
        f"{metrics['n_seg']} objects found / {metrics['n_gt']} in the ground truth",
        "  wrote " + ", ".join(summary["files"].values()),
    ]
    return "\n".join(lines)


def run_napari(args) -> int:
    """Open napari with the sample, its painted labels and the dock; optionally start."""
    import napari

    from napari_spoco.core.devices import resolve_device

    from napari_spoco._sample_data import sample_layers

    viewer = napari.Viewer(title="napari-spoco demo")
    # the sample menu's layers, with --fraction painted (as the headless run) instead of the
    # menu's share: one generation of the sample
    for data, kwargs, layer_type in sample_layers(args.sample, args.fraction, args.seed):
        viewer.add_layer(napari.layers.Layer.create(data, kwargs, layer_type))
    _, widget = viewer.window.add_plugin_dock_widget("napari-spoco", "SPOCO")
    settings = widget.train.settings
    iterations = args.iterations
    if iterations is None:
        image = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Image))
        iterations = demo_iterations(image.data.shape, resolve_device(args.device).type)
    settings.iterations_spin.setValue(iterations)
    settings.features_edit.setText(", ".join(str(f) for f in DEMO_FEATURES))
    settings.save_edit.setText(str(Path(args.out).resolve() / "model.pt"))
    if np.any(np.asarray(viewer.layers[-1].data) == widget.data.background_spin.value()):
        widget.data.background_check.setChecked(True)
    widget.tabs.setCurrentIndex(1)
    if args.start:
        widget.train.start()
    napari.run()
    widget.shutdown()
    return 0
