"""How long the synthetic generators take, against a peer measured in the same run.

Run: ``python benchmarks/bench_synthetic.py [--repeats 3]``

The peer is the least any Voronoi-tissue generator must do: one nearest-seed query
(``scipy.spatial.cKDTree``) for every voxel of the same grid with the same number of seeds. The
ratio ``generator / peer`` says what the rest of the model (warp, membranes, PSF, noise) costs
and is steadier across machines than seconds. Goals: 2D 512² well under 1 s, 3D 64×256×256
within ~5 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.spatial import cKDTree

from napari_spoco.core.synthetic import TISSUE_PRESETS, make_nuclei, make_tissue

SHAPES = {"2D 512x512": (512, 512), "3D 64x256x256": (64, 256, 256)}


def best_time(function, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best CPU seconds (all threads) over ``repeats`` runs.

    CPU seconds are less disturbed than wall time when other processes share the cores.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def voronoi_peer(shape, n_seeds: int, seed: int = 0) -> np.ndarray:
    """Plain nearest-seed labels on the voxel grid: the floor of the generator's cost."""
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, 1, size=(n_seeds, len(shape))) * np.array(shape)
    grid = np.indices(shape, dtype=np.float32).reshape(len(shape), -1).T
    _, nearest = cKDTree(seeds).query(grid, workers=-1)
    return nearest.reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(
        f"{'generator':<16}{'shape':<15}{'objects':>8}{'wall s':>8}{'cpu s':>7}"
        f"{'peer wall':>10}{'peer cpu':>9}{'cpu ratio':>10}"
    )
    for shape_name, shape in SHAPES.items():
        for preset in TISSUE_PRESETS:
            _, labels = make_tissue(shape, preset=preset, seed=0)
            wall, cpu = best_time(lambda: make_tissue(shape, preset=preset, seed=0), args.repeats)
            n_cells = int(labels.max())
            peer_wall, peer_cpu = best_time(lambda: voronoi_peer(shape, n_cells), args.repeats)
            print(
                f"{'tissue/' + preset:<16}{shape_name:<15}{n_cells:>8}{wall:>8.2f}{cpu:>7.2f}"
                f"{peer_wall:>10.2f}{peer_cpu:>9.2f}{cpu / peer_cpu:>10.1f}"
            )
        _, labels = make_nuclei(shape, seed=0)
        wall, cpu = best_time(lambda: make_nuclei(shape, seed=0), args.repeats)
        print(f"{'nuclei':<16}{shape_name:<15}{int(labels.max()):>8}{wall:>8.2f}{cpu:>7.2f}")


if __name__ == "__main__":
    main()
