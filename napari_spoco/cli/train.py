"""``napari-spoco train``: train or fine-tune an embedding network on image/label files."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "train a SPOCO embedding network from sparse labels (or fine-tune / resume one)"
#: Seconds between two progress lines when stderr is not a terminal (tqdm is silent there).
PROGRESS_SECONDS = 10.0

EPILOG = """\
examples:
  napari-spoco train --image a.tif --labels a_labels.tif --out model.pt
  napari-spoco train --image a.tif --labels a.tif --image b.tif --labels b.tif --out model.pt
  napari-spoco train --source nuclei.pt --image new.tif --labels few.tif --out tuned.pt
  napari-spoco train --source ovules_2d --image new.tif --labels few.tif --out tuned.pt
  napari-spoco train --resume model.pt --image a.tif --labels a_labels.tif --iterations 20000

Labels: 0 = unlabeled (sparse mode) or background (--mode dense); every other id is one object.
Options left out that depend on the data (--iterations, --patch-shape, --batch-size, --lr) are
decided from the smallest image, the device and the source model exactly as in napari's Train tab.
--source takes a checkpoint file or the name of a shipped model ('napari-spoco models' lists
them); a file of that name wins over the shipped model.
Ctrl-C stops after saving the checkpoint; the file is also saved every --autosave-seconds.
--out is never one of the inputs, and an existing --out is replaced only with --overwrite
(resuming writes the checkpoint it resumed from without it).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train", help=HELP, description=HELP + ".", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--image", action="append", required=True, metavar="PATH",
                      help="training image (.tif, .npy, .zarr); repeat for several images")
    data.add_argument("--labels", action="append", required=True, metavar="PATH",
                      help="labels of the preceding --image, same spatial shape")
    data.add_argument("--channel-axis", type=int, default=None,
                      help="axis of the images holding channels (default: none)")
    data.add_argument("--mode", choices=("sparse", "dense"), default=None,
                      help="sparse: 0 = unlabeled (default); dense: 0 = background object")
    data.add_argument("--background-id", type=int, default=None,
                      help="label id painted as background (one more object)")
    data.add_argument("--ignore-id", type=int, default=None,
                      help="label id of pixels excluded from the loss")
    data.add_argument("--voxel-size", type=float, nargs="+", default=None, metavar="S",
                      help="voxel size [Z] Y X of every image, e.g. 2 0.5 0.5: decides 3D "
                           "anisotropy (default: read from OME-Zarr or ImageJ TIFF metadata, "
                           "else guessed from the shape)")
    data.add_argument("--fraction", type=float, default=None, metavar="P",
                      help="SPOCO@p benchmark: keep round(P·n) random objects of each label "
                           "image (seeded by --seed) and set the others to 0")

    start = parser.add_argument_group("model").add_mutually_exclusive_group()
    start.add_argument("--source", default=None, metavar="CKPT|NAME",
                       help="fine-tune this checkpoint file or shipped model (e.g. ovules_2d; "
                            "see 'napari-spoco models'); default lr: the lr it was trained "
                            "with / 10")
    start.add_argument("--resume", default=None, metavar="CKPT",
                       help="continue this training run at its saved iteration (its settings "
                            "are used; only --iterations and --device may change)")
    model = parser.add_argument_group("network (from scratch)")
    model.add_argument("--features", type=int, nargs="+", default=None, metavar="N",
                       help="channels per U-Net level (default 16 32 64 128)")
    model.add_argument("--norm", choices=("group", "batch", "none"), default=None,
                       help="normalisation layers (default group)")
    model.add_argument("--anisotropic-levels", type=int, default=None, metavar="N",
                       help="3D: first N poolings keep z (for thin z slices)")

    run_group = parser.add_argument_group("training")
    run_group.add_argument("--out", default=None, metavar="CKPT",
                           help="checkpoint to write (required unless --resume, which defaults "
                                "to overwriting the resumed file)")
    run_group.add_argument("--iterations", type=int, default=None,
                           help="optimizer steps (default: a few minutes on a CPU: at least 300, "
                                "more for small images; on a GPU 5000 in 2D, 2000 in 3D)")
    run_group.add_argument("--patch-shape", type=int, nargs="+", default=None, metavar="N",
                           help="training patch, e.g. 256 256 or 32 64 64 (clipped to the images; "
                                "default 128² on a CPU, 256² on a GPU; 3D 16×64², 32×128²)")
    run_group.add_argument("--batch-size", type=int, default=None,
                           help="patches per step (default 4 on a CPU, 8 on a GPU; 3D 1, 2)")
    run_group.add_argument("--lr", type=float, default=None,
                           help="learning rate (default 2e-4; fine-tuning: the source's lr / 10)")
    run_group.add_argument("--device", default=None, help="auto (default), cpu, cuda or mps")
    run_group.add_argument("--method", choices=("spoco", "crac", "both"), default=None,
                           help="training objective: spoco (default), crac (affinity head, "
                                "cross-representation consistency) or both losses summed")
    run_group.add_argument("--input-scale", default=None, metavar="auto|S",
                           help="resample the images by S for the network, or 'auto': to the "
                                "object size the --source model was trained on (default 1)")
    run_group.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    run_group.add_argument("--autosave-seconds", type=float, default=None, metavar="S",
                           help="save the checkpoint at least every S seconds (default 60)")
    run_group.add_argument("--no-progress", action="store_true",
                           help="no progress bar (nor progress lines)")
    run_group.add_argument("--progress-seconds", type=float, default=PROGRESS_SECONDS,
                           metavar="S",
                           help="when stderr is not a terminal (a log file, a batch job), print a "
                                "progress line every S seconds and at the end (default "
                                "%(default)g)")
    run_group.add_argument("--overwrite", action="store_true",
                           help="replace an existing --out checkpoint (resuming may always "
                                "write the checkpoint it resumed from)")
    parser.set_defaults(func=run)
    return parser


def read_pairs(args) -> list:
    """Read the ``--image``/``--labels`` files, applying ``--fraction`` if given."""
    from napari_spoco.core.errors import SpocoInputError
    from napari_spoco.core.io import read_array
    from napari_spoco.core.training.sampling import subsample_objects

    if len(args.image) != len(args.labels):
        raise SpocoInputError(
            f"Got {len(args.image)} --image and {len(args.labels)} --labels; give one --labels "
            "after each --image."
        )
    pairs = []
    for index, (image_path, labels_path) in enumerate(zip(args.image, args.labels)):
        labels = read_array(labels_path)
        if args.fraction is not None:
            # One seed per image: each image keeps its own random choice of objects.
            seed = (args.seed or 0) + index
            keep = () if args.background_id is None else (args.background_id,)
            labels = subsample_objects(labels, args.fraction, seed=seed, keep_ids=keep)
        pairs.append((read_array(image_path), labels))
    return pairs


def input_scale_option(value):
    """``--input-scale``: ``auto`` or a positive number (None when not given)."""
    from napari_spoco.core.errors import SpocoInputError

    if value is None or value == "auto":
        return value
    try:
        scale = float(value)
    except ValueError:
        scale = float("nan")
    if not scale > 0:
        raise SpocoInputError(
            f"--input-scale must be 'auto' or a positive number, got {value!r}.")
    return scale


def build_config(args, pairs=None):
    """A ``TrainingConfig`` from the options given.

    With the training ``pairs``, the options left out that depend on the data, the device and
    the source model (``--lr``, ``--iterations``, ``--patch-shape``, ``--batch-size``, and the
    3D anisotropy) are decided by ``core.run_defaults`` as the Train tab decides them; other
    unset options keep the ``TrainingConfig`` defaults.
    """
    from napari_spoco.core.training import TrainingConfig

    settings = {
        "channel_axis": args.channel_axis,
        "mode": args.mode,
        "background_id": args.background_id,
        "ignore_id": args.ignore_id,
        "features": args.features,
        "anisotropic_levels": args.anisotropic_levels,
        "iterations": args.iterations,
        "patch_shape": args.patch_shape,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "device": args.device,
        "seed": args.seed,
        "autosave_seconds": args.autosave_seconds,
        "method": args.method,
        "input_scale": input_scale_option(getattr(args, "input_scale", None)),
    }
    settings = {key: value for key, value in settings.items() if value is not None}
    if args.norm is not None:
        settings["norm"] = None if args.norm == "none" else args.norm
    shapes = None if pairs is None else spatial_shapes(pairs, args.channel_axis)
    if shapes is not None:
        settings.update(run_settings(args, shapes).as_dict())
    return TrainingConfig(**settings)


def spatial_shapes(pairs, channel_axis) -> list[tuple[int, ...]] | None:
    """Spatial shapes of the training images, or None if they are not all 2D or 3D (the
    trainer then explains what is wrong)."""
    import numpy as np

    from napari_spoco.core.validation import check_channel_axis
    from napari_spoco.widgets._logic import spatial_shape

    shapes = []
    for image, _ in pairs:
        check_channel_axis(np.shape(image), channel_axis)
        shapes.append(spatial_shape(np.shape(image), channel_axis))
    if not shapes or {len(s) for s in shapes} not in ({2}, {3}):
        return None
    return shapes


def source_checkpoint(args) -> Path | None:
    """The checkpoint file of ``--source`` (a path, or a shipped model's name), or None.

    Resolving is idempotent: :func:`run` replaces ``args.source`` by the file once, when it
    checks the options, and later calls get that same file.
    """
    from napari_spoco.models import resolve_checkpoint

    return None if args.source is None else resolve_checkpoint(args.source)


def resolve_source(args) -> None:
    """Replace a shipped model's name in ``--source`` by its file (``SpocoInputError`` naming
    the shipped models if it is neither a file nor a name); keep the name for messages."""
    if args.source is None:
        return
    given = str(args.source)
    args.source = str(source_checkpoint(args))
    args.source_name = given


def run_settings(args, shapes):
    """lr, iterations, patch, batch and anisotropy: the options given, else the defaults of
    ``core.run_defaults`` for these image shapes, the device and the ``--source`` model."""
    from napari_spoco.core.devices import resolve_device
    from napari_spoco.core.model.checkpoint import load_checkpoint
    from napari_spoco.core.run_defaults import resolve_run_settings, source_learning_rate

    source_lr = None
    if args.source is not None and args.lr is None:
        source_lr = source_learning_rate(load_checkpoint(source_checkpoint(args)))
    return resolve_run_settings(
        shapes, resolve_device(args.device or "auto").type, spacings=voxel_sizes(args, shapes),
        fine_tuning=args.source is not None, source_lr=source_lr, lr=args.lr,
        iterations=args.iterations, patch_shape=args.patch_shape, batch_size=args.batch_size,
    )


def voxel_sizes(args, shapes) -> list:
    """Per ``--image``, ``--voxel-size`` if given, else the size its file records (or None)."""
    from napari_spoco.core.ome_zarr import check_voxel_size, read_voxel_size

    if getattr(args, "voxel_size", None) is not None:
        return [check_voxel_size(args.voxel_size, len(shape)) for shape in shapes]
    if len(args.image) != len(shapes):  # arrays not read from the --image files
        return [None] * len(shapes)
    return [read_voxel_size(path) if Path(path).exists() else None for path in args.image]


#: Options a resumed run takes from its checkpoint instead (``--channel-axis`` is compared).
RESUMED_SETTINGS = ("features", "norm", "anisotropic_levels", "patch_shape", "batch_size", "lr",
                    "mode", "ignore_id", "autosave_seconds", "method")


def check_out(args) -> Path:
    """The checked ``--out`` (default: the resumed checkpoint), before any data is read.

    Resuming may write the checkpoint it resumed from without ``--overwrite``: that is how a
    run continues. Any other existing file, and any input, is refused.
    """
    from napari_spoco.core.errors import SpocoInputError
    from napari_spoco.core.io import CHECKPOINT_SUFFIXES, check_output, same_file

    out = args.out or args.resume
    if out is None:
        raise SpocoInputError("Give --out PATH.pt: where to write the trained checkpoint.")
    resumed = args.resume is not None and same_file(out, args.resume)
    inputs = [("--image", p) for p in args.image] + [("--labels", p) for p in args.labels]
    inputs += [("--source", args.source), ("--resume", None if resumed else args.resume)]
    return check_output(out, inputs, overwrite=args.overwrite or resumed,
                        suffixes=CHECKPOINT_SUFFIXES)


def check_resume_options(args) -> None:
    """Refuse settings a resumed run would silently ignore (it continues with its own)."""
    from napari_spoco.core.errors import SpocoInputError
    from napari_spoco.core.model.checkpoint import load_checkpoint

    given = ["--" + name.replace("_", "-") for name in RESUMED_SETTINGS
             if getattr(args, name) is not None]
    if given:
        raise SpocoInputError(
            f"{', '.join(given)} cannot change when resuming: --resume continues with the "
            "settings of its run (only --iterations and --device may change). Remove them, or "
            "start a new run from that checkpoint with --source CKPT to change them."
        )
    if args.channel_axis is None:
        return
    saved = dict(load_checkpoint(args.resume).get("config", {})).get("channel_axis")
    if saved != args.channel_axis:
        raise SpocoInputError(
            f"--channel-axis {args.channel_axis} differs from the channel axis {saved} of the "
            f"run in {args.resume!r}; a resumed run keeps its channel axis. Give images with "
            "the channels where they were (and drop --channel-axis), or fine-tune with "
            "--source instead of --resume."
        )


def make_trainer(args, pairs, out: Path):
    """A new, fine-tuning or resumed ``Trainer`` as the options ask."""
    from napari_spoco.core.training import Trainer

    if args.resume is not None:
        return Trainer.from_checkpoint(args.resume, pairs, iterations=args.iterations,
                                       device=args.device, autosave_path=out)
    return Trainer(pairs, build_config(args, pairs), source=source_checkpoint(args),
                   autosave_path=out)


class ProgressLines:
    """Plain progress lines for a log: tqdm draws nothing when stderr is not a terminal.

    :meth:`update` prints ``step 120/300  loss 0.1234  2.9 steps/s  ETA 1 min 02 s`` when at
    least ``every`` seconds passed since the previous line (the speed is measured over that
    interval); :meth:`close` prints the last step if it was not printed yet.
    """

    def __init__(self, total: int, every: float = PROGRESS_SECONDS, stream=None,
                 clock=time.monotonic, start_iteration: int = 0):
        self.total = int(total)
        self.every = float(every)
        self.stream = stream
        self.clock = clock
        self._last_time = clock()
        self._last_iteration = int(start_iteration)
        self._report = None

    def update(self, report) -> None:
        """Note one step; print a line if one is due."""
        self._report = report
        if self.clock() - self._last_time >= self.every:
            self._print()

    def close(self) -> None:
        """Print the last step unless it was just printed."""
        if self._report is not None and self._report.iteration != self._last_iteration:
            self._print()

    def _print(self) -> None:
        from napari_spoco.widgets._logic import format_duration

        report, now = self._report, self.clock()
        elapsed = now - self._last_time
        rate = (report.iteration - self._last_iteration) / elapsed if elapsed > 0 else 0.0
        left = max(self.total - report.iteration, 0)
        eta = format_duration(left / rate) if rate > 0 else "unknown"
        print(f"step {report.iteration}/{self.total}  loss {report.smoothed_loss:.4f}  "
              f"{rate:.3g} steps/s  ETA {eta}", file=self.stream or sys.stderr, flush=True)
        self._last_time, self._last_iteration = now, report.iteration


def source_text(args) -> str:
    """``--source`` for messages: the file, with the shipped model's name if one was given."""
    name = getattr(args, "source_name", None)
    if name is None or name == args.source:
        return str(args.source)
    return f"{name} ({args.source})"


def progress_lines_wanted(args, stream=None) -> bool:
    """Whether to print progress lines: progress on, and ``stream`` (stderr) not a terminal."""
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return not args.no_progress and not (isatty is not None and isatty())


def run(args) -> int:
    """Train, showing the loss in a progress bar; save at the end and on Ctrl-C.

    Under ``torchrun`` every process trains its share of the batch
    (``core/training/distributed.py``).
    """
    from napari_spoco.core.errors import SpocoInputError
    from napari_spoco.core.training import distributed

    if not args.progress_seconds >= 0:
        raise SpocoInputError(
            f"--progress-seconds must be a number of seconds >= 0, got {args.progress_seconds}."
        )
    # under torchrun: join the process group; then only rank 0 prints and writes
    context = distributed.init_from_environment(args.device)
    try:
        return _train(args, context)
    finally:
        distributed.shutdown()


def torch_threads() -> int:
    """torch's CPU threads here (set by ``apply_torch_threads`` in the CLI's main)."""
    import torch

    return torch.get_num_threads()


def _train(args, context) -> int:
    from tqdm import tqdm

    from napari_spoco.core.training.distributed import device_line

    def say(text):
        if context.is_main:
            print(text, file=sys.stderr, flush=True)

    from napari_spoco.core.ome_zarr import common_channel_axis

    resolve_source(args)  # before check_out: a shipped model is an input too
    out = check_out(args)
    # An OME-Zarr image names its channel axis: it is the run's without --channel-axis, and
    # a --channel-axis naming another axis is refused before anything is read or trained.
    # Resolved before the resume check, so a resumed run is checked against the metadata too.
    args.channel_axis = common_channel_axis(args.image, args.channel_axis)
    if args.resume is not None:
        check_resume_options(args)
    pairs = read_pairs(args)
    trainer = make_trainer(args, pairs, out)
    config = trainer.config
    say(
        f"Training a {config.ndim}D U-Net {list(config.features)} on {len(pairs)} image(s), "
        f"{sum(trainer.data.objects_per_pair())} labeled object(s), {config.mode} labels, "
        f"patch {list(config.patch_shape)} x {config.batch_size}, lr {trainer.lr:g}, "
        f"{config.iterations} steps, device {trainer.device}"
        + (", anisotropic" if config.ndim == 3 and config.anisotropic else "")
        + (f", from {source_text(args)}" if args.source else "")
    )
    say(f"Device: {device_line(trainer)}"
        + (f", {context.describe()}, global batch {config.batch_size * context.world_size}"
           if context.active else "")
        + f", {torch_threads()} CPU thread(s)")
    from napari_spoco.core.inference.segmentation import settings_for
    from napari_spoco.core.model.input_scale import describe_input_scale

    scale_line = describe_input_scale(config, trainer.annotations)
    if scale_line:
        say(f"note: {scale_line}")
    for note in settings_for(trainer).notes:
        say(f"note: {note}")
    quiet = args.no_progress or not context.is_main
    bar = tqdm(total=config.iterations, initial=trainer.iteration, unit="step",
               disable=True if quiet else None, dynamic_ncols=True)
    lines = None
    if progress_lines_wanted(args) and context.is_main:
        lines = ProgressLines(config.iterations, args.progress_seconds,
                              start_iteration=trainer.iteration)
    try:
        for report in trainer.steps():
            bar.update(1)
            bar.set_postfix(loss=f"{report.smoothed_loss:.4f}", lr=f"{report.lr:.2g}",
                            refresh=False)
            if lines is not None:
                lines.update(report)
    except KeyboardInterrupt:
        bar.close()
        if lines is not None:
            lines.close()
        trainer.save(out)
        say(f"Interrupted at iteration {trainer.iteration}; saved {out} (continue with "
            f"--resume {out}).")
        return 130
    bar.close()
    if lines is not None:
        lines.close()
    # steps() saved to the autosave path (= out) when it ended.
    reason = {"lr": "the learning rate fell below its minimum", "stopped": "stopped"}.get(
        trainer.stop_reason, "done")
    say(f"Saved {out} at iteration {trainer.iteration} ({reason}).")
    return 0
