"""Peak memory (RSS) of ``napari-spoco predict`` on an 8 MiB input, with the shipped models.

Every measurement runs in a fresh Python subprocess, so that its resident set starts clean and
the kernel's high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``, = ``VmHWM``) is the peak
of that case alone. A case reports the RSS

* after ``import torch`` and the CLI's imports (the floor no prediction can go below),
* after loading the checkpoint (``load_model``) and reading the input from disk (a second
  subprocess, which stops there),
* and the peak while running ``napari-spoco predict --checkpoint NAME --image IN.npy --out
  OUT.npy`` (the CLI's own ``main``, so exactly its code path: prediction into memory, then
  the ``.npy`` written; a third subprocess, which does only that after the imports),

next to the peer "``import torch`` only" measured in the same run. The budget is the peak; what
the prediction itself adds is the peak minus the RSS after loading.

Cases (each an 8 MiB image): 2D 2048×1024 float32 and 2896² uint8 with ``ovules_2d`` (the
uint8 one into ``.zarr``), 3D 32×256×256 float32 with ``ovules_3d``. The image is smoothed noise: memory does not depend on
its content.

Usage: ``python benchmarks/bench_memory.py [--cases 2d,3d,2d_uint8] [--threads 1]
[--no-heap-limit]``. The
target (docs/performance.md, "prediction memory floor") is a peak of at most 600 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: name: (shipped model, shape, dtype, output suffix). The uint8 image has 4× the pixels: its
#: in-memory embeddings alone (16 × 8.4 M float32) are 537 MB, so it is written to .zarr,
#: tile by tile, as the CLI recommends for large images ("2d_uint8_npy" shows the in-memory one).
CASES = {
    "2d": ("ovules_2d", (2048, 1024), "float32", ".npy"),
    "3d": ("ovules_3d", (32, 256, 256), "float32", ".npy"),
    "2d_uint8": ("ovules_2d", (2896, 2896), "uint8", ".zarr"),
    "2d_uint8_npy": ("ovules_2d", (2896, 2896), "uint8", ".npy"),
}
DEFAULT_CASES = "2d,3d,2d_uint8"

BUDGET_MB = 600


def _status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from /proc, in MB (10^6 bytes)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _peak_mb() -> float:
    import resource

    # ru_maxrss is in KiB on Linux; it equals VmHWM.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def child_torch_only() -> dict:
    import torch  # noqa: F401

    return {"after_import": _status_mb("VmRSS"), "peak": _peak_mb()}


def _cli_imports():
    import torch  # noqa: F401

    from napari_spoco.cli import main
    from napari_spoco.core.inference import prediction  # noqa: F401

    return main


def child_load(name: str, image_path: str) -> dict:
    """RSS after the CLI's imports, then after loading the checkpoint and reading the image."""
    import numpy as np

    _cli_imports()
    from napari_spoco.core.model.checkpoint import load_model
    from napari_spoco.models import resolve_checkpoint

    result = {"after_import": _status_mb("VmRSS")}
    loaded = load_model(str(resolve_checkpoint(name)), "cpu")
    image = np.load(image_path)
    result["after_load"] = _status_mb("VmRSS")
    del loaded, image
    return result


def child_predict(name: str, image_path: str, out_path: str, heap_limit: str = "1") -> dict:
    """Peak RSS of ``napari-spoco predict`` (its ``main``) after the same imports, alone."""
    import napari_spoco

    main = _cli_imports()
    if heap_limit == "0":  # as in the napari plugin, which keeps glibc's default threshold
        from napari_spoco.core.inference import lean_forward

        lean_forward.limit_heap_retention = lambda *args, **kwargs: False
    start = time.perf_counter()
    code = main(["predict", "--checkpoint", name, "--image", image_path, "--out", out_path,
                 "--device", "cpu", "--no-progress", "--overwrite"])
    return {"seconds": time.perf_counter() - start, "exit_code": code, "peak": _peak_mb(),
            "after_predict": _status_mb("VmRSS"), "package": napari_spoco.__file__}


def run_child(arguments: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    completed = subprocess.run([sys.executable, __file__, "--child", *arguments], env=env,
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"case {arguments} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def make_image(shape, dtype: str, path: Path) -> None:
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 2)
    image = (image - image.min()) / (image.max() - image.min())
    if dtype == "uint8":
        image = np.round(image * 255).astype(np.uint8)
    np.save(path, image.astype(dtype, copy=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"of {', '.join(CASES)}")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of the subprocesses (default 1)")
    parser.add_argument("--no-heap-limit", action="store_true",
                        help="keep glibc's dynamic mmap threshold, as the napari plugin does "
                             "(the CLI fixes it: lean_forward.limit_heap_retention)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        children = {"torch": child_torch_only, "load": child_load, "predict": child_predict}
        result = children[kind](*rest)
        print(json.dumps(result))
        return
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {sorted(CASES)}")
    peer = run_child(["torch"], args.threads)
    print(f"threads={args.threads}  budget {BUDGET_MB} MB peak RSS (MB = 10^6 bytes)"
          f"{'  glibc heap limit off' if args.no_heap_limit else ''}")
    print(f"{'peer: import torch only':<44} after import {peer['after_import']:7.1f} MB  "
          f"peak {peer['peak']:7.1f} MB")
    with tempfile.TemporaryDirectory() as folder:
        for case in cases:
            name, shape, dtype, suffix = CASES[case]
            image_path = Path(folder) / f"{case}.npy"
            make_image(shape, dtype, image_path)
            size = image_path.stat().st_size / 2**20
            r = run_child(["load", name, str(image_path)], args.threads)
            r.update(run_child(["predict", name, str(image_path),
                                str(Path(folder) / f"out{suffix}"),
                                "0" if args.no_heap_limit else "1"], args.threads))
            verdict = "met" if r["peak"] <= BUDGET_MB else "missed"
            label = f"{case} {'x'.join(map(str, shape))} {dtype} ({size:.1f} MiB) -> {suffix}"
            print(f"{label:<44} after import {r['after_import']:6.1f} MB  after load+read "
                  f"{r['after_load']:6.1f} MB  peak {r['peak']:6.1f} MB "
                  f"(+{r['peak'] - r['after_load']:6.1f} predicting)  {r['seconds']:6.1f} s  "
                  f"{verdict}")
        print(f"(package: {r['package']})")


if __name__ == "__main__":
    main()
