"""napari sample-data providers: an image and a partly painted Labels layer, ready to train.

Each function returns napari layer-data tuples ``(data, kwargs, layer_type)`` and imports
nothing from napari. About 10 % of the ground-truth objects come painted (a seeded subset), so
pressing Train works straight away; the rest of the image stays unlabeled (0).
"""

from __future__ import annotations

from .datasets import sample_dataset

PAINTED_FRACTION = 0.1

#: Layer title of each sample, by its key in napari.yaml (the sample menu and ``demo --sample``).
SAMPLE_TITLES = {
    "tissue_2d": "synthetic tissue 2D",
    "tissue_3d": "synthetic tissue 3D",
    "stem_2d": "synthetic stem tissue 2D",
    "stem_3d": "synthetic stem tissue 3D",
    "nuclei_2d": "synthetic nuclei 2D",
    "stardist_2d": "StarDist nuclei 2D",
    "stardist_3d": "StarDist nuclei 3D",
}


def sample_layers(key: str, fraction: float = PAINTED_FRACTION, seed: int = 0) -> list[tuple]:
    """The image and painted-labels layer tuples of the sample ``key`` with ``fraction`` painted.

    The sample menu paints :data:`PAINTED_FRACTION`; ``napari-spoco demo`` passes its own.
    """
    title = SAMPLE_TITLES.get(key, key)
    sample = sample_dataset(key, fraction=fraction, seed=seed)
    scale = sample["scale"]
    return [
        (sample["image"], {"name": title, "scale": scale}, "image"),
        (sample["partial_labels"], {"name": f"{title} painted labels", "scale": scale}, "labels"),
    ]


def _layers(key: str) -> list[tuple]:
    return sample_layers(key)


def tissue_2d() -> list[tuple]:
    """Synthetic ovule-like membrane-stained tissue, 2D 512×512."""
    return _layers("tissue_2d")


def tissue_3d() -> list[tuple]:
    """Synthetic ovule-like membrane-stained tissue, 3D 48×192×192 (anisotropic z)."""
    return _layers("tissue_3d")


def stem_2d() -> list[tuple]:
    """Synthetic stem-cell-like membrane-stained tissue, 2D 512×512 (the transfer target)."""
    return _layers("stem_2d")


def stem_3d() -> list[tuple]:
    """Synthetic stem-cell-like membrane-stained tissue, 3D 48×192×192 (the transfer target)."""
    return _layers("stem_3d")


def nuclei_2d() -> list[tuple]:
    """Synthetic fluorescent nuclei, 2D 512×512."""
    return _layers("nuclei_2d")


def stardist_2d() -> list[tuple]:
    """Real 2D nuclei from the StarDist examples (BSD-3), 512×512."""
    return _layers("stardist_2d")


def stardist_3d() -> list[tuple]:
    """Real 3D nuclei from the StarDist examples (BSD-3), 31×61×57."""
    return _layers("stardist_3d")
