"""Loss-curve PNG and the docs/models.md page of the shipped source models.

Used by ``benchmarks/train_source_models.py``; kept apart so that script stays about training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def plot_curve(path: Path, rows: list[dict], title: str) -> None:
    """Loss (grey) and its smoothed value (blue) against iteration, log-scaled y, as a PNG."""
    from PIL import Image, ImageDraw  # pillow comes with imageio; matplotlib is not needed

    width, height, left, right, top, bottom = 720, 400, 70, 20, 30, 45
    iters = np.array([r["iteration"] for r in rows])
    raw = np.log10(np.maximum([r["loss"] for r in rows], 1e-6))
    smooth = np.log10(np.maximum([r["smoothed_loss"] for r in rows], 1e-6))
    y_low, y_high = np.floor(min(raw.min(), smooth.min()) * 4) / 4, np.ceil(raw.max() * 4) / 4
    x_high = max(iters.max(), 1)

    def to_px(x, y):
        px = left + (x / x_high) * (width - left - right)
        py = top + (y_high - y) / max(y_high - y_low, 1e-9) * (height - top - bottom)
        return list(zip(px.tolist(), py.tolist()))

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for value in np.arange(y_low, y_high + 1e-9, 0.25):
        (_, py), = to_px(np.array([0.0]), np.array([value]))
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((4, py - 6), f"{10 ** value:.3g}", fill="black")
    for value in np.linspace(0, x_high, 6):
        (px, _), = to_px(np.array([value]), np.array([y_low]))
        draw.line([px, height - bottom, px, height - bottom + 4], fill="black")
        draw.text((px - 12, height - bottom + 8), f"{int(value)}", fill="black")
    draw.line(to_px(iters, raw), fill=(170, 170, 170), width=1)
    draw.line(to_px(iters, smooth), fill=(20, 70, 200), width=2)
    draw.text((left, 8), f"{title}: loss (grey) and smoothed loss (blue), log scale",
              fill="black")
    draw.text((width // 2 - 20, height - 18), "iteration", fill="black")
    image.save(path)


# -- docs/models.md ---------------------------------------------------------------------------

DOCS_INTRO = """# Shipped source models

napari-spoco ships pretrained source models in `napari_spoco/models/`, to fine-tune on a few
annotated target objects (the paper's transfer setting) or to segment images of their own
domain directly. The registry `napari_spoco.models` (`available_models()`, `model_path(name)`,
reading `napari_spoco/models/models.json`) is the one place to ask which exist; the Train tab
offers them as source models. They load with the ordinary checkpoint code
(`core.checkpoint.load_model`, `torch.load(weights_only=True)`).

Both are trained **densely** on synthetic ovules-like tissue (`make_tissue(..., preset="ovules")`,
see `docs/synthetic.md`): the tissue labels cover every pixel, so every cell (also those cut by
the patch border) is an object and no pixel is unlabeled; the loss runs in `mode="dense"`
(0 = background, which tissue never contains). Each file holds f and the momentum network g
(for consistency clustering), the normalisation and the training settings, but no optimizer,
schedule or RNG state (they would triple the file and only serve resuming).

They are trained on a 2-core CPU shared with other jobs, so they are small networks: they
demonstrate the pipeline and serve as a source for fine-tuning, they are not the paper's
models. `python benchmarks/train_source_models.py NAME` reproduces a model, its metrics, loss
curve and this page (wall times vary with the machine's load; same seed and data give the same
weights on the CPU up to thread scheduling of floating-point sums).

**When training stops.** At a plateau of the validation metric, not after a fixed number of
steps: every `validate_every` steps the network segments the held-out images (below) with the
plugin's default segmentation, and the network with the best mean SBD so far is the one that
ships. Training ends once `patience` validations in a row did not beat it by 0.005, or at the
recipe's cap. `ovules_2d` is trained this way (since 2026-12-03). `ovules_3d` predates the rule:
it was trained for a fixed 1600 steps (400, then `--resume --iterations 1600`; about 0.6 s per
step on an idle 2-core CPU) and its loss was still falling. With plain mutex watershed it
gave about twice as many segments as cells (1070 for 512); the default segmentation, which
validation uses since 2026-12-03, gives 445 for 512, but ARE stays 0.57 and SBD 0.48. It is a
fine-tuning source and a demonstration rather than a finished 3D model; retraining it to its
plateau needs hours of this CPU, or a GPU.

**Validation.** Held-out images of the same preset, generated with seeds that training never
uses, are segmented with the plugin's default segmentation (`settings_for` + `segment_output`,
what `napari-spoco segment` runs: mutex watershed with the settings decided from the training
labels; `anisotropic=True` in 3D) with the shipped f and, as the baseline, with an untrained
network of the same architecture (initialised with `torch.manual_seed(12345)`) and the same
normalisation and settings. Metrics from `core.metrics.evaluate`, averaged over the held-out
images: adapted Rand error (ARE, lower is better), SBD, AP at IoU 0.5, VOI split/merge (lower
is better), number of segments vs ground-truth cells.

Deviations from the paper's training settings (lr 1e-3 instead of 2e-4, momentum m = 0.99
instead of 0.999, a plateau patience of 150 steps, small U-Nets and patches) are explained in
`docs/method.md`, section "Shipped source models".
"""


def stopping_line(summary: dict) -> str:
    """How the run ended: at a validation plateau (with its curve), or after a fixed count."""
    curve = summary.get("validation_curve")
    if not curve:
        return "- **Stopping:** a fixed number of steps (before the validation-plateau rule).\n"
    best = max(curve, key=lambda row: row["sbd"])
    points = ", ".join(f"{row['iteration']:.0f}: {row['sbd']:.3f}" for row in curve)
    return (f"- **Stopping:** validation every {summary['validate_every']} steps; training "
            f"ended after {summary['trained_iterations']} steps (at the validation plateau, or "
            "when the loss-plateau schedule took the lr below its minimum, whichever came "
            f"first), and the best validation (SBD "
            f"{best['sbd']:.3f} at step {best['iteration']:.0f}) ships. Mean validation SBD "
            f"by step: {points} ([CSV](models/{summary['name']}_validation.csv)).\n")


def docs_section(summary: dict) -> str:
    """The docs/models.md section of one model, from its ``*_metrics.json``."""
    c = summary["config"]
    mean = summary["validation"]["mean"]
    rows = []
    for key, label in (("trained", "shipped model"), ("random", "untrained network")):
        m = mean[key]
        rows.append(f"| {label} | {m['adapted_rand_error']:.3f} | {m['sbd']:.3f} | "
                    f"{m['ap50']:.3f} | {m['voi_split']:.2f} | {m['voi_merge']:.2f} | "
                    f"{m['n_seg']:.0f} / {m['n_gt']:.0f} |")
    name = summary["name"]
    shape = "×".join(map(str, summary["train_shape"]))
    val_shape = "×".join(map(str, summary["validation"]["val_shape"]))
    return f"""
## `{name}`

- **Data:** {len(summary["train_seeds"])} images {shape} of preset `{summary["preset"]}`,
  seeds {summary["train_seeds"]}, dense labels, patch {"×".join(map(str, c["patch_shape"]))},
  batch {c["batch_size"]}, augmentation on (anisotropic: {c["anisotropic"]}).
- **Network:** U-Net {c["ndim"]}D, features {tuple(c["features"])}, group norm,
  anisotropic levels {c["anisotropic_levels"]}, {c["out_channels"]}-d embeddings,
  {summary["parameters"]:,} parameters; file {summary["file_bytes"] / 1e6:.1f} MB (f and g).
- **Training:** shipped after {summary["iterations"]} iterations, Adam lr {c["lr"]:g}, weight decay
  {c["weight_decay"]:g}, momentum m = {c["momentum"]}, seed {c["seed"]};
  loss δv = {c["loss"]["delta_v"]}, δd = {c["loss"]["delta_d"]}.
  Wall time {summary["train_wall_seconds"] / 60:.1f} min on the 2-core CPU
  ({summary["torch_threads"]} torch thread(s), machine shared with other jobs).
- **Loss:** mean of the first 50 steps {summary["loss_first_50_mean"]:.2f} → last 50 steps
  {summary["loss_last_50_mean"]:.2f} ([CSV](models/{name}_loss.csv)).
{stopping_line(summary)}
![{name} loss](models/{name}_loss.png)

Validation on {len(summary["validation"]["val_seeds"])} held-out images {val_shape}, seeds
{summary["validation"]["val_seeds"]}:

| network | ARE ↓ | SBD ↑ | AP50 ↑ | VOI split ↓ | VOI merge ↓ | segments / cells |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Command: `{summary["command"]}`
"""


def write_docs(docs_dir: Path) -> Path:
    """Regenerate docs/models.md from every ``*_metrics.json`` in ``docs_dir``."""
    sections = [docs_section(json.loads(path.read_text()))
                for path in sorted(docs_dir.glob("*_metrics.json"))]
    out = docs_dir.parent / "models.md"
    out.write_text(DOCS_INTRO + "".join(sections))
    return out
