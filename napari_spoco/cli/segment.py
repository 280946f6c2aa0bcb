"""``napari-spoco segment``: instance labels from an image (via a checkpoint) or its embeddings."""

from __future__ import annotations

import argparse

import numpy as np

from .predict import add_tiling_arguments, predict_to, progress_bar, read_image

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
    parser.add_argument("--checkpoint", help="napari-spoco checkpoint (.pt)")
    parser.add_argument("--image", help="image (.tif, .npy or .zarr)")
    parser.add_argument("--embeddings", metavar="EMB",
                        help="precomputed f embeddings (E, [Z,] Y, X) to cluster instead of "
                             "predicting them")
    parser.add_argument("--embeddings-g", metavar="EMB_G",
                        help="consistency only: precomputed g embeddings of an augmented view")
    parser.add_argument("--out", required=True, help="labels file (.tif, .npy or .zarr)")
    parser.add_argument("--method", choices=("mws", "hdbscan", "meanshift", "consistency"),
                        default="mws", help="clustering method (default mws: mutex watershed)")
    parser.add_argument("--min-size", type=int, default=0,
                        help="drop segments smaller than this many pixels (default 0)")
    parser.add_argument("--mask", help="foreground mask file (nonzero = foreground): only "
                                       "these pixels are clustered")
    parser.add_argument("--delta-v", type=float, default=None,
                        help="pull margin (default: the checkpoint's, else 0.5)")
    parser.add_argument("--delta-d", type=float, default=None,
                        help="push margin (default: the checkpoint's, else 2.0)")
    parser.add_argument("--merge", choices=("none", "all", "adjacent"), default="none",
                        help="merge clusters whose mean embeddings are closer than delta_d")
    parser.add_argument("--fill", action="store_true",
                        help="give unassigned pixels inside the mask a neighbouring segment")
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
    params["seed"] = args.seed  # every method takes one
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


def _margins(args, loaded) -> tuple[float, float]:
    loss = (loaded.config.get("loss") or {}) if loaded is not None else {}
    delta_v = args.delta_v if args.delta_v is not None else float(loss.get("delta_v", 0.5))
    delta_d = args.delta_d if args.delta_d is not None else float(loss.get("delta_d", 2.0))
    return delta_v, delta_d


def _predict_g(args, loaded, image) -> np.ndarray:
    """g's embeddings of a seeded photometric augmentation of the image."""
    from napari_spoco.core.prediction import predict_augmented_view

    from .predict import resolve_channel_axis

    channel_axis = resolve_channel_axis(args, len(image.shape), loaded)
    with progress_bar("predict g", args.no_progress) as progress:
        return predict_augmented_view(
            loaded, image, channel_axis=channel_axis, seed=args.seed,
            anisotropic=bool(loaded.config.get("anisotropic")), tile_shape=args.tile_shape,
            overlap=args.overlap, batch_size=args.batch_size, device=args.device,
            progress=progress,
        )


def run(args) -> int:
    """Run ``napari-spoco segment``."""
    from napari_spoco.core.checkpoint import load_model
    from napari_spoco.core.clustering import segment
    from napari_spoco.core.io import read_array, write_array

    _check_sources(args)
    params = method_params(args)
    loaded = load_model(args.checkpoint, args.device) if args.checkpoint else None
    image = read_image(args.image) if args.image else None
    if args.embeddings is not None:
        embeddings = read_array(args.embeddings)
    else:
        embeddings = predict_to(args, loaded, image, None)
    if args.method == "consistency":
        if args.embeddings_g is not None:
            params["embeddings_g"] = read_array(args.embeddings_g)
        else:
            params["embeddings_g"] = _predict_g(args, loaded, image)
    if (args.method == "mws" and "anisotropic" not in params and loaded is not None
            and loaded.config.get("anisotropic") and len(embeddings.shape) == 4):
        params["anisotropic"] = True  # thin-slice stack: the training run said so
    mask = None if args.mask is None else read_array(args.mask) != 0
    delta_v, delta_d = _margins(args, loaded)
    merge = {"none": False, "all": True, "adjacent": "adjacent"}[args.merge]
    labels = segment(
        np.asarray(embeddings), args.method, delta_v=delta_v, delta_d=delta_d, mask=mask,
        min_size=args.min_size, merge=merge, fill=args.fill, **params,
    )
    write_array(args.out, labels.astype(np.uint32, copy=False))
    print(f"wrote {int(labels.max())} segments {labels.shape} to {args.out}")
    return 0
