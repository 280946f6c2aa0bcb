"""Ready-made datasets with dense ground truth and a sparsely "painted" subset of it.

One function, :func:`sample_dataset`, feeds the napari sample-data menu, the tests and the
demos, so they all see the same arrays. The painted subset is SPOCO@p of the ground truth
(``core.sampling.subsample_objects``): a seeded fraction of whole objects, the rest 0
(= unlabeled), which is what a user who painted a few objects would hand to training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.errors import SpocoInputError
from .core.sampling import background_strokes, subsample_objects
from .core.synthetic import make_nuclei, make_tissue, nuclei_params, tissue_params

STARDIST_DIR = Path(__file__).parent / "data" / "stardist"

# name: (kind, shape or file stem, tissue preset). Sizes keep generation around a second.
_SYNTHETIC = {
    "ovules_2d": ("tissue", (512, 512), "ovules"),
    "ovules_3d": ("tissue", (48, 192, 192), "ovules"),
    "stem_2d": ("tissue", (512, 512), "stem"),
    "stem_3d": ("tissue", (48, 192, 192), "stem"),
    "nuclei_2d": ("nuclei", (512, 512), None),
    "nuclei_3d": ("nuclei", (48, 192, 192), None),
}
_ALIASES = {"tissue_2d": "ovules_2d", "tissue_3d": "ovules_3d"}
_STARDIST = {"stardist_2d": "2d", "stardist_3d": "3d"}
DATASET_NAMES = tuple(sorted([*_SYNTHETIC, *_ALIASES, *_STARDIST]))

#: Label id of the painted background strokes of the samples (the Data tab's default brush).
SAMPLE_BACKGROUND_ID = 65535
#: Samples whose ground truth has this much background (label 0) come with background strokes.
MIN_BACKGROUND_FRACTION = 0.05


def available_datasets() -> tuple[str, ...]:
    """Names :func:`sample_dataset` can load here (the StarDist ones only if their files exist)."""
    return tuple(
        name
        for name in DATASET_NAMES
        if name not in _STARDIST or _stardist_paths(_STARDIST[name])[0].exists()
    )


def sample_dataset(name: str, fraction: float = 0.1, seed: int = 0) -> dict:
    """Image, dense ground truth and a sparse painted subset of it.

    Parameters
    ----------
    name : str
        ``"tissue_2d"``/``"tissue_3d"`` (= ``"ovules_2d"``/``"ovules_3d"``), ``"stem_2d"``,
        ``"stem_3d"``, ``"nuclei_2d"``, ``"nuclei_3d"``, ``"stardist_2d"``, ``"stardist_3d"``.
    fraction : float
        Fraction of the ground-truth objects kept in ``partial_labels`` (``round(p · n)``).
    seed : int
        Seed of the synthetic image and of the choice of painted objects.

    Returns
    -------
    dict
        ``image`` (float32 in [0, 1] for synthetic data, the file's dtype for StarDist),
        ``labels`` (uint32 dense ground truth), ``partial_labels`` (uint32, the kept objects
        with their ground-truth ids, 0 elsewhere; where the sample has a background, also a few
        background strokes with id ``background_id``), ``background_id`` (65535, or None for
        tissue without background), ``scale`` (voxel size per axis relative to the xy pixel
        size, e.g. ``(3.13, 1, 1)``; for display) and ``name`` (the canonical name).
    """
    canonical = _ALIASES.get(name, name)
    if canonical in _SYNTHETIC:
        kind, shape, preset = _SYNTHETIC[canonical]
        if kind == "tissue":
            image, labels = make_tissue(shape, preset=preset, seed=seed)
            scale = (tissue_params(preset).anisotropy, 1.0, 1.0)[-len(shape):]
        else:
            image, labels = make_nuclei(shape, seed=seed)
            scale = (nuclei_params().anisotropy, 1.0, 1.0)[-len(shape):]
    elif canonical in _STARDIST:
        image, labels = _read_stardist(_STARDIST[canonical])
        scale = (1.0,) * image.ndim
    else:
        raise SpocoInputError(
            f"Unknown sample dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}."
        )
    partial = subsample_objects(labels, fraction, seed)
    background_id = None
    if np.mean(labels == 0) >= MIN_BACKGROUND_FRACTION:
        # what a user is asked to do: a few strokes in the background, for the foreground head
        background_id = SAMPLE_BACKGROUND_ID
        partial[background_strokes(labels, seed=seed)] = background_id
    return {
        "name": canonical,
        "image": image,
        "labels": labels,
        "partial_labels": partial,
        "background_id": background_id,
        "scale": scale,
    }


def _stardist_paths(dims: str) -> tuple[Path, Path]:
    return STARDIST_DIR / f"img{dims}.tif", STARDIST_DIR / f"mask{dims}.tif"


def _read_stardist(dims: str) -> tuple[np.ndarray, np.ndarray]:
    image_path, mask_path = _stardist_paths(dims)
    if not (image_path.exists() and mask_path.exists()):
        raise SpocoInputError(
            f"The StarDist example files {image_path.name} / {mask_path.name} are not in "
            f"{STARDIST_DIR}; reinstall napari-spoco (they ship with the package) or use a "
            "synthetic sample such as 'nuclei_2d'."
        )
    import tifffile

    image = tifffile.imread(image_path)
    labels = tifffile.imread(mask_path).astype(np.uint32)
    return image, labels
