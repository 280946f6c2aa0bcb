"""``napari-spoco evaluate``: compare a segmentation with ground truth."""

from __future__ import annotations

import json

HELP = "score a segmentation against ground truth (SBD, |DiC|, AP, mAP, ARand, VOI)"

#: (key in metrics.evaluate's dict, row label, whether higher is better)
ROWS = (
    ("sbd", "SBD", True),
    ("dic", "|DiC|", False),
    ("ap50", "AP@0.5", True),
    ("map", "mAP@0.5:0.95", True),
    ("adapted_rand_error", "adapted Rand error", False),
    ("voi_split", "VOI split", False),
    ("voi_merge", "VOI merge", False),
    ("n_gt", "objects in ground truth", None),
    ("n_seg", "objects in segmentation", None),
)


def add_parser(subparsers):
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate", help=HELP,
        description=HELP + ". Label 0 is background/unlabeled in both and is not an object.",
    )
    parser.add_argument("--gt", required=True, help="ground-truth labels (.tif, .npy, .zarr)")
    parser.add_argument("--seg", required=True, help="segmentation labels of the same shape")
    parser.add_argument("--json", action="store_true",
                        help="print the metrics as one JSON object instead of a table")
    parser.set_defaults(func=run)
    return parser


def format_table(metrics: dict) -> str:
    """The metrics as aligned ``name  value  (better)`` lines."""
    width = max(len(label) for _, label, _ in ROWS)
    lines = []
    for key, label, higher in ROWS:
        if key not in metrics:
            continue
        value = metrics[key]
        text = f"{value:d}" if isinstance(value, int) else f"{value:.4f}"
        hint = "" if higher is None else ("  (higher is better)" if higher
                                          else "  (lower is better)")
        lines.append(f"{label:<{width}}  {text:>8}{hint}")
    return "\n".join(lines)


def run(args) -> int:
    """Run ``napari-spoco evaluate``."""
    from napari_spoco.core.evaluation.metrics import evaluate
    from napari_spoco.core.io import read_array

    metrics = evaluate(read_array(args.gt), read_array(args.seg))
    metrics = {key: (value if isinstance(value, int) else float(value))
               for key, value in metrics.items()}
    print(json.dumps(metrics, indent=2) if args.json else format_table(metrics))
    return 0
