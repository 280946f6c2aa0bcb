"""Small training inputs and settings shared by the training-core tests."""

import numpy as np

from napari_spoco.core.training import TrainingConfig


def blobs(shape=(48, 48), seed=0):
    """Noise with a few bright squares/cubes, each one labeled object."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32)
    labels = np.zeros(shape, np.uint32)
    corners = [(4, 4), (20, 26), (30, 6)]
    for obj, (y, x) in enumerate(corners, start=1):
        region = (..., slice(y, y + 12), slice(x, x + 12))
        labels[region] = obj * 10
        image[region] += 3.0
    return image, labels


def tiny(**changes):
    """A tiny CPU configuration, with ``changes`` applied."""
    settings = dict(features=(8, 16), patch_shape=(32, 32), batch_size=2, iterations=3,
                    device="cpu", seed=0)
    settings.update(changes)
    return TrainingConfig(**settings)
