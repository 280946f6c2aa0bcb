"""napari sample-data providers: an image and a partly painted Labels layer, ready to train.

Each function returns napari layer-data tuples ``(data, kwargs, layer_type)`` and imports
nothing from napari. About 10 % of the ground-truth objects come painted (a seeded subset), so
pressing Train works straight away; the rest of the image stays unlabeled (0).
"""

from __future__ import annotations

from .datasets import sample_dataset

PAINTED_FRACTION = 0.1


def _layers(name: str, title: str) -> list[tuple]:
    sample = sample_dataset(name, fraction=PAINTED_FRACTION, seed=0)
    scale = sample["scale"]
    return [
        (sample["image"], {"name": title, "scale": scale}, "image"),
        (sample["partial_labels"], {"name": f"{title} painted labels", "scale": scale}, "labels"),
    ]


def tissue_2d() -> list[tuple]:
    """Synthetic ovule-like membrane-stained tissue, 2D 512×512."""
    return _layers("ovules_2d", "synthetic tissue 2D")


def tissue_3d() -> list[tuple]:
    """Synthetic ovule-like membrane-stained tissue, 3D 48×192×192 (anisotropic z)."""
    return _layers("ovules_3d", "synthetic tissue 3D")


def stem_2d() -> list[tuple]:
    """Synthetic stem-cell-like membrane-stained tissue, 2D 512×512 (the transfer target)."""
    return _layers("stem_2d", "synthetic stem tissue 2D")


def stem_3d() -> list[tuple]:
    """Synthetic stem-cell-like membrane-stained tissue, 3D 48×192×192 (the transfer target)."""
    return _layers("stem_3d", "synthetic stem tissue 3D")


def nuclei_2d() -> list[tuple]:
    """Synthetic fluorescent nuclei, 2D 512×512."""
    return _layers("nuclei_2d", "synthetic nuclei 2D")


def stardist_2d() -> list[tuple]:
    """Real 2D nuclei from the StarDist examples (BSD-3), 512×512."""
    return _layers("stardist_2d", "StarDist nuclei 2D")


def stardist_3d() -> list[tuple]:
    """Real 3D nuclei from the StarDist examples (BSD-3), 31×61×57."""
    return _layers("stardist_3d", "StarDist nuclei 3D")
