"""``napari-spoco predict``: embeddings of an image from a checkpoint, optionally as PCA RGB."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

HELP = "predict pixel embeddings (E, [Z,] Y, X) of an image with a trained checkpoint"
CHECKPOINT_HELP = ("napari-spoco checkpoint file (.pt), or the name of a shipped model, e.g. "
                   "ovules_2d ('napari-spoco models' lists them; a file of that name wins)")


def shape_argument(text: str) -> tuple[int, ...]:
    """Parse ``512`` or ``32,128,128`` (also ``32x128x128``) into a tuple of ints."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape; give non-negative integers like 512 or 32,128,128"
        )
    return values[0] if len(values) == 1 else values


def add_tiling_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``predict`` and ``segment``."""
    group = parser.add_argument_group("prediction")
    group.add_argument("--channel-axis", type=int, default=None,
                       help="axis of the image holding channels (default: none for images with "
                            "the model's dimensionality, else the training run's channel axis)")
    group.add_argument("--tile-shape", type=shape_argument, default=None, metavar="SHAPE",
                       help="tile shape, e.g. 512 or 32,128,128 (default: the whole image up "
                            "to 2^21 voxels, exact tiles of about that size beyond)")
    group.add_argument("--overlap", type=shape_argument, default=None, metavar="SHAPE",
                       help="overlap of neighbouring tiles (default: twice the network's "
                            "context plus a ramp, 120 px for the 2D U-Net)")
    group.add_argument("--batch-size", type=int, default=None,
                       help="tiles per forward pass (default 1 on CPU, more on GPU)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group.add_argument("--overwrite", action="store_true",
                       help="replace output files that already exist (never an input file)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``predict`` subcommand."""
    parser = subparsers.add_parser(
        "predict", help=HELP, description=HELP + ". A .zarr output is written tile by tile, "
        "so memory stays bounded by the tile even for images larger than memory."
    )
    parser.add_argument("--checkpoint", required=True, metavar="CKPT|NAME",
                        help=CHECKPOINT_HELP)
    parser.add_argument("--image", required=True, help="image (.tif, .npy or .zarr)")
    parser.add_argument("--out", required=True, help="embeddings file (.npy, .tif or .zarr)")
    parser.add_argument("--momentum", action="store_true",
                        help="use the momentum network g instead of f")
    parser.add_argument("--pca", default=None, metavar="OUT_RGB",
                        help="also write a 3-component PCA RGB view ([Z,] Y, X, 3): float32 in "
                             "[0, 1] for .npy/.zarr, uint8 for .tif")
    parser.add_argument("--foreground", default=None, metavar="OUT_FG",
                        help="also write the foreground probability ([Z,] Y, X) float32, for "
                             "models with a foreground head")
    add_tiling_arguments(parser)
    from .blockwise import add_blockwise_arguments

    add_blockwise_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def resolve_channel_axis(args, image_shape: tuple[int, ...], loaded) -> int | None:
    """The image's channel axis: an OME-Zarr ``--image``'s ``c`` axis, else ``--channel-axis``,
    else none or the training run's, by dimensionality.

    For an OME-Zarr image the metadata decides: a ``--channel-axis`` that names another axis is
    refused (``SpocoInputError`` naming both), and the training run's axis is never guessed.
    """
    from napari_spoco.core.errors import SpocoInputError
    from napari_spoco.core.ome_zarr import channel_axis_from_metadata, is_ome_group
    from napari_spoco.core.validation import check_channel_axis

    image_ndim = len(image_shape)
    ndim = int(loaded.architecture.get("ndim", image_ndim))
    path = getattr(args, "image", None)
    if isinstance(path, (str, Path)) and Path(path).exists() and is_ome_group(path):
        axis = channel_axis_from_metadata(path, args.channel_axis)
        spatial = image_ndim - (axis is not None)
        if "ndim" in loaded.architecture and spatial != ndim:
            raise SpocoInputError(
                f"The OME-Zarr image {str(path)!r} has {spatial} spatial axes "
                f"({'with' if axis is not None else 'without'} a channel axis, by its "
                f"metadata) but the model is {ndim}D; give an image the model was made for."
            )
        return axis
    if args.channel_axis is not None:
        check_channel_axis(tuple(image_shape), args.channel_axis)
        return args.channel_axis
    if image_ndim == ndim:
        return None
    trained_axis = loaded.config.get("channel_axis")
    if image_ndim == ndim + 1 and trained_axis is not None:
        return int(trained_axis)
    raise SpocoInputError(
        f"The image has {image_ndim} axes but the model is {ndim}D; if one axis holds "
        "channels, give it with --channel-axis."
    )


def resolve_checkpoint_option(args) -> None:
    """Replace a shipped model's name in ``--checkpoint`` by its file, before anything runs.

    ``SpocoInputError`` (exit status 2) names the shipped models when ``--checkpoint`` is
    neither an existing file nor one of their names.
    """
    from napari_spoco.models import resolve_checkpoint

    if getattr(args, "checkpoint", None) is not None:
        args.checkpoint = str(resolve_checkpoint(args.checkpoint))


def check_outputs(outputs, inputs, overwrite: bool) -> None:
    """``check_output`` for every ``(option, path)`` output before any work starts.

    Each output is also checked against the outputs before it, so ``--out e.npy --pca e.npy``
    cannot silently replace one result with another.
    """
    from napari_spoco.core.io import check_output

    seen = [(option, path) for option, path in inputs if path is not None]
    for option, path in outputs:
        if path is None:
            continue
        check_output(path, seen, overwrite=overwrite, option=option)
        seen.append((option, path))


@contextlib.contextmanager
def progress_bar(description: str, disable: bool = False):
    """A tqdm bar on stderr driven by ``progress(done, total)`` callbacks."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="tile", disable=True if disable else None)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def read_image(path):
    """Read an image; zarr (OME-Zarr: level 0) and tif stay lazy, so that prediction reads
    them tile by tile.

    An OME-Zarr image keeps a channel axis of more than one channel where its metadata puts
    it (``c``, first after a dropped singleton ``t``); ``resolve_channel_axis`` reads the
    metadata again from ``args.image`` to use it.
    """
    from napari_spoco.core.io import read_array

    return read_array(path, lazy=Path(path).suffix.lower() in (".zarr", ".tif", ".tiff"))


def create_zarr_output(path, shape):
    """An empty float32 zarr array ``(E, *spatial)`` chunked by all channels of a block.

    Uncompressed: every tile reads and rewrites the chunks it overlaps, and compressing them
    each time made prediction about 3x slower, while float embeddings barely compress.
    """
    import zarr

    block = (256, 256) if len(shape) == 3 else (16, 128, 128)
    chunks = (shape[0], *(min(s, b) for s, b in zip(shape[1:], block)))
    return zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="f4",
                             fill_value=0.0, compressors=None, overwrite=True)


def write_rgb(path, rgb: np.ndarray) -> None:
    """Write the PCA view: uint8 for tif (viewable anywhere), float32 otherwise."""
    from napari_spoco.core.io import write_array

    if Path(path).suffix.lower() in (".tif", ".tiff"):
        rgb = np.round(rgb * 255).astype(np.uint8)
    write_array(path, rgb)


def predict_to(args, loaded, image, out_path, momentum: bool = False):
    """Predict ``image`` into ``out_path`` (or memory if None).

    Returns
    -------
    embeddings : array
        ``(E, *spatial)`` (the zarr array when ``out_path`` is a ``.zarr``).
    foreground : ndarray or None
        Foreground probability; None for a network without the foreground head.
    """
    from napari_spoco.core.inference.prediction import predict_with_foreground, select_network

    model = select_network(loaded, momentum)
    channel_axis = resolve_channel_axis(args, tuple(image.shape), loaded)

    def predict(out=None):
        with progress_bar("predict", args.no_progress) as progress:
            return predict_with_foreground(
                model, image, loaded.normalization, channel_axis=channel_axis,
                tile_shape=args.tile_shape, overlap=args.overlap, batch_size=args.batch_size,
                device=args.device, out=out, progress=progress,
            )

    if out_path is None or Path(out_path).suffix.lower() != ".zarr":
        embeddings, foreground = predict()
        if out_path is not None:
            from napari_spoco.core.io import write_array

            write_array(out_path, embeddings)
        return embeddings, foreground
    import zarr

    from napari_spoco.core.io import atomic_store

    axes = range(len(image.shape))
    if channel_axis is not None:
        axes = [a for a in axes if a != channel_axis % len(image.shape)]
    spatial = tuple(image.shape[a] for a in axes)
    # Streamed into a temporary store renamed into place at the end: a failed or interrupted
    # prediction never leaves a half-written store under the output's name.
    with atomic_store(out_path) as tmp:
        _, foreground = predict(create_zarr_output(tmp, (model.out_channels, *spatial)))
    return zarr.open_array(str(out_path), mode="r"), foreground


def run(args) -> int:
    """Run ``napari-spoco predict``."""
    from .blockwise import check_blockwise_options, run_blockwise

    resolve_checkpoint_option(args)
    check_blockwise_options(args, [("--out", args.out), ("--foreground", args.foreground)])
    if args.blockwise and (args.pca or args.momentum):
        from napari_spoco.core.errors import SpocoInputError

        raise SpocoInputError("--blockwise writes the embeddings of f (and --foreground) only; "
                              "write the PCA view from the .zarr afterwards, without --pca "
                              "and --momentum.")
    check_outputs([("--out", args.out), ("--pca", args.pca), ("--foreground", args.foreground)],
                  [("--checkpoint", args.checkpoint), ("--image", args.image)], args.overwrite)
    # torch comes with these: imported only once the outputs are known to be writable
    from napari_spoco.core.inference.lean_forward import limit_heap_retention
    from napari_spoco.core.inference.pca import pca_rgb
    from napari_spoco.core.model.checkpoint import load_model

    limit_heap_retention()  # this process only predicts: return freed slabs to the system
    loaded = load_model(args.checkpoint, args.device)
    image = read_image(args.image)
    if args.blockwise:
        has_head = bool(getattr(loaded.model, "foreground", False))
        if args.foreground and not has_head:
            print("the model has no foreground head: no foreground written", file=sys.stderr)
        channel_axis = resolve_channel_axis(args, tuple(image.shape), loaded)
        result = run_blockwise(args, loaded, image, channel_axis, None, embeddings_out=args.out,
                               foreground_out=args.foreground if has_head else None)
        print(f"wrote embeddings of {result['grid'].shape} to {args.out} "
              f"({len(result['grid'].indices())} blocks of {result['grid'].block})")
        return 0
    embeddings, foreground = predict_to(args, loaded, image, args.out, args.momentum)
    print(f"wrote embeddings {tuple(embeddings.shape)} to {args.out}")
    if args.foreground:
        from napari_spoco.core.io import write_array

        if foreground is None:
            print("the model has no foreground head: no foreground written", file=sys.stderr)
        else:
            write_array(args.foreground, foreground)
            print(f"wrote foreground probability to {args.foreground}")
    if args.pca:
        write_rgb(args.pca, pca_rgb(embeddings))
        print(f"wrote PCA view to {args.pca}")
    return 0
