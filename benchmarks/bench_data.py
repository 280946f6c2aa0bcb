"""How much of a training step the data pipeline (crop, augmentation, normalisation) takes.

Prints (no assertions; timings are noisy on shared machines), for each case:

* the median time of ``TrainingData.sample_batch`` (one geometry and two photometric draws per
  patch, tensors out);
* the median time of a training step of the default U-Net (16-32-64-128) on that batch:
  f forward + g forward + a stand-in loss + backward; and their ratio (the share of a step the
  data pipeline would add if it ran in the same thread).

Cases: 2D stardist nuclei, batch 2 of 256²; 3D noise volume, batch 1 of 32x64x64 (anisotropic),
with and without elastic deformation. Run:
``python benchmarks/bench_data.py [--threads 1] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
import torch
from timing import median_time

from napari_spoco.core.model.unet import UNet
from napari_spoco.core.training.data import TrainingData
from napari_spoco.core.training.sampling import subsample_objects

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "stardist"




def cases():
    image = tifffile.imread(DATA / "img2d.tif")
    labels = subsample_objects(tifffile.imread(DATA / "mask2d.tif"), 0.1, seed=0)
    yield "2D 2x256²", TrainingData([(image, labels)], 2), 2
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(64, 256, 256)).astype(np.float32)
    volume_labels = np.zeros(volume.shape, np.uint16)
    volume_labels[10:30, 50:90, 60:100] = 3
    yield "3D 1x32x64x64", TrainingData([(volume, volume_labels)], 3), 1
    elastic = TrainingData([(volume, volume_labels)], 3, augment={"elastic_probability": 1.0})
    yield "3D 1x32x64x64 elastic", elastic, 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}, repeats: {args.repeats}")
    print(f"{'case':24s} {'sample_batch ms':>16s} {'train step ms':>14s} {'ratio':>7s}")
    for name, data, batch in cases():
        rng = np.random.default_rng(0)
        sample_s = median_time(lambda: data.sample_batch(batch, rng), args.repeats)
        x_f, x_g, _ = data.sample_batch(batch, rng)
        f = UNet(ndim=data.ndim)
        g = UNet(ndim=data.ndim).requires_grad_(False)

        def step():
            with torch.no_grad():
                target = g(x_g)
            loss = (f(x_f) - target).square().mean()  # stand-in for the SPOCO loss
            loss.backward()

        step_s = median_time(step, max(3, args.repeats // 4), warmup=1)
        print(f"{name:24s} {sample_s * 1e3:16.2f} {step_s * 1e3:14.1f} {sample_s / step_s:7.3f}")


if __name__ == "__main__":
    main()
