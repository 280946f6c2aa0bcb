"""The ``napari-spoco`` command line: thin wrappers that read files, call the core, write files.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; the parser it
adds sets ``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from napari_spoco import __version__

# Modules are imported lazily by name so that ``napari-spoco --help`` stays fast and a
# subcommand's heavy imports (torch, napari) happen only when it runs.
SUBCOMMAND_MODULES = ("train", "predict", "segment", "evaluate", "models", "demo",
                      "export")
#: The subcommands that run networks: their torch CPU threads follow the machine's load
#: (core.run_defaults.apply_torch_threads); the others need no torch threads, nor its import.
TORCH_COMMANDS = ("train", "predict", "segment", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-spoco",
        description="Instance segmentation from sparse annotations with SPOCO pixel embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"napari-spoco {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"napari_spoco.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"napari_spoco.cli.{name}":
                continue  # subcommand not written yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``napari-spoco`` console script."""
    from napari_spoco.core.errors import SpocoInputError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    if args.command in TORCH_COMMANDS:
        from napari_spoco.core.run_defaults import apply_torch_threads

        apply_torch_threads()  # the main thread does the work: one setting for the process
    try:
        return int(args.func(args) or 0)
    except SpocoInputError as err:
        print(f"napari-spoco {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-spoco {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
