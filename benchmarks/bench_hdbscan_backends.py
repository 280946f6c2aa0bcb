"""``sklearn.cluster.HDBSCAN`` against the ``hdbscan`` package in our HDBSCAN fast path (issue 12).

What it measures
----------------
For every embedding set, the fast path of
:func:`napari_spoco.core.clustering.hdbscan_clustering.hdbscan_labels` is reproduced step by
step (same foreground points, same ``"auto"`` subsample and seed, same ``min_cluster_size`` /
``min_samples`` scaled by the sampling fraction, ``cluster_selection_epsilon = delta_v``, same
``allow_single_cluster``, same nearest-sample label transfer), and only the fit on the
subsample is swapped between the two libraries. Both backends fit the SAME ``float64``
subsample, alternately, in the same process; the table reports the best wall time of
``--repeats`` fits (the fit alone: the label transfer is identical and not timed) and their
median (the machine may be shared), the ratio to the ``hdbscan`` package, the SBD and the
number of segments against the ground truth (:func:`napari_spoco.core.evaluation.metrics.evaluate`),
and the agreement of the two backends: the adjusted Rand index on the sampled points and the
SBD of one full label image against the other. A check asserts that the ``hdbscan`` rows equal
``hdbscan_labels`` itself. A backend that raises is reported as FAILED with its error and the
run goes on: scikit-learn 1.9.1 with NumPy >= 2.4 raises ``TypeError: only 0-dimensional arrays
can be converted to Python scalars`` in ``traverse_upwards`` on some of our subsamples with a
non-zero ``cluster_selection_epsilon`` (scikit-learn issue #33219, unfixed in 1.9.1).

Embedding sets: the synthetic trained-like embeddings of
``make_embeddings`` (tests/synthetic_embeddings.py) (Voronoi objects,
16-d centers, noise ~delta_v / 2, blurred boundaries, as in ``bench_clustering.py``) for every
``--sizes`` entry, and, unless ``--no-real``, the embeddings the shipped ``ovules_2d`` model
predicts (CPU, a few seconds) for a held-out synthetic ovules image (``make_tissue`` seed 1001,
512x512) with its ground truth.

Equivalent calls
----------------
``hdbscan.HDBSCAN(min_cluster_size=m, min_samples=s, cluster_selection_epsilon=delta_v,
allow_single_cluster=a, core_dist_n_jobs=1)`` (our call; defaults metric="euclidean",
alpha=1, leaf_size=40, cluster_selection_method="eom", no max cluster size, algorithm="best",
which is Boruvka on a k-d tree with the approximate MST for 16-d points) against
``sklearn.cluster.HDBSCAN(min_cluster_size=m, min_samples=s + 1,
cluster_selection_epsilon=delta_v, allow_single_cluster=a, metric="euclidean", alpha=1.0,
leaf_size=40, cluster_selection_method="eom", max_cluster_size=None, algorithm="auto",
n_jobs=1, store_centers=None, copy=False)`` (``"auto"`` is Prim's algorithm with k-d tree core
distances, the only tree algorithm scikit-learn has). The ``+ 1``: scikit-learn counts the
point itself among its ``min_samples`` neighbours (core distance = ``kneighbors(X,
min_samples)[:, -1]``), the ``hdbscan`` package does not (``query(X, k=min_samples + 1)[:,
min_samples]``), so ``s + 1`` gives the same core distances. scikit-learn's ``min_samples=None``
would mean ``min_cluster_size``, so it is always passed. ``store_centers=None`` computes no
centers (the ``hdbscan`` package computes none either) and ``copy`` only matters for
precomputed distances (set to silence scikit-learn 1.9's FutureWarning).

How to run
----------
::

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/bench_hdbscan_backends.py  # ~5 min
    python benchmarks/bench_hdbscan_backends.py --sizes 256x256 --repeats 2 --no-real  # smoke
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from napari_spoco.core.clustering import hdbscan_clustering as fast_path
from napari_spoco.core.clustering.pixel_sampling import (
    draw_subsample,
    foreground_points,
    scatter_to_image,
    transfer_labels,
)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
from synthetic_embeddings import make_embeddings  # noqa: E402 (a test helper)

from napari_spoco.core.evaluation.metrics import evaluate, sbd

DELTA_V = 0.5
# objects per image about as in bench_clustering.py: 39 on 256², 154 on 512², 40 on
# 32x128x128, 323 on 64x256x256
PIXELS_PER_OBJECT = {2: 1700, 3: 13_000}
# 64x256x256 hits the "auto" cap of 50 000 samples, the largest fit the fast path makes
DEFAULT_SIZES = "256x256,512x512,32x128x128,64x256x256"


def parse_sizes(text: str) -> list[tuple[int, ...]]:
    """``"256x256,32x128x128"`` -> ``[(256, 256), (32, 128, 128)]``."""
    sizes = []
    for item in text.split(","):
        shape = tuple(int(part) for part in item.strip().lower().split("x"))
        if len(shape) not in (2, 3) or min(shape) < 8:
            raise SystemExit(f"--sizes: {item!r} is not a 2D or 3D shape like 512x512")
        sizes.append(shape)
    return sizes


def fast_path_problem(embeddings, seed, min_cluster_size=None, mask=None):
    """The points, subsample and scaled parameters ``hdbscan_labels`` would fit on.

    Mirrors ``hdbscan_labels(embeddings, max_samples="auto", min_samples=None)`` line by line.
    """
    spatial = embeddings.shape[1:]
    if min_cluster_size is None:
        min_cluster_size = fast_path.default_min_cluster_size(len(spatial))
    min_samples = min_cluster_size
    points, pixels = foreground_points(embeddings, mask)
    wanted = fast_path._SAMPLES_PER_SMALLEST_CLUSTER * len(points) / min_cluster_size
    max_samples = int(np.clip(wanted, *fast_path._AUTO_SAMPLES))
    sample = draw_subsample(len(points), max_samples, seed)
    fraction = 1.0 if sample is None else len(sample) / len(points)
    return {
        "points": points, "pixels": pixels, "spatial": spatial, "sample": sample,
        "fit_points": (points if sample is None else points[sample]).astype(np.float64),
        "min_cluster_size": min_cluster_size,
        "size": max(2, int(round(min_cluster_size * fraction))),
        "samples": max(1, int(round(min_samples * fraction))),
    }


def fit_hdbscan_package(problem, allow_single_cluster=False):
    """Our call, exactly as in ``hdbscan_labels``."""
    import hdbscan

    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=problem["size"],
        min_samples=problem["samples"],
        cluster_selection_epsilon=float(DELTA_V),
        allow_single_cluster=allow_single_cluster,
        core_dist_n_jobs=1,
    )
    return clusterer.fit_predict(problem["fit_points"]) + 1


def fit_sklearn(problem, allow_single_cluster=False):
    """The equivalent scikit-learn call (``min_samples + 1``: it counts the point itself)."""
    from sklearn.cluster import HDBSCAN

    clusterer = HDBSCAN(
        min_cluster_size=problem["size"],
        min_samples=problem["samples"] + 1,
        cluster_selection_epsilon=float(DELTA_V),
        allow_single_cluster=allow_single_cluster,
        max_cluster_size=None,
        metric="euclidean",
        alpha=1.0,
        algorithm="auto",
        leaf_size=40,
        n_jobs=1,
        cluster_selection_method="eom",
        store_centers=None,
        copy=False,
    )
    return clusterer.fit_predict(problem["fit_points"]) + 1


BACKENDS = {"hdbscan": fit_hdbscan_package, "sklearn": fit_sklearn}


def to_image(problem, fitted):
    """The fast path's label transfer and scatter (not timed: the same for both backends)."""
    sample = problem["sample"]
    labels = fitted if sample is None else transfer_labels(problem["points"], sample, fitted)
    return scatter_to_image(labels, problem["pixels"], problem["spatial"])


def run_set(name, embeddings, truth, args):
    """Both backends on the same subsample, alternately; one table row per backend."""
    from sklearn.metrics import adjusted_rand_score

    problem = fast_path_problem(embeddings, args.seed)
    times = {backend: [] for backend in BACKENDS}
    fitted, errors = {}, {}
    for _ in range(args.repeats):
        for backend, fit in BACKENDS.items():  # alternate: load changes hit both alike
            if backend in errors:
                continue
            start = time.perf_counter()
            try:
                fitted[backend] = fit(problem)
            except Exception as error:  # a crash is a result here, not a reason to stop
                errors[backend] = f"{type(error).__name__}: {error}"
                print(f"  {backend} failed: {errors[backend]}", flush=True)
                continue
            times[backend].append(time.perf_counter() - start)
    best = {backend: min(seconds, default=np.nan) for backend, seconds in times.items()}
    images = {backend: to_image(problem, labels) for backend, labels in fitted.items()}
    reference = fast_path.hdbscan_labels(embeddings, delta_v=DELTA_V, seed=args.seed)
    if "hdbscan" in images:
        assert np.array_equal(images["hdbscan"], reference), "the mirror of the fast path drifted"
    agreement = {"ari": np.nan, "sbd": np.nan}
    if not errors:
        agreement = {
            "ari": adjusted_rand_score(fitted["hdbscan"], fitted["sklearn"]),
            "sbd": sbd(images["hdbscan"], images["sklearn"]),
        }
    rows = []
    for backend in BACKENDS:
        if backend in errors:
            rows.append({
                "set": name, "n_samples": len(problem["fit_points"]), "backend": backend,
                "seconds": np.nan, "ratio": np.nan, "median": np.nan, "sbd": np.nan,
                "segments": "-", "n_gt": "-", "noise": np.nan,
                "params": f"FAILED {errors[backend][:60]}",
            })
            continue
        scores = evaluate(truth, images[backend])
        rows.append({
            "set": name, "n_samples": len(problem["fit_points"]), "backend": backend,
            "seconds": best[backend], "ratio": best[backend] / best["hdbscan"],
            "median": float(np.median(times[backend])),
            "sbd": scores["sbd"], "segments": scores["n_seg"], "n_gt": scores["n_gt"],
            "noise": float(np.mean(fitted[backend] == 0)),
            "params": f"mcs={problem['size']} ms={problem['samples']}"
                      + ("+1" if backend == "sklearn" else ""),
        })
        print(f"  {backend:<8} {best[backend]:7.2f} s (all: "
              f"{', '.join(f'{t:.2f}' for t in times[backend])})  SBD {scores['sbd']:.3f}  "
              f"segments {scores['n_seg']}/{scores['n_gt']}", flush=True)
    print(f"  agreement: ARI on the sample {agreement['ari']:.4f}, "
          f"SBD hdbscan vs sklearn {agreement['sbd']:.3f}", flush=True)
    return rows, agreement


def real_set():
    """Embeddings of the shipped ovules_2d model on a held-out synthetic ovules image."""
    from napari_spoco.core.inference.prediction import predict_from_checkpoint
    from napari_spoco.core.synthetic import make_tissue
    from napari_spoco.models import model_path

    image, labels = make_tissue((512, 512), preset="ovules", seed=1001)
    embeddings = predict_from_checkpoint(model_path("ovules_2d"), image, device="cpu")
    return np.asarray(embeddings, np.float32), labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"comma-separated synthetic shapes (default {DEFAULT_SIZES})")
    parser.add_argument("--repeats", type=int, default=3, help="fits per backend; best counts")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and subsample")
    parser.add_argument("--no-real", action="store_true",
                        help="skip the ovules_2d model's embeddings")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    import hdbscan
    import sklearn

    print(f"hdbscan {getattr(hdbscan, '__version__', '?')}, scikit-learn {sklearn.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    sets = []
    for shape in parse_sizes(args.sizes):
        n_objects = max(2, round(np.prod(shape) / PIXELS_PER_OBJECT[len(shape)]))
        sets.append(("x".join(map(str, shape)), lambda s=shape, n=n_objects: make_embeddings(
            s, n, delta_v=DELTA_V, boundary_blur=0.7, seed=args.seed)))
    if not args.no_real:
        sets.append(("ovules_2d model 512x512", real_set))
    rows, agreements = [], {}
    for name, make in sets:
        start = time.perf_counter()
        embeddings, truth = make()
        print(f"# {name}: {embeddings.shape}, {len(np.unique(truth[truth > 0]))} objects, "
              f"made in {time.perf_counter() - start:.1f} s", flush=True)
        set_rows, agreements[name] = run_set(name, embeddings, truth, args)
        rows += set_rows
    print(f"\nbest of {args.repeats} fits; load average at end {os.getloadavg()[0]:.1f}\n")
    print("| size | n_samples | backend | seconds | ratio | median s | SBD | segments (gt) | "
          "noise | params |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['set']} | {r['n_samples']} | {r['backend']} | {r['seconds']:.2f} | "
              f"{r['ratio']:.2f} | {r['median']:.2f} | {r['sbd']:.3f} | "
              f"{r['segments']} ({r['n_gt']}) | {r['noise']:.3f} | {r['params']} |")
    print("\n| size | ARI hdbscan vs sklearn (sample) | SBD hdbscan vs sklearn (image) |")
    print("|---|---:|---:|")
    for name, agreement in agreements.items():
        print(f"| {name} | {agreement['ari']:.4f} | {agreement['sbd']:.3f} |")


if __name__ == "__main__":
    main()
