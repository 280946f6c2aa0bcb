"""``--blockwise`` for ``predict`` and ``segment``: volumes larger than memory, on dask.

The front end of ``core.blockwise``: it checks the options, opens a dask scheduler and writes
the outputs as zarr (or OME-Zarr labels) block by block, into a temporary store that is renamed
into place at the end, like every other output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .predict import shape_argument


def add_blockwise_arguments(parser) -> None:
    """The ``blockwise`` option group."""
    group = parser.add_argument_group(
        "blockwise (volumes larger than memory; needs the 'dask' extra for a cluster)")
    group.add_argument("--blockwise", action="store_true",
                       help="process the volume block by block on dask: memory stays bounded "
                            "by one block per worker; the output must be a .zarr")
    group.add_argument("--block-shape", type=shape_argument, default=None, metavar="SHAPE",
                       help="block shape without its halo (default 1024² / 32,160,160)")
    group.add_argument("--halo", type=shape_argument, default=None, metavar="SHAPE",
                       help="context read around each block (default: from the network's "
                            "receptive field)")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="dask scheduler address (tcp://host:8786), 'local' (default: a "
                            "LocalCluster of --workers processes) or 'synchronous' (all blocks "
                            "in this process)")
    group.add_argument("--workers", type=int, default=2,
                       help="worker processes of the local cluster (default 2)")


def check_blockwise_options(args, outputs) -> None:
    """Refuse option combinations blockwise processing cannot honour, before any work."""
    from napari_spoco.core.errors import SpocoInputError
    from napari_spoco.core.ome_zarr import labels_target

    if not args.blockwise:
        given = [flag for flag, value in (("--block-shape", args.block_shape),
                                          ("--halo", args.halo),
                                          ("--scheduler", args.scheduler)) if value is not None]
        if given:
            raise SpocoInputError(f"{', '.join(given)} only apply with --blockwise; add it or "
                                  "remove them.")
        return
    if args.workers < 1:
        raise SpocoInputError(f"--workers must be at least 1, got {args.workers}.")
    if args.tile_shape is not None or args.overlap is not None:
        raise SpocoInputError("--blockwise predicts each block in one pass: give --block-shape "
                              "and --halo instead of --tile-shape/--overlap.")
    for option, path in outputs:
        if path is None:
            continue
        if Path(path).suffix.lower() != ".zarr" and labels_target(path) is None:
            raise SpocoInputError(
                f"With --blockwise, {option} is written block by block and must be a .zarr "
                f"store (or IMAGE.ome.zarr/labels/NAME for labels), not {path!r}.")


def _progress(no_progress: bool):
    if no_progress:
        return None
    last = {}

    def report(stage, done, total):
        if last.get(stage) != done:
            last[stage] = done
            print(f"{stage}: block {done}/{total}", file=sys.stderr, flush=True)

    return report


def _image_source(args, image):
    """A path workers open themselves (no file handle is pickled), or the array itself."""
    return str(Path(args.image).resolve()) if args.scheduler != "synchronous" else image


def run_blockwise(args, loaded, image, channel_axis, settings, labels_out=None,
                  embeddings_out=None, foreground_out=None) -> dict:
    """Run ``core.blockwise.segment_blockwise`` with the CLI's options; returns its result.

    ``channel_axis`` is the caller's ``resolve_channel_axis`` of the image.

    Each output is written into a temporary store next to it and renamed into place only when
    every block has succeeded; OME-Zarr labels go through a plain temporary zarr array first
    and are then copied chunk by chunk into the image's ``labels`` group.
    """
    import contextlib
    import tempfile

    import zarr

    from napari_spoco.core.inference.blockwise import dask_runner, segment_blockwise
    from napari_spoco.core.io import atomic_store
    from napari_spoco.core.ome_zarr import labels_target, write_ome_labels

    ome_labels = labels_out if labels_out is not None and labels_target(labels_out) else None
    with contextlib.ExitStack() as stack:
        tmp = {name: None if path is None else stack.enter_context(atomic_store(path))
               for name, path in (("labels", None if ome_labels else labels_out),
                                  ("embeddings", embeddings_out),
                                  ("foreground", foreground_out))}
        if ome_labels is not None:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(
                dir=Path(ome_labels).resolve().parent.parent.parent))
            tmp["labels"] = Path(scratch) / "labels.zarr"
        with dask_runner(args.scheduler, args.workers) as runner:
            result = segment_blockwise(
                loaded.model, _image_source(args, image), loaded.normalization,
                settings=settings, channel_axis=channel_axis, block_shape=args.block_shape,
                halo=args.halo, labels_out=tmp["labels"], embeddings_out=tmp["embeddings"],
                foreground_out=tmp["foreground"], runner=runner, device=args.device,
                torch_threads=1 if runner.client is not None else None,
                progress=_progress(args.no_progress))
        if ome_labels is not None:
            write_ome_labels(ome_labels, zarr.open_array(str(tmp["labels"]), mode="r"))
    return result
