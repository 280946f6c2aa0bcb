"""``napari-spoco segment``: instance labels from an image (via a checkpoint) or its embeddings."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .blockwise import add_blockwise_arguments, check_blockwise_options, run_blockwise
from .predict import (
    CHECKPOINT_HELP,
    add_tiling_arguments,
    check_outputs,
    predict_to,
    progress_bar,
    read_image,
    resolve_channel_axis,
    resolve_checkpoint_option,
)

HELP = "segment an image into instances: predict embeddings, then cluster them"

#: Method options: (flag destination, keyword of clustering.segment, methods that take it).
METHOD_OPTIONS = (
    ("strides", "strides", ("mws",)),
    ("randomize_strides", "randomize_strides", ("mws",)),
    ("anisotropic", "anisotropic", ("mws",)),
    ("min_cluster_size", "min_cluster_size", ("hdbscan",)),
    ("min_samples", "min_samples", ("hdbscan",)),
    ("noise", "noise", ("hdbscan",)),
    ("bandwidth", "bandwidth", ("meanshift",)),
    ("iou_threshold", "iou_threshold", ("consistency",)),
    ("n_anchors", "n_anchors", ("consistency",)),
    ("max_samples", "max_samples", ("hdbscan", "meanshift", "consistency")),
)


def add_parser(subparsers):
    """Add the ``segment`` subcommand."""
    parser = subparsers.add_parser(
        "segment", help=HELP,
        description=HELP + ". Give --checkpoint and --image, or precomputed --embeddings "
        "(from 'napari-spoco predict'). Labels are written as uint32, 0 = no object.",
    )
    parser.add_argument("--checkpoint", metavar="CKPT|NAME", help=CHECKPOINT_HELP)
    parser.add_argument("--image", help="image (.tif, .npy or .zarr)")
    parser.add_argument("--embeddings", metavar="EMB",
                        help="precomputed f embeddings (E, [Z,] Y, X) to cluster instead of "
                             "predicting them")
    parser.add_argument("--embeddings-g", metavar="EMB_G",
                        help="consistency only: precomputed g embeddings of an augmented view")
    parser.add_argument("--out", required=True,
                        help="labels file (.tif, .npy or .zarr); IMAGE.ome.zarr/labels/NAME "
                             "adds them as OME-Zarr labels of an OME-Zarr --image")
    parser.add_argument("--voxel-size", type=float, nargs="+", default=None, metavar="S",
                        help="voxel size [Z] Y X of the image: decides the mws anisotropy "
                             "(default: from the image's metadata, else the checkpoint's)")
    parser.add_argument("--method", choices=("mws", "hdbscan", "meanshift", "consistency"),
                        default="mws", help="clustering method (default mws: mutex watershed)")
    parser.add_argument("--min-size", type=int, default=None,
                        help="segments smaller than this many pixels join a neighbour "
                             "(default: a fifth of the median painted object size, from the "
                             "checkpoint)")
    parser.add_argument("--mask", help="foreground mask file (nonzero = foreground): only "
                                       "these pixels are clustered")
    parser.add_argument("--delta-v", type=float, default=None,
                        help="pull margin (default: the checkpoint's, else 0.5)")
    parser.add_argument("--delta-d", type=float, default=None,
                        help="push margin (default: the checkpoint's, else 2.0)")
    parser.add_argument("--merge", choices=("none", "all", "adjacent"), default=None,
                        help="merge clusters whose mean embeddings are closer than delta_d")
    parser.add_argument("--fill", action=argparse.BooleanOptionalAction, default=None,
                        help="give pixels of removed small segments a neighbouring segment "
                             "(default: on)")
    parser.add_argument("--foreground", action=argparse.BooleanOptionalAction, default=None,
                        help="cluster only the predicted foreground (default: on when the model "
                             "has a foreground head trained with painted background)")
    parser.add_argument("--foreground-threshold", type=float, default=None,
                        help="foreground probability threshold (default 0.5)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds stride draws, subsampling and the augmented view")

    methods = parser.add_argument_group("method options (only for the methods named)")
    methods.add_argument("--strides", type=_ints, default=None,
                         help="mws: keep one repulsive edge per prod(strides), e.g. 4,4")
    methods.add_argument("--randomize-strides", action="store_true", default=None,
                         help="mws: draw the kept repulsive edges at random")
    methods.add_argument("--anisotropic", action="store_true", default=None,
                         help="mws, 3D: short repulsive z offsets for thin-slice stacks "
                              "(default: on if the checkpoint was trained as anisotropic)")
    methods.add_argument("--min-cluster-size", type=int, default=None,
                         help="hdbscan: smallest cluster (default --min-size if given, else "
                              "the clustering default)")
    methods.add_argument("--min-samples", type=int, default=None, help="hdbscan: min_samples")
    methods.add_argument("--noise", choices=("zero", "fill"), default=None,
                         help="hdbscan: noise pixels become 0 or join a neighbouring segment")
    methods.add_argument("--bandwidth", type=float, default=None,
                         help="meanshift: kernel bandwidth (default delta_v)")
    methods.add_argument("--iou-threshold", type=float, default=None,
                         help="consistency: drop clusters whose median IoU with g is below this")
    methods.add_argument("--n-anchors", type=int, default=None,
                         help="consistency: anchors drawn per cluster (default 100)")
    methods.add_argument("--max-samples", type=int, default=None,
                         help="hdbscan/meanshift/consistency: pixels clustered before the rest "
                              "are assigned to the nearest cluster")
    add_tiling_arguments(parser)
    add_blockwise_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _ints(text: str):
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers like 4,4")
    return values[0] if len(values) == 1 else values


def method_params(args) -> dict:
    """Keyword arguments of ``clustering.segment`` for the chosen method's given options."""
    from napari_spoco.core.errors import SpocoInputError

    params = {}
    for dest, keyword, methods in METHOD_OPTIONS:
        value = getattr(args, dest)
        if value is None:
            continue
        if args.method not in methods:
            flag = "--" + dest.replace("_", "-")
            raise SpocoInputError(
                f"{flag} applies to {', '.join(methods)}, not to --method {args.method}; "
                "remove it or choose that method."
            )
        params[keyword] = value
    if args.seed != 0:  # every method takes one; 0 is theirs too, so the default stays implicit
        params["seed"] = args.seed
    return params


def _check_sources(args) -> None:
    from napari_spoco.core.errors import SpocoInputError

    predicting = args.embeddings is None
    needs_g = args.method == "consistency" and args.embeddings_g is None
    if (predicting or needs_g) and (args.checkpoint is None or args.image is None):
        what = "predict the embeddings" if predicting else "predict g's embeddings"
        raise SpocoInputError(
            f"To {what}, give --checkpoint and --image"
            + ("" if predicting else ", or precomputed --embeddings-g") + "."
        )
    if args.embeddings_g is not None and args.method != "consistency":
        raise SpocoInputError("--embeddings-g is only used by --method consistency.")


def settings_from_args(args, loaded, ndim: int):
    """``segmentation_settings`` of the checkpoint, with the options the user gave."""
    from napari_spoco.core.inference.segmentation import segmentation_settings, settings_for

    merge = {None: None, "none": False, "all": True, "adjacent": "adjacent"}[args.merge]
    chosen = dict(delta_v=args.delta_v, delta_d=args.delta_d, min_size=args.min_size,
                  fill=args.fill, merge=merge, use_foreground=args.foreground,
                  foreground_threshold=args.foreground_threshold, **method_params(args))
    spacing = image_voxel_size(args, ndim)
    if loaded is None:
        return segmentation_settings(method=args.method, ndim=ndim, spacing=spacing, **chosen)
    return settings_for(loaded, method=args.method, ndim=ndim, spacing=spacing, **chosen)


def image_voxel_size(args, ndim: int):
    """``--voxel-size`` if given, else what the ``--image`` file records (or None)."""
    from napari_spoco.core.ome_zarr import check_voxel_size, read_voxel_size

    if getattr(args, "voxel_size", None) is not None:
        return check_voxel_size(args.voxel_size, ndim)
    return None if args.image is None else read_voxel_size(args.image)


def _predict_g(args, loaded, image) -> np.ndarray:
    """g's embeddings of a seeded photometric augmentation of the image."""
    from napari_spoco.core.inference.prediction import predict_augmented_view

    from .predict import resolve_channel_axis

    channel_axis = resolve_channel_axis(args, tuple(image.shape), loaded)
    with progress_bar("predict g", args.no_progress) as progress:
        return predict_augmented_view(
            loaded, image, channel_axis=channel_axis, seed=args.seed,
            anisotropic=bool(loaded.config.get("anisotropic")), tile_shape=args.tile_shape,
            overlap=args.overlap, batch_size=args.batch_size, device=args.device,
            progress=progress,
        )


def _predict_affinities(args, loaded, image) -> np.ndarray:
    """The affinity head's explicit affinities (CRAC checkpoints)."""
    from napari_spoco.core.errors import SpocoInputError
    from napari_spoco.core.inference.crac_segmentation import predict_affinities

    from .predict import resolve_channel_axis

    if loaded is None or image is None:
        raise SpocoInputError("A CRAC model segments its predicted affinities: give "
                              "--checkpoint and --image (not only --embeddings).")
    with progress_bar("predict affinities", args.no_progress) as progress:
        return predict_affinities(
            loaded.model, image, loaded.normalization,
            channel_axis=resolve_channel_axis(args, tuple(image.shape), loaded),
            tile_shape=args.tile_shape, overlap=args.overlap, batch_size=args.batch_size,
            device=args.device, progress=progress)


def check_options(args) -> None:
    """Report option misuse, impossible values and unwritable outputs before any file is read."""
    from napari_spoco.core.validation import check_clustering_params

    _check_sources(args)
    resolve_checkpoint_option(args)
    check_clustering_params(args.method, delta_v=args.delta_v, delta_d=args.delta_d,
                            foreground_threshold=args.foreground_threshold,
                            **method_params(args))
    check_blockwise_options(args, [("--out", args.out)])
    if args.blockwise:
        _check_blockwise_sources(args)
    check_outputs([("--out", args.out)], [
        ("--checkpoint", args.checkpoint), ("--image", args.image),
        ("--embeddings", args.embeddings), ("--embeddings-g", args.embeddings_g),
        ("--mask", args.mask)], args.overwrite)


def _check_blockwise_sources(args) -> None:
    from napari_spoco.core.errors import SpocoInputError

    if args.embeddings is not None or args.embeddings_g is not None or args.mask is not None:
        raise SpocoInputError("--blockwise predicts and segments each block from --checkpoint "
                              "and --image; it takes no --embeddings, --embeddings-g or --mask.")
    if args.method == "consistency":
        raise SpocoInputError("--method consistency needs g's embeddings of the whole image and "
                              "does not run --blockwise; use mws (the default).")


def run(args) -> int:
    """Run ``napari-spoco segment``."""
    check_options(args)
    # torch comes with these: imported only once the options are known to be usable
    from napari_spoco.core.inference.segmentation import segment_output
    from napari_spoco.core.io import read_array, write_array
    from napari_spoco.core.model.checkpoint import load_model

    loaded = load_model(args.checkpoint, args.device) if args.checkpoint else None
    image = read_image(args.image) if args.image else None
    if args.blockwise:
        from napari_spoco.core.inference.prediction import model_ndim

        channel_axis = resolve_channel_axis(args, tuple(image.shape), loaded)
        ndim = model_ndim(loaded.model, len(image.shape), channel_axis)
        settings = settings_from_args(args, loaded, ndim)
        for note in settings.notes:
            print(f"note: {note}", file=sys.stderr)
        result = run_blockwise(args, loaded, image, channel_axis, settings,
                               labels_out=args.out)
        print(f"wrote {result['segments']} segments {result['grid'].shape} to {args.out} "
              f"({len(result['grid'].indices())} blocks of {result['grid'].block})")
        return 0
    foreground = None
    if args.embeddings is not None:
        embeddings = read_array(args.embeddings)
    else:
        embeddings, foreground = predict_to(args, loaded, image, None)
    settings = settings_from_args(args, loaded, len(embeddings.shape) - 1)
    extra = {}
    if args.method == "consistency":
        if args.embeddings_g is not None:
            extra["embeddings_g"] = read_array(args.embeddings_g)
        else:
            extra["embeddings_g"] = _predict_g(args, loaded, image)
    for note in settings.notes:
        print(f"note: {note}", file=sys.stderr)
    if settings.affinity_source == "explicit":  # a CRAC checkpoint: its head's affinities
        extra["affinities"] = _predict_affinities(args, loaded, image)
    mask = None if args.mask is None else read_array(args.mask) != 0
    labels = segment_output(embeddings, foreground, settings, mask=mask, **extra)
    write_array(args.out, labels.astype(np.uint32, copy=False))
    print(f"wrote {int(labels.max())} segments {labels.shape} to {args.out}")
    return 0
