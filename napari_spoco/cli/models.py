"""``napari-spoco models``: the shipped source models, what they are for, and where they lie."""

from __future__ import annotations

import argparse
import json

HELP = "list the pretrained models that ship with napari-spoco (use one with --source NAME)"

EPILOG = """\
Use a model by its name wherever a checkpoint is asked for:
  napari-spoco train --source ovules_2d --image img.tif --labels sparse.tif --out tuned.pt
  napari-spoco segment --checkpoint ovules_3d --image stack.tif --out seg.tif
A file path works there too, and an existing file wins over a model of the same name.
How each model was trained and how well it does: docs/models.md.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``models`` subcommand."""
    parser = subparsers.add_parser(
        "models", help=HELP, description=HELP + ".", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true",
                        help="print the models as a JSON list (name, ndim, modality, "
                             "description, path)")
    parser.set_defaults(func=run)
    return parser


def model_rows() -> list[dict]:
    """One dict per installed model: name, ndim, modality, description and path.

    Returns
    -------
    list of dict
        In the order of :func:`napari_spoco.models.available_models` (by name).
    """
    from napari_spoco.models import available_models

    return [{"name": info.name, "ndim": info.ndim, "modality": info.modality,
             "description": info.description, "path": str(info.path)}
            for info in available_models()]


def format_listing(rows: list[dict]) -> str:
    """The models as a table with a one-line hint on how to use one.

    Parameters
    ----------
    rows : list of dict
        As :func:`model_rows` gives them.

    Returns
    -------
    str
        ``name  ndim  modality  description`` lines, each followed by the path, then the hint.
    """
    if not rows:
        return ("No shipped model is installed; give the path of a checkpoint file to --source "
                "or --checkpoint instead.")
    name_width = max(len("name"), *(len(row["name"]) for row in rows))
    modality_width = max(len("modality"), *(len(row["modality"]) for row in rows))
    lines = [f"{'name':<{name_width}}  ndim  {'modality':<{modality_width}}  description"]
    for row in rows:
        lines.append(f"{row['name']:<{name_width}}  {str(row['ndim']) + 'D':<4}  "
                     f"{row['modality']:<{modality_width}}  {row['description']}")
        lines.append(f"{'':<{name_width}}  path: {row['path']}")
    example = rows[0]["name"]
    lines.append("")
    lines.append(f"Fine-tune one with 'napari-spoco train --source {example} ...', or segment "
                 f"with '--checkpoint {example}'; details in docs/models.md.")
    return "\n".join(lines)


def run(args) -> int:
    """Run ``napari-spoco models``."""
    rows = model_rows()
    print(json.dumps(rows, indent=2) if args.json else format_listing(rows))
    return 0
