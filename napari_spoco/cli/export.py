"""``napari-spoco export``: write a checkpoint as a bioimage.io model package (``.zip``)."""

from __future__ import annotations

import argparse

HELP = "export a trained model as a bioimage.io model package (.zip)"

EPILOG = """\
Example:
  napari-spoco export --checkpoint model.pt --out model.zip --name "My nuclei SPOCO"
The package holds pytorch_state_dict and TorchScript weights, the normalisation, test tensors,
a cover and a README; it passes bioimageio.spec validation and `bioimageio test`. napari-spoco
loads it back wherever a checkpoint is asked for (--checkpoint model.zip, --source model.zip).
Needs the optional extra: pip install "napari-spoco[bioimageio]".
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand."""
    parser = subparsers.add_parser(
        "export", help=HELP, description=HELP + ".", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint to export (.pt, or a shipped model's name)")
    parser.add_argument("--out", required=True, help="package to write (.zip)")
    parser.add_argument("--name", default=None,
                        help="model name, 5-128 characters (default: napari-spoco <stem>)")
    parser.add_argument("--author", action="append", default=None,
                        help="author name; repeat for several (default: napari-spoco user)")
    parser.add_argument("--license", default="CC-BY-4.0", help="SPDX license id")
    parser.add_argument("--image", default=None,
                        help="optional image (.tif/.npy/.zarr, channels first) to crop the "
                             "test tensors and the cover from; default: a synthetic image")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    """Export ``--checkpoint`` to ``--out``; bad input raises ``SpocoInputError`` (exit 2)."""
    from napari_spoco.core.io import read_array
    from napari_spoco.core.model.bioimageio_export import export_bioimageio
    from napari_spoco.models import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    image = None if args.image is None else read_array(args.image)
    out = export_bioimageio(checkpoint, args.out, name=args.name,
                            authors=tuple(args.author or ("napari-spoco user",)),
                            license=args.license, sample_image=image, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
