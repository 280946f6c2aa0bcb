"""A fixed 3-component PCA of embeddings for display as RGB.

Colours must not flicker: the same model should paint the same object the same colour across
calls, slices and refreshes. So a fitted projection is frozen and reused, its components get a
deterministic sign (largest-magnitude loading positive), and the mapping to [0, 1] uses
percentiles of the fitted sample, stored with it, rather than the range of whatever is being
transformed.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import SpocoInputError

#: Percentiles of the fitted projections mapped to 0 and 1 (outliers saturate).
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0

#: Pixels per slab in ``transform``, bounding temporary memory for large volumes.
SLAB_PIXELS = 2**21


def _sample_pixels(embeddings, max_pixels: int, seed: int) -> np.ndarray:
    """Return up to ``max_pixels`` embedding vectors ``(N, E)`` drawn with a seeded RNG.

    Large lazy arrays are first read on a regular strided grid of about ``4 * max_pixels``
    pixels, so a zarr array is never loaded whole.
    """
    shape = tuple(embeddings.shape)
    n_pixels = math.prod(shape[1:])
    step = 1
    if not isinstance(embeddings, np.ndarray) and n_pixels > 4 * max_pixels:
        step = math.ceil((n_pixels / (4 * max_pixels)) ** (1 / (len(shape) - 1)))
    index = (slice(None),) + (slice(None, None, step),) * (len(shape) - 1)
    flat = np.asarray(embeddings[index], dtype=np.float64).reshape(shape[0], -1)
    if flat.shape[1] > max_pixels:
        chosen = np.random.default_rng(seed).choice(flat.shape[1], max_pixels, replace=False)
        flat = flat[:, np.sort(chosen)]
    return flat.T


class EmbeddingPCA:
    """Project ``(E, *spatial)`` embeddings onto 3 fixed principal components, scaled to [0, 1].

    Attributes
    ----------
    mean : numpy.ndarray
        ``(E,)`` mean embedding of the fitted sample.
    components : numpy.ndarray
        ``(3, E)`` orthonormal components by decreasing variance (zero rows if E < 3), each with
        its largest-magnitude loading positive.
    low, high : numpy.ndarray
        ``(3,)`` projections mapped to 0 and 1.
    """

    def __init__(self, mean=None, components=None, low=None, high=None):
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.components = None if components is None else np.asarray(components, np.float64)
        self.low = None if low is None else np.asarray(low, dtype=np.float64)
        self.high = None if high is None else np.asarray(high, dtype=np.float64)

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_dict`) has set the projection."""
        return self.components is not None

    def fit(self, embeddings, max_pixels: int = 100_000, seed: int = 0) -> EmbeddingPCA:
        """Fit mean, components and colour scaling on a seeded subsample of pixels.

        Parameters
        ----------
        embeddings : array-like
            ``(E, *spatial)``, numpy or zarr.
        max_pixels : int
            At most this many pixels are used.
        seed : int
            Seeds the pixel subsample, so refitting the same embeddings gives the same colours.

        Returns
        -------
        EmbeddingPCA
            ``self``.
        """
        if len(embeddings.shape) < 2 or math.prod(embeddings.shape[1:]) == 0:
            raise SpocoInputError(
                f"Embeddings must be (E, *spatial) with at least one pixel, got shape "
                f"{tuple(embeddings.shape)}."
            )
        pixels = _sample_pixels(embeddings, int(max_pixels), seed)
        if not np.isfinite(pixels).all():
            raise SpocoInputError(
                "The embeddings hold NaN or infinite values; predict them again from a finite "
                "image with a finite model."
            )
        n_dims = pixels.shape[1]
        self.mean = pixels.mean(axis=0)
        centred = pixels - self.mean
        covariance = centred.T @ centred / max(len(pixels) - 1, 1)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1][:3]
        components = np.zeros((3, n_dims))
        components[: len(order)] = eigenvectors[:, order].T
        # eigh's sign is arbitrary; fixing it makes colours reproducible across fits.
        strongest = np.argmax(np.abs(components), axis=1)
        signs = np.sign(components[np.arange(3), strongest])
        components *= np.where(signs == 0, 1.0, signs)[:, None]
        self.components = components
        projected = centred @ components.T
        self.low = np.percentile(projected, LOW_PERCENTILE, axis=0)
        self.high = np.percentile(projected, HIGH_PERCENTILE, axis=0)
        return self

    def transform(self, embeddings) -> np.ndarray:
        """Map ``(E, *spatial)`` embeddings to ``(*spatial, 3)`` float32 RGB in [0, 1].

        Works slab by slab along the first spatial axis, so zarr input is read piecewise.
        A component without spread in the fitted sample is shown at 0.5.
        """
        if not self.fitted:
            raise SpocoInputError("EmbeddingPCA is not fitted; call fit(embeddings) first.")
        shape = tuple(embeddings.shape)
        if len(shape) < 2 or shape[0] != self.components.shape[1]:
            raise SpocoInputError(
                f"Embeddings of shape {shape} do not fit this PCA, fitted on "
                f"{self.components.shape[1]}-dimensional embeddings; fit it on these "
                "embeddings or use the model it was fitted for."
            )
        span = self.high - self.low
        flat_span = span <= 0
        scale = np.where(flat_span, 0.0, 1.0 / np.where(flat_span, 1.0, span))
        # Folding mean, low and scale into one affine map keeps the pass to one matmul.
        weights = (self.components * scale[:, None]).astype(np.float32)
        offset = (np.where(flat_span, 0.5, 0.0)
                  - (self.components @ self.mean + self.low) * scale).astype(np.float32)
        rgb = np.empty((*shape[1:], 3), dtype=np.float32)
        step = max(1, SLAB_PIXELS // math.prod(shape[2:]))
        for start in range(0, shape[1], step):
            slab = np.asarray(embeddings[:, start:start + step], dtype=np.float32)
            values = np.tensordot(slab, weights, axes=([0], [1])) + offset
            np.clip(values, 0.0, 1.0, out=rgb[start:start + step])
        return rgb

    def fit_transform(self, embeddings, max_pixels: int = 100_000, seed: int = 0) -> np.ndarray:
        """:meth:`fit` then :meth:`transform`."""
        return self.fit(embeddings, max_pixels, seed).transform(embeddings)

    def to_dict(self) -> dict:
        """JSON-able form (plain lists), e.g. to keep one projection per model."""
        if not self.fitted:
            raise SpocoInputError("EmbeddingPCA is not fitted; nothing to save.")
        return {
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> EmbeddingPCA:
        """Inverse of :meth:`to_dict`."""
        try:
            pca = cls(data["mean"], data["components"], data["low"], data["high"])
        except (KeyError, TypeError) as err:
            raise SpocoInputError(
                "EmbeddingPCA data must be a dict with 'mean', 'components', 'low' and 'high', "
                f"as written by to_dict; got {type(data).__name__} {data!r:.200}."
            ) from err
        n_dims = pca.mean.shape[0] if pca.mean.ndim == 1 else -1
        if (pca.components.shape != (3, n_dims) or pca.low.shape != (3,)
                or pca.high.shape != (3,)):
            raise SpocoInputError(
                "EmbeddingPCA data has inconsistent shapes (mean (E,), components (3, E), "
                "low (3,), high (3,) expected); save it again with to_dict."
            )
        return pca


def pca_rgb(embeddings, pca: EmbeddingPCA | None = None, **fit_kwargs) -> np.ndarray:
    """RGB view ``(*spatial, 3)`` in [0, 1] of ``(E, *spatial)`` embeddings.

    Parameters
    ----------
    embeddings : array-like
        ``(E, *spatial)``.
    pca : EmbeddingPCA, optional
        A fitted projection to reuse (stable colours); fitted on ``embeddings`` if None.
    **fit_kwargs
        ``max_pixels`` and ``seed`` for fitting.
    """
    if pca is None:
        pca = EmbeddingPCA().fit(embeddings, **fit_kwargs)
    return pca.transform(embeddings)
