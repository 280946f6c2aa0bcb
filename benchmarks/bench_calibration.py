"""Group-norm calibration cost and tiled-prediction overhead, default network, side by side.

Prints, in one run on one image with the default network (``TrainingConfig()`` architecture:
features 16,32,64,128, group norm) and the default ``predict_embeddings`` settings:

* a single whole-image pass (the peer),
* the default prediction: group norm frozen to statistics of the network's statistics tiles
  (twice the default CPU training patch, as a trained checkpoint records it), then the default
  tiles (one pass up to ``TILE_VOXELS``),
* the calibration alone (``freeze_group_norm`` on the default calibration tiles) with the
  current :func:`~napari_spoco.core.model.frozen_norm.group_statistics` and with the previous one
  (two float64 copies of every activation), so the saving of the change shows as a ratio.

Usage: ``python benchmarks/bench_calibration.py [SIZE] [--threads N] [--depth D]`` (default
1024; ``--depth`` measures a D × SIZE × SIZE stack with the default 3D network).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage

from napari_spoco.core.inference.prediction import (
    default_calibration_regions,
    default_tiling,
    freezes_statistics,
    predict_embeddings,
)
from napari_spoco.core.inference.tiling import plan_tiles
from napari_spoco.core.model import frozen_norm
from napari_spoco.core.model.unet import UNet
from napari_spoco.core.run_defaults import default_patch_and_batch
from napari_spoco.core.training.config import TrainingConfig


def float64_copy_statistics(x, num_groups):
    """The previous ``group_statistics``: two float64 copies of the activations."""
    grouped = x.detach().reshape(x.shape[0], num_groups, -1).double()
    mean = grouped.mean(dim=(0, 2))
    var = (grouped - mean[None, :, None]).square().mean(dim=(0, 2))
    return mean, var


def best_of(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", type=int, nargs="?", default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--depth", type=int, default=None,
                        help="a 3D stack of DEPTH × SIZE × SIZE with the default 3D network")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ndim = 2 if args.depth is None else 3
    config = TrainingConfig(ndim=ndim)
    model = UNet.from_config({**config.architecture, "in_channels": 1}).eval()
    shape = (args.size,) * 2 if ndim == 2 else (args.depth, args.size, args.size)
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=shape), 3).astype(np.float32)
    # what a trained checkpoint of the default CPU run carries (Trainer / load_model)
    patch, _ = default_patch_and_batch(image.shape, "cpu")
    model.statistics_tile = frozen_norm.statistics_tile(patch)
    tensor = torch.from_numpy(image)[None, None]

    def whole():
        with torch.inference_mode():
            model(tensor)

    regions = default_calibration_regions(model, image.shape)
    calibration = torch.stack([tensor[0][(slice(None),) + r] for r in regions])
    tile, overlap, margin = default_tiling(model, image.shape)
    n_tiles = len(plan_tiles(image.shape, tile, overlap, model.required_multiple, margin))

    def calibrate():
        frozen_norm.freeze_group_norm(model, calibration)

    current = frozen_norm.group_statistics
    whole_s = best_of(whole, args.repeats)
    tiled_s = best_of(lambda: predict_embeddings(model, image, device="cpu"), args.repeats)
    new_cal = best_of(calibrate, args.repeats)
    frozen_norm.group_statistics = float64_copy_statistics
    try:
        old_cal = best_of(calibrate, args.repeats)
    finally:
        frozen_norm.group_statistics = current
    print(f"image {shape}, threads {args.threads}, {n_tiles} prediction tile(s) of "
          f"{tile}, {len(regions)} calibration tiles of "
          f"{tuple(r.stop - r.start for r in regions[0])}"
          f"{'' if freezes_statistics(model, image.shape, n_tiles) else ' (not needed)'}")
    print(f"whole-image pass          {whole_s:7.2f} s  1.00x")
    print(f"default prediction        {tiled_s:7.2f} s  {tiled_s / whole_s:5.2f}x whole-image")
    print(f"calibration, current      {new_cal:7.2f} s  {new_cal / whole_s:5.2f}x whole-image")
    print(f"calibration, float64 copy {old_cal:7.2f} s  {old_cal / whole_s:5.2f}x whole-image  "
          f"(current/old {new_cal / old_cal:4.2f})")


if __name__ == "__main__":
    main()
