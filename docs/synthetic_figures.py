"""Render the example figures of ``docs/synthetic.md``.

Run: ``python docs/synthetic_figures.py`` (writes ``docs/synthetic_tissue.png`` and
``docs/synthetic_nuclei.png``). Uses ``imageio`` (a scikit-image dependency), no plotting
library: each figure is a grid of grey tiles, ground-truth boundaries drawn in red.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage.segmentation import find_boundaries

from napari_spoco.core.synthetic import TISSUE_PRESETS, make_nuclei, make_tissue

HERE = Path(__file__).parent
TILE = 256
GAP = 4


def grey(tile: np.ndarray) -> np.ndarray:
    return np.repeat(tile[..., None], 3, axis=-1)


def with_boundaries(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rgb = grey(image)
    rgb[find_boundaries(labels, mode="inner")] = (1.0, 0.1, 0.1)
    return rgb


def side_view(volume: np.ndarray, anisotropy: float) -> np.ndarray:
    """Z-X section at the middle row, z stretched by the anisotropy to physical proportions."""
    section = volume[:, volume.shape[1] // 2, :]
    rows = np.round(np.arange(int(section.shape[0] * anisotropy)) / anisotropy).astype(int)
    section = section[np.minimum(rows, section.shape[0] - 1)][:TILE]
    return np.pad(section, ((0, TILE - section.shape[0]), (0, 0)))


def montage(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tiles side by side, rows one under the other, white gaps between."""
    lines = []
    for row in rows:
        gap = np.ones((TILE, GAP, 3))
        parts = [part for tile in row for part in (tile, gap)][:-1]
        lines.append(np.concatenate(parts, axis=1))
    gap = np.ones((GAP, lines[0].shape[1], 3))
    stacked = [part for line in lines for part in (line, gap)][:-1]
    return (np.clip(np.concatenate(stacked, axis=0), 0, 1) * 255).astype(np.uint8)


def main() -> None:
    rows = []
    for preset in ("ovules", "stem"):
        image, labels = make_tissue((TILE, TILE), preset=preset, seed=1)
        volume, _ = make_tissue((48, TILE, TILE), preset=preset, seed=1)
        anisotropy = TISSUE_PRESETS[preset].anisotropy
        middle = volume[volume.shape[0] // 2]
        side = side_view(volume, anisotropy)
        rows.append([grey(image), with_boundaries(image, labels), grey(middle), grey(side)])
    iio.imwrite(HERE / "synthetic_tissue.png", montage(rows))

    image, labels = make_nuclei((TILE, TILE), seed=1)
    volume, _ = make_nuclei((48, TILE, TILE), seed=1)
    nuclei_row = [
        grey(image), with_boundaries(image, labels), grey(volume[24]), grey(side_view(volume, 2.0))
    ]
    iio.imwrite(HERE / "synthetic_nuclei.png", montage([nuclei_row]))


if __name__ == "__main__":
    main()
