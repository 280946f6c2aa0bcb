"""Tiled prediction: throughput, and memory bounded by the tile when writing into zarr.

Prints, for one image, seconds and megapixels/s of:

* a single whole-image pass (the peer: no tiling overhead, memory of the whole image),
* tiled prediction into a numpy array,
* tiled prediction streamed into an on-disk zarr array (uncompressed, as the CLI writes it,
  and with zarr's default compression),

with the ratio of each to the whole-image pass, and the peak of numpy-side allocations
(``tracemalloc``; torch's own buffers are not counted) so that the zarr path's bound by the
tile shows next to the numpy path's image-sized output.

Usage: ``python benchmarks/bench_prediction.py [SIZE] [--device cpu|cuda]`` (default 1024).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc

import numpy as np
import torch
import zarr
from scipy import ndimage

from napari_spoco.core.inference.prediction import predict_embeddings
from napari_spoco.core.model.unet import UNet


def measure(label, function, pixels, reference=None):
    tracemalloc.start()
    start = time.perf_counter()
    function()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ratio = "" if reference is None else f"  {seconds / reference:5.2f}x whole-image time"
    print(f"{label:<34} {seconds:7.2f} s  {pixels / seconds / 1e6:6.3f} Mpx/s  "
          f"numpy peak {peak / 2**20:8.1f} MiB{ratio}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", type=int, nargs="?", default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--features", default="16,32,64,128",
                        help="UNet widths, e.g. 4,8 for a quick memory check on big images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    features = tuple(int(f) for f in args.features.split(","))
    model = UNet(1, 16, 2, features=features, norm="group").eval()
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=(args.size, args.size)), 3).astype(np.float32)
    pixels = image.size
    print(f"{args.size}x{args.size} image, UNet {features} (E=16), device {args.device}, "
          f"{torch.get_num_threads()} torch thread(s)")
    common = dict(device=args.device, tile_shape=512, overlap=64)
    predict_embeddings(model, image[:64, :64], None, device=args.device)  # warm-up
    whole = measure("whole image, one pass", lambda: predict_embeddings(
        model, image, None, device=args.device, tile_shape=args.size), pixels)
    measure("tiled 512/64 -> numpy", lambda: predict_embeddings(
        model, image, None, **common), pixels, whole)
    with tempfile.TemporaryDirectory() as folder:
        stored = zarr.create_array(f"{folder}/in.zarr", shape=image.shape, chunks=(256, 256),
                                   dtype="f4")
        stored[...] = image
        out = zarr.create_array(f"{folder}/out.zarr", shape=(16, *image.shape),
                                chunks=(16, 256, 256), dtype="f4", fill_value=0.0,
                                compressors=None)
        measure("tiled 512/64 zarr -> zarr", lambda: predict_embeddings(
            model, stored, None, out=out, **common), pixels, whole)
        compressed = zarr.create_array(f"{folder}/out_zstd.zarr", shape=(16, *image.shape),
                                       chunks=(16, 256, 256), dtype="f4", fill_value=0.0)
        measure("tiled 512/64 zarr -> zarr (zstd)", lambda: predict_embeddings(
            model, stored, None, out=compressed, **common), pixels, whole)
    print(f"(an image-sized float32 embedding array is {16 * pixels * 4 / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
