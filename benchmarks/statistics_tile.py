"""Segmentation quality against image size: group-norm statistics of the image or of a tile.

For a checkpoint (a shipped name or a path) and held-out synthetic images of a preset at several
sizes, prints SBD, AP50 and adapted Rand error of the default segmentation (``settings_for`` +
``segment_output``, as ``napari-spoco segment``) when the network's group norm takes its
statistics

* from the whole image (``groupnorm="tile"`` with one tile: the network's live output),
* from tiles of each ``--tiles`` side, up to 64 of them spread over the image (the network
  frozen to those statistics, then one pass),
* by default (``predict_with_foreground`` as it is: the network's statistics tile, twice its
  training patch; see ``frozen_norm.statistics_tile``),

next to the classical baseline of the same images measured in the same run (seeded watershed of
the membranes, or Otsu + watershed for nuclei; ``nuclei_quality``). A statistics tile the size
of the image is its own statistics.

    python benchmarks/statistics_tile.py ovules_2d --preset ovules --sizes 256 512 1024
    python benchmarks/statistics_tile.py PATH.pt --preset stem --sizes 512 1024 --seeds 101
    python benchmarks/statistics_tile.py ovules_3d --sizes 256 --tiles 128 --seeds 1001

In 3D the images are ``--depth`` × size × size and a tile of side s is s/4 × s × s.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))

from nuclei_quality import membrane_watershed, otsu_watershed

from napari_spoco.core.evaluation.metrics import evaluate
from napari_spoco.core.inference.prediction import (
    frozen_network,
    predict_with_foreground,
    statistics_tile_of,
)
from napari_spoco.core.inference.segmentation import segment_output, settings_for
from napari_spoco.core.model.checkpoint import load_model
from napari_spoco.core.synthetic import make_nuclei, make_tissue
from napari_spoco.models import resolve_checkpoint


def held_out(preset: str, shape, seed: int):
    if preset == "nuclei":
        return make_nuclei(shape, seed=seed)
    return make_tissue(shape, preset=preset, seed=seed)


def scores_of(loaded, network, image, truth, **kwargs) -> dict:
    embeddings, foreground = predict_with_foreground(network, image, loaded.normalization,
                                                     device="cpu", tile_shape=image.shape,
                                                     **kwargs)
    segmentation = segment_output(np.asarray(embeddings), foreground,
                                  settings_for(loaded, ndim=image.ndim))
    return evaluate(truth, segmentation)


def line(label: str, scores: dict) -> str:
    return (f"  {label:<28} SBD {scores['sbd']:.3f}  AP50 {scores['ap50']:.3f}  "
            f"ARand {scores['adapted_rand_error']:.3f}  segments {scores['n_seg']:>5} "
            f"for {scores['n_gt']} objects")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a shipped model's name or a checkpoint path")
    parser.add_argument("--preset", default="ovules", help="tissue preset, or 'nuclei'")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--tiles", type=int, nargs="*", default=[128, 256, 384])
    parser.add_argument("--seeds", type=int, nargs="+", default=[21])
    parser.add_argument("--depth", type=int, default=48, help="z size of 3D images")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(resolve_checkpoint(args.checkpoint), "cpu")
    model = loaded.model  # eval mode on the CPU: predicted as it is
    ndim = loaded.model.ndim
    print(f"{args.checkpoint}: trained on patches {loaded.config.get('patch_shape')}, "
          f"statistics tile {statistics_tile_of(model, ndim)}")
    for size in args.sizes:
        for seed in args.seeds:
            shape = (size,) * 2 if ndim == 2 else (args.depth, size, size)
            image, truth = held_out(args.preset, shape, seed)
            baseline = (otsu_watershed if args.preset == "nuclei" else membrane_watershed)(image)
            print(f"{args.preset} {shape}, seed {seed}")
            print(line("classical baseline", evaluate(truth, baseline)))
            print(line("whole image's statistics", scores_of(loaded, model, image, truth,
                                                              groupnorm="tile")))
            for side in args.tiles:
                if side >= size:
                    continue
                tile = (side,) * 2 if ndim == 2 else (side // 4, side, side)
                frozen = frozen_network(model, image, loaded.normalization, device="cpu",
                                        calibration_tile_shape=tile, calibration_tiles=64)
                print(line(f"statistics of {side}-px tiles", scores_of(loaded, frozen, image,
                                                                        truth)))
            print(line("default", scores_of(loaded, model, image, truth)), flush=True)


if __name__ == "__main__":
    main()
