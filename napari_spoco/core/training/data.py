"""Training data: validated (image, labels) pairs turned into augmented batches for f and g.

Storage: numpy images are used in place (never modified); labels are copied, so a napari Labels
layer painted in place does not change under the sampler until ``set_labels`` hands over the new
version. Lazy arrays (zarr, dask) up to ``LAZY_BYTES`` are loaded into memory; larger ones stay
lazy and only the windows of sampled patches are read (validation, normalisation fitting and the
labeled-pixel index stream over them once).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SpocoInputError
from ..model.normalization import Normalization
from ..run_defaults import default_anisotropic
from ..validation import slabs, validate_pair
from .augment import (
    AugmentConfig,
    Geometry,
    apply_geometry,
    draw_geometry,
    random_photometric,
    window_slices,
)

__all__ = ["TrainingData", "validate_pair", "DEFAULT_PATCH_SHAPES"]

DEFAULT_PATCH_SHAPES = {2: (256, 256), 3: (32, 64, 64)}

#: Lazy arrays at most this large are read into memory once; bigger ones are read per patch.
LAZY_BYTES = 256 * 2**20

#: Labeled pixels remembered per object and pair as crop centres (a random subset beyond this).
CENTERS_PER_OBJECT = 1024


def _as_array(array):
    if isinstance(array, np.ndarray):
        return array
    if not (hasattr(array, "shape") and hasattr(array, "__getitem__")):
        return np.asarray(array)
    nbytes = np.dtype(array.dtype).itemsize * int(np.prod(array.shape))
    return np.asarray(array[...]) if nbytes <= LAZY_BYTES else array


def _cap_per_group(values: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``cap`` random entries per distinct value, sorted by value."""
    shuffled = rng.permutation(values.size)
    order = shuffled[np.argsort(values[shuffled], kind="stable")]
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, sorted_values.size]))
    return order[np.arange(sorted_values.size) - group_start < cap]


@dataclass
class _LabelIndex:
    """Labeled pixels of one pair, grouped by object, to centre crops on objects."""

    object_ids: np.ndarray  # sorted ids of the labeled objects
    starts: np.ndarray  # object k's centres are centers[starts[k]:starts[k + 1]]
    centers: np.ndarray  # (n, ndim) int64 coordinates


class TrainingData:
    """Validated training pairs and a sampler of augmented batches.

    Parameters
    ----------
    pairs : sequence of (image, labels)
        Numpy or zarr arrays; images ``[Z,] Y, X`` (plus a channel axis if ``channel_axis``),
        labels of non-negative integers with the image's spatial shape.
    ndim : {2, 3}
        Spatial dimensions of the model.
    channel_axis : int or None
        The channel axis of every image.
    patch_shape : tuple of int, optional
        Spatial patch shape; default (256, 256) in 2D and (32, 64, 64) in 3D. It is clipped
        per axis to the smallest image so every patch lies inside its image.
    mode : {"sparse", "dense"}
        Sparse: 0 is unlabeled. Dense: 0 is background, an object like any other.
    background_id, ignore_id : int, optional
        Painted background (one more object) and pixels that take part in nothing.
    anisotropic : bool, optional
        3D only: keep rotations, scalings and flips in-plane. None (default) decides from the
        shapes: anisotropic when every image has ``Z ≤ min(Y, X) / 2``
        (``run_defaults.default_anisotropic``, the rule of every front end).
    normalization : Normalization, optional
        Intensity statistics; fitted on the images when None.
    augment : bool, AugmentConfig or dict
        True for the default augmentation, False for crops only (then x_f equals x_g).
    labeled_fraction : float
        Probability that a patch is centred on a labeled pixel rather than drawn uniformly.
    """

    def __init__(
        self,
        pairs,
        ndim: int,
        channel_axis: int | None = None,
        patch_shape=None,
        mode: str = "sparse",
        background_id: int | None = None,
        ignore_id: int | None = None,
        anisotropic: bool | None = None,
        normalization: Normalization | None = None,
        augment=True,
        labeled_fraction: float = 0.9,
        input_scale: float = 1.0,
    ):
        if mode not in ("sparse", "dense"):
            raise SpocoInputError(f"mode must be 'sparse' or 'dense', got {mode!r}.")
        if mode == "sparse" and background_id == 0:
            raise SpocoInputError(
                "background_id=0 is impossible in sparse mode, where 0 means unlabeled; paint "
                "background with its own id, or use dense mode where 0 is background."
            )
        if background_id is not None and background_id == ignore_id:
            raise SpocoInputError(f"background_id and ignore_id are both {background_id}.")
        pairs = list(pairs)
        if not pairs:
            raise SpocoInputError("No training pairs: give at least one (image, labels) pair.")
        self.ndim = int(ndim)
        self.channel_axis = channel_axis
        self.mode = mode
        self.background_id = background_id
        self.ignore_id = ignore_id
        self.labeled_fraction = float(labeled_fraction)
        if not float(input_scale) > 0:
            raise SpocoInputError(f"input_scale must be positive, got {input_scale}.")
        self.input_scale = float(input_scale)
        self._lock = threading.Lock()
        self._summary = None  # annotation_summary(), recomputed after set_labels
        self._images, self._labels, self._index = [], [], []
        for i, (image, labels) in enumerate(pairs):
            image, labels = _as_array(image), _as_array(labels)
            try:
                labels = validate_pair(image, labels, self.ndim, channel_axis)
            except SpocoInputError as err:
                raise SpocoInputError(f"Training pair {i}: {err}") from err
            if self.input_scale != 1.0:  # the network's grid (core.model.input_scale)
                image, labels = self._to_network_grid(image, labels)
            self._images.append(image)
            self._labels.append(self._own(labels))
            self._index.append(self._build_index(self._labels[-1]))
        self.shapes = [self._spatial_shape(image) for image in self._images]
        channels = {1 if channel_axis is None else im.shape[channel_axis] for im in self._images}
        if len(channels) > 1:
            raise SpocoInputError(
                f"The training images have different channel counts {sorted(channels)}; "
                "all images need the same channels."
            )
        self.in_channels = channels.pop()
        self._require_labels(self._index)
        if anisotropic is None:
            anisotropic = self.ndim == 3 and default_anisotropic(self.shapes)
        self.anisotropic = bool(anisotropic) and self.ndim == 3
        self.patch_shape = self._clip_patch(patch_shape)
        if normalization is None:
            normalization = Normalization.fit(self._images, channel_axis)
        elif normalization.channels != self.in_channels:
            raise SpocoInputError(
                f"The normalisation has {normalization.channels} channel(s) but the images have "
                f"{self.in_channels}; refit it or use the model trained on these channels."
            )
        self.normalization = normalization
        if augment is True:
            augment = AugmentConfig()
        elif isinstance(augment, dict):
            augment = AugmentConfig.from_dict(augment)
        self.augment = augment or None

    def __len__(self) -> int:
        return len(self._images)

    # -- labels -------------------------------------------------------------------------------

    def _to_network_grid(self, image, labels):
        from ..model.input_scale import resample, scaled_shape

        shape = scaled_shape(self._spatial_shape(image), self.input_scale)
        return (resample(np.asarray(image), shape, channel_axis=self.channel_axis),
                resample(np.asarray(labels), shape, labels=True))

    def _spatial_shape(self, image) -> tuple[int, ...]:
        shape = list(image.shape)
        if self.channel_axis is not None:
            del shape[self.channel_axis % len(shape)]
        return tuple(shape)

    @staticmethod
    def _own(labels):
        # A copy, so painting into the caller's array cannot race with sampling.
        return np.array(labels, copy=True) if isinstance(labels, np.ndarray) else labels

    def _labeled(self, labels: np.ndarray) -> np.ndarray:
        mask = labels != 0 if self.mode == "sparse" else np.ones(labels.shape, bool)
        if self.ignore_id is not None:
            mask &= labels != self.ignore_id
        return mask

    def _build_index(self, labels) -> _LabelIndex:
        # Fixed seed: the same labels always give the same crop centres.
        rng = np.random.default_rng(0)
        centers, values = [], []
        for start, block in slabs(labels):
            position = np.nonzero(self._labeled(block))
            block_values = block[position].astype(np.int64)
            keep = _cap_per_group(block_values, CENTERS_PER_OBJECT, rng)
            coords = np.stack(position, axis=1)[keep].astype(np.int64)
            coords[:, 0] += start
            centers.append(coords)
            values.append(block_values[keep])
        values = np.concatenate(values)
        keep = _cap_per_group(values, CENTERS_PER_OBJECT, rng)
        values, centers = values[keep], np.concatenate(centers)[keep]
        object_ids, starts = np.unique(values, return_index=True)
        return _LabelIndex(object_ids, np.r_[starts, values.size], centers)

    def _require_labels(self, index):
        if not any(entry.object_ids.size for entry in index):
            what = "labeled pixel" if self.mode == "sparse" else "pixel outside ignore_id"
            raise SpocoInputError(
                f"No {what} in any training image: paint at least one object (a few objects "
                "spread over the images work best)."
            )

    def set_labels(self, index: int, labels) -> None:
        """Replace the labels of pair ``index`` (e.g. after more painting) between steps.

        Safe to call from another thread: a batch being sampled sees either the old or the new
        labels, never a mixture.
        """
        labels = _as_array(labels)
        if self.input_scale != 1.0:  # painted on the image's grid: bring them to the network's
            from ..model.input_scale import resample

            labels = resample(np.asarray(labels), self.shapes[index], labels=True)
        labels = validate_pair(self._images[index], labels, self.ndim, self.channel_axis)
        labels = self._own(labels)
        entry = self._build_index(labels)
        with self._lock:
            self._require_labels(self._index[:index] + [entry] + self._index[index + 1 :])
            self._labels[index] = labels
            self._index[index] = entry
            self._summary = None

    def annotation_summary(self) -> dict:
        """``segmentation.summarize_annotations`` of the current labels (cached).

        Sizes are on the images' own grid, where segmentation happens; see
        :meth:`network_object_size` for the network's grid.
        """
        from ..inference.segmentation import summarize_annotations

        with self._lock:
            if self._summary is None:
                self._summary = summarize_annotations(
                    self._labels, self.mode, self.background_id, self.ignore_id)
                self._summary["median_object_size"] /= self.input_scale ** self.ndim
            return dict(self._summary)

    def network_object_size(self) -> float:
        """Median labeled object size in voxels on the network's grid (0 without objects)."""
        return self.annotation_summary()["median_object_size"] * self.input_scale ** self.ndim

    def objects_per_pair(self, include_background: bool = True) -> list[int]:
        """Number of labeled objects in each pair.

        In sparse mode a painted ``background_id`` is one object (as for the loss) unless
        ``include_background`` is False; in dense mode the background is label 0. Ids equal to
        ``ignore_id`` never count.
        """
        background = self.background_id if self.mode == "sparse" else 0
        with self._lock:
            return [
                int(entry.object_ids.size)
                - (not include_background and bool(np.isin(background, entry.object_ids)))
                for entry in self._index
            ]

    # -- sampling -----------------------------------------------------------------------------

    def _clip_patch(self, patch_shape) -> tuple[int, ...]:
        patch = DEFAULT_PATCH_SHAPES[self.ndim] if patch_shape is None else tuple(patch_shape)
        if len(patch) != self.ndim or min(patch) < 1:
            raise SpocoInputError(
                f"patch_shape must have {self.ndim} positive sizes for a {self.ndim}D model, "
                f"got {patch_shape}."
            )
        smallest = np.min(np.array(self.shapes), axis=0)
        return tuple(int(min(p, s)) for p, s in zip(patch, smallest))

    def _read_image(self, i: int, window) -> np.ndarray:
        image = self._images[i]
        if self.channel_axis is None:
            block = np.asarray(image[window])[np.newaxis]
        else:
            axis = self.channel_axis % image.ndim
            index = list(window)
            index.insert(axis, slice(None))
            block = np.moveaxis(np.asarray(image[tuple(index)]), axis, 0)
        return self.normalization.apply(block, channel_axis=0)

    def _sample_one(self, rng: np.random.Generator):
        labeled = [i for i, entry in enumerate(self._index) if entry.object_ids.size]
        center = None
        if rng.random() < self.labeled_fraction:
            # Pair, then object, then pixel: a large painted background does not crowd out
            # the small objects.
            i = labeled[rng.integers(len(labeled))]
            entry = self._index[i]
            k = rng.integers(entry.object_ids.size)
            center = entry.centers[rng.integers(entry.starts[k], entry.starts[k + 1])]
        else:
            i = int(rng.integers(len(self._images)))
        shape = self.shapes[i]
        if self.augment is None:
            geometry = Geometry(self.patch_shape, self.patch_shape)
        else:
            geometry = draw_geometry(rng, self.patch_shape, shape, self.anisotropic, self.augment)
        window = window_slices(geometry.window_shape, shape, rng, center)
        image = self._read_image(i, window)
        labels = np.asarray(self._labels[i][window]).astype(np.int64)
        image, labels = apply_geometry(geometry, image, labels)
        if self.augment is None:
            return image, image, labels
        x_f = random_photometric(image, rng, self.anisotropic, self.augment)
        x_g = random_photometric(image, rng, self.anisotropic, self.augment)
        return x_f, x_g, labels

    def sample_batch(self, batch_size: int, rng=None):
        """Draw ``batch_size`` augmented patches.

        Parameters
        ----------
        batch_size : int
            Number of patches B.
        rng : numpy.random.Generator or int or None
            Source of randomness; the same seed gives the same batch.

        Returns
        -------
        x_f, x_g : torch.Tensor
            float32 ``(B, C, *patch_shape)``: one geometry per patch, independent photometric
            jitter for the inputs of f and g.
        labels : torch.Tensor
            int64 ``(B, *patch_shape)``.
        """
        rng = np.random.default_rng(rng)
        with self._lock:
            samples = [self._sample_one(rng) for _ in range(int(batch_size))]
        x_f, x_g, labels = (np.stack(parts) for parts in zip(*samples))
        return torch.from_numpy(x_f), torch.from_numpy(x_g), torch.from_numpy(labels)
