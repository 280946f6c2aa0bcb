"""Clustering speed and quality on embeddings that look like a trained model's.

Synthetic data: Voronoi (touching) objects, each with a random 16-d center (centers at least
2.2 delta_d apart), per-pixel noise of norm ~delta_v / 2 and a Gaussian-smoothed transition at
object boundaries. Every row reports the wall time and SBD against the ground truth; peers
run in the same process on the same data:

- ``mwatershed.agglom`` on the same affinities with every edge (no strides), timed alone
  (affinities precomputed, in its favour);
- HDBSCAN fitted on all pixels (``--full-hdbscan``, 2D only: about 5 minutes for 512x512) or
  on a random subsample of ``--peer-samples`` pixels (default 100 000, about a minute), timed for
  the fit alone.

Goals (2-core CPU): mws end to end <= 0.3 s on 512x512 and <= 15 s on 64x256x256; the HDBSCAN
fast path >= 20x faster than the full fit with an SBD within 0.01.

    python benchmarks/bench_clustering.py            # full sizes
    python benchmarks/bench_clustering.py --quick    # small smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from napari_spoco.core.clustering import segment
from napari_spoco.core.clustering.meanshift import DEFAULT_MAX_SAMPLES as MEANSHIFT_SAMPLES
from napari_spoco.core.clustering.mutex_watershed import default_edge_layout, edge_strengths
from napari_spoco.core.clustering.pixel_sampling import transfer_labels

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
from synthetic_embeddings import make_embeddings  # noqa: E402 (a test helper)

from napari_spoco.core.evaluation.metrics import evaluate

DATASETS = {
    "2d": {"full": ((512, 512), 150), "quick": ((256, 256), 40)},
    "3d": {"full": ((64, 256, 256), 300), "quick": ((32, 128, 128), 40)},
}
MIN_CLUSTER_SIZE = {2: 200, 3: 600}
CLEAN_MIN_SIZE = {2: 30, 3: 100}


def timed(function, repeat=1):
    """Best wall time of ``repeat`` calls and the last result."""
    best, result = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def mwatershed_all_edges(embeddings):
    """The peer: mwatershed.agglom on the same affinities, every repulsive edge kept."""
    import mwatershed

    layout = default_edge_layout(embeddings.ndim - 1)
    signed = edge_strengths(embeddings, layout, 2.0, 1)
    signed[layout.n_attractive:] *= -1.0
    offsets = [list(offset) for offset in layout.offsets]
    seconds, labels = timed(lambda: mwatershed.agglom(signed, offsets))
    return seconds, labels.astype(np.int64)


def hdbscan_peer(embeddings, min_cluster_size, n_samples, seed=0):
    """The peer: hdbscan.HDBSCAN fitted on ``n_samples`` pixels (all when that many).

    Pixels outside the sample take the label of their nearest sampled pixel (not timed).
    """
    import hdbscan

    points = np.ascontiguousarray(embeddings.reshape(embeddings.shape[0], -1).T)
    n_points = len(points)
    sample = None
    if n_samples < n_points:
        sample = np.sort(np.random.default_rng(seed).choice(n_points, n_samples, replace=False))
    fraction = 1.0 if sample is None else n_samples / n_points
    size = max(2, round(min_cluster_size * fraction))
    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=size, min_samples=size, cluster_selection_epsilon=0.5,
        core_dist_n_jobs=1,
    )
    fit_points = (points if sample is None else points[sample]).astype(np.float64)
    seconds, fitted = timed(lambda: clusterer.fit_predict(fit_points) + 1)
    labels = fitted if sample is None else transfer_labels(points, sample, fitted)
    return seconds, labels.reshape(embeddings.shape[1:])


def run_dataset(name, shape, n_objects, args):
    ndim = len(shape)
    start = time.perf_counter()
    embeddings, truth = make_embeddings(shape, n_objects, boundary_blur=args.blur, seed=0)
    print(f"# {name}: {shape}, {n_objects} objects, generated in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    rows = []

    def add(method, seconds, labels, note=""):
        scores = evaluate(truth, np.asarray(labels))
        rows.append((name, method, seconds, scores["sbd"], scores["n_seg"],
                     scores["adapted_rand_error"], note))
        print(f"  {method:<38} {seconds:8.2f} s  SBD {scores['sbd']:.3f}  "
              f"segments {scores['n_seg']:6d}  ARE {scores['adapted_rand_error']:.3f}",
              flush=True)
        return scores

    repeat = 3 if ndim == 2 else 1
    add("mws (ours, end to end)", *timed(lambda: segment(embeddings), repeat))
    clean = CLEAN_MIN_SIZE[ndim]
    add(f"mws + min_size={clean} + fill (ours)",
        *timed(lambda: segment(embeddings, min_size=clean, fill=True), repeat))
    if not args.no_peers:
        add("peer: mwatershed.agglom, all edges", *mwatershed_all_edges(embeddings),
            "agglom call only")

    min_cluster_size = MIN_CLUSTER_SIZE[ndim]
    ours_seconds, ours_labels = timed(
        lambda: segment(embeddings, "hdbscan", min_cluster_size=min_cluster_size))
    ours = add("hdbscan fast path (ours, auto subsample)", ours_seconds, ours_labels)
    if not args.no_peers:
        n_pixels = int(np.prod(shape))
        full = args.full_hdbscan and ndim == 2  # 3D: millions of pixels, hours
        n_samples = n_pixels if full else min(n_pixels, args.peer_samples)
        label = "all" if n_samples == n_pixels else f"{n_samples}"
        peer_seconds, peer_labels = hdbscan_peer(embeddings, min_cluster_size, n_samples)
        peer = add(f"peer: HDBSCAN fit on {label} px", peer_seconds, peer_labels, "fit only")
        print(f"  -> hdbscan fast path {peer_seconds / ours_seconds:.1f}x faster than the "
              f"peer, SBD difference {ours['sbd'] - peer['sbd']:+.3f}", flush=True)

    if ndim == 2 or not args.skip_3d_meanshift:
        add(f"meanshift (ours, centers from {MEANSHIFT_SAMPLES} px)",
            *timed(lambda: segment(embeddings, "meanshift")))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--no-3d", action="store_true", help="skip the 3D data set")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer rows")
    parser.add_argument("--full-hdbscan", action="store_true",
                        help="fit the 2D HDBSCAN peer on every pixel (minutes)")
    parser.add_argument("--peer-samples", type=int, default=100_000,
                        help="HDBSCAN peer subsample without --full-hdbscan")
    parser.add_argument("--blur", type=float, default=0.7,
                        help="boundary transition sigma in pixels (10-90 %% over ~2 px)")
    parser.add_argument("--skip-3d-meanshift", action="store_true")
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rows = []
    for name, sizes in DATASETS.items():
        if name == "3d" and args.no_3d:
            continue
        rows += run_dataset(name, *sizes[size], args)
    print()
    print("| data | method | time [s] | SBD | segments | adapted Rand err. | note |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, method, seconds, sbd, n_seg, are, note in rows:
        print(f"| {name} | {method} | {seconds:.2f} | {sbd:.3f} | {n_seg} | {are:.3f} | {note} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
