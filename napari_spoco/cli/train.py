"""``napari-spoco train``: train or fine-tune an embedding network on image/label files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "train a SPOCO embedding network from sparse labels (or fine-tune / resume one)"

EPILOG = """\
examples:
  napari-spoco train --image a.tif --labels a_labels.tif --out model.pt
  napari-spoco train --image a.tif --labels a.tif --image b.tif --labels b.tif --out model.pt
  napari-spoco train --source nuclei.pt --image new.tif --labels few.tif --out tuned.pt
  napari-spoco train --resume model.pt --image a.tif --labels a_labels.tif --iterations 20000

Labels: 0 = unlabeled (sparse mode) or background (--mode dense); every other id is one object.
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
    data.add_argument("--fraction", type=float, default=None, metavar="P",
                      help="SPOCO@p benchmark: keep round(P·n) random objects of each label "
                           "image (seeded by --seed) and set the others to 0")

    start = parser.add_argument_group("model").add_mutually_exclusive_group()
    start.add_argument("--source", default=None, metavar="CKPT",
                       help="fine-tune this checkpoint (default lr: its lr / 10)")
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
                           help="optimizer steps (default 10000)")
    run_group.add_argument("--patch-shape", type=int, nargs="+", default=None, metavar="N",
                           help="training patch, e.g. 256 256 or 32 64 64 (clipped to the images)")
    run_group.add_argument("--batch-size", type=int, default=None, help="patches per step (4)")
    run_group.add_argument("--lr", type=float, default=None,
                           help="learning rate (default 2e-4; fine-tuning: source lr / 10)")
    run_group.add_argument("--device", default=None, help="auto (default), cpu, cuda or mps")
    run_group.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    run_group.add_argument("--autosave-seconds", type=float, default=None, metavar="S",
                           help="save the checkpoint at least every S seconds (default 60)")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    run_group.add_argument("--overwrite", action="store_true",
                           help="replace an existing --out checkpoint (resuming may always "
                                "write the checkpoint it resumed from)")
    parser.set_defaults(func=run)
    return parser


def read_pairs(args) -> list:
    """Read the ``--image``/``--labels`` files, applying ``--fraction`` if given."""
    from napari_spoco.core.errors import SpocoInputError
    from napari_spoco.core.io import read_array
    from napari_spoco.core.sampling import subsample_objects

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


def build_config(args):
    """A ``TrainingConfig`` from the options given (unset ones keep their defaults)."""
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
    }
    settings = {key: value for key, value in settings.items() if value is not None}
    if args.norm is not None:
        settings["norm"] = None if args.norm == "none" else args.norm
    return TrainingConfig(**settings)


#: Options a resumed run takes from its checkpoint instead (``--channel-axis`` is compared).
RESUMED_SETTINGS = ("features", "norm", "anisotropic_levels", "patch_shape", "batch_size", "lr",
                    "mode", "ignore_id", "autosave_seconds")


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
    from napari_spoco.core.checkpoint import load_checkpoint
    from napari_spoco.core.errors import SpocoInputError

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
    return Trainer(pairs, build_config(args), source=args.source, autosave_path=out)


def run(args) -> int:
    """Train, showing the loss in a progress bar; save at the end and on Ctrl-C."""
    from tqdm import tqdm

    out = check_out(args)
    if args.resume is not None:
        check_resume_options(args)
    pairs = read_pairs(args)
    trainer = make_trainer(args, pairs, out)
    config = trainer.config
    print(
        f"Training a {config.ndim}D U-Net {list(config.features)} on {len(pairs)} image(s), "
        f"{sum(trainer.data.objects_per_pair())} labeled object(s), {config.mode} labels, "
        f"patch {list(config.patch_shape)} x {config.batch_size}, lr {trainer.lr:g}, "
        f"device {trainer.device}" + (f", from {args.source}" if args.source else ""),
        file=sys.stderr,
    )
    from napari_spoco.core.segmentation import settings_for

    for note in settings_for(trainer).notes:
        print(f"note: {note}", file=sys.stderr)
    bar = tqdm(total=config.iterations, initial=trainer.iteration, unit="step",
               disable=True if args.no_progress else None, dynamic_ncols=True)
    try:
        for report in trainer.steps():
            bar.update(1)
            bar.set_postfix(loss=f"{report.smoothed_loss:.4f}", lr=f"{report.lr:.2g}",
                            refresh=False)
    except KeyboardInterrupt:
        bar.close()
        trainer.save(out)
        print(f"Interrupted at iteration {trainer.iteration}; saved {out} (continue with "
              f"--resume {out}).", file=sys.stderr)
        return 130
    bar.close()
    # steps() saved to the autosave path (= out) when it ended.
    reason = {"lr": "the learning rate fell below its minimum", "stopped": "stopped"}.get(
        trainer.stop_reason, "done")
    print(f"Saved {out} at iteration {trainer.iteration} ({reason}).", file=sys.stderr)
    return 0
