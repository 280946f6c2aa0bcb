"""The RGB display projection: correct components, stable colours, [0, 1] range."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from sklearn.decomposition import PCA

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.inference.pca import EmbeddingPCA, pca_rgb


def anisotropic_embeddings(shape=(60, 70), n_dims=6, seed=0):
    """Gaussian embeddings with clearly separated variances along random directions."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(n_dims, n_dims)))
    scales = np.array([5.0, 3.0, 2.0] + [0.3] * (n_dims - 3))
    coefficients = rng.normal(size=(int(np.prod(shape)), n_dims)) * scales
    pixels = coefficients @ basis.T + rng.normal(size=n_dims)
    return pixels.T.reshape(n_dims, *shape).astype(np.float32), basis


def test_components_match_sklearn_up_to_sign_and_follow_the_sign_rule():
    embeddings, _ = anisotropic_embeddings()
    pca = EmbeddingPCA().fit(embeddings, max_pixels=10**6)
    reference = PCA(3).fit(embeddings.reshape(6, -1).T)
    alignment = np.abs(np.sum(pca.components * reference.components_, axis=1))
    np.testing.assert_allclose(alignment, 1.0, atol=1e-6)
    np.testing.assert_allclose(pca.mean, reference.mean_, atol=1e-5)
    strongest = np.argmax(np.abs(pca.components), axis=1)
    assert np.all(pca.components[np.arange(3), strongest] > 0)


def test_hand_computed_axis_aligned_case():
    # A full factorial grid: the covariance is exactly diagonal, variances y > z > x.
    y, z, x = np.meshgrid(np.linspace(-4, 4, 20), np.linspace(-2, 2, 10),
                          np.linspace(-1, 1, 20), indexing="ij")
    embeddings = np.stack([x, y, z]).reshape(3, 40, 100)
    pca = EmbeddingPCA().fit(embeddings)
    np.testing.assert_allclose(pca.components, np.eye(3)[[1, 2, 0]], atol=1e-9)
    rgb = pca.transform(embeddings).reshape(4000, 3)
    for channel, values in enumerate((y, z, x)):
        values = values.ravel()
        low, high = np.percentile(values, [1, 99])
        expected = np.clip((values - low) / (high - low), 0, 1)
        np.testing.assert_allclose(rgb[:, channel], expected, atol=1e-5)


def test_range_dtype_and_percentile_saturation():
    embeddings, _ = anisotropic_embeddings()
    rgb = pca_rgb(embeddings, max_pixels=10**6)
    assert rgb.shape == (60, 70, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    # 1st and 99th percentiles are mapped to 0 and 1: about 1 % saturates at each end.
    for channel in range(3):
        assert 0.005 < np.mean(rgb[..., channel] == 0) < 0.02
        assert 0.005 < np.mean(rgb[..., channel] == 1) < 0.02


def test_same_colours_across_fits_slices_and_calls():
    embeddings, _ = anisotropic_embeddings(shape=(8, 30, 40))
    first = EmbeddingPCA().fit(embeddings, max_pixels=2000, seed=5)
    second = EmbeddingPCA().fit(embeddings, max_pixels=2000, seed=5)
    whole = first.transform(embeddings)
    np.testing.assert_array_equal(whole, second.transform(embeddings))
    np.testing.assert_array_equal(whole, first.transform(embeddings))
    np.testing.assert_allclose(first.transform(embeddings[:, 3]), whole[3], atol=1e-6)


def test_sign_is_deterministic_whatever_the_eigen_solver_returns():
    embeddings, _ = anisotropic_embeddings()
    flipped = EmbeddingPCA().fit(-embeddings)
    straight = EmbeddingPCA().fit(embeddings)
    # Negating the data negates the projections but the sign rule keeps the components.
    np.testing.assert_allclose(flipped.components, straight.components, atol=1e-6)


def test_dict_round_trip_through_json():
    embeddings, _ = anisotropic_embeddings()
    pca = EmbeddingPCA().fit(embeddings)
    restored = EmbeddingPCA.from_dict(json.loads(json.dumps(pca.to_dict())))
    np.testing.assert_array_equal(restored.transform(embeddings), pca.transform(embeddings))
    with pytest.raises(SpocoInputError, match="to_dict"):
        EmbeddingPCA.from_dict({"mean": [0.0]})


def test_zarr_embeddings_are_read_lazily_with_the_same_result(tmp_path):
    embeddings, _ = anisotropic_embeddings(shape=(40, 50))
    stored = zarr.create_array(tmp_path / "e.zarr", shape=embeddings.shape,
                               chunks=(6, 16, 16), dtype="f4")
    stored[...] = embeddings
    pca = EmbeddingPCA().fit(embeddings)
    np.testing.assert_allclose(pca.transform(stored), pca.transform(embeddings), atol=1e-6)
    assert EmbeddingPCA().fit(stored, max_pixels=100).fitted


def test_degenerate_inputs_give_mid_grey_not_nan():
    constant = np.ones((16, 10, 10), np.float32)
    rgb = pca_rgb(constant)
    np.testing.assert_array_equal(rgb, 0.5)
    two_dims = np.random.default_rng(2).normal(size=(2, 20, 20))
    rgb = pca_rgb(two_dims)
    assert np.isfinite(rgb).all() and np.all(rgb[..., 2] == 0.5)


def test_misuse_is_explained():
    with pytest.raises(SpocoInputError, match="fit"):
        EmbeddingPCA().transform(np.zeros((3, 4, 4)))
    pca = EmbeddingPCA().fit(np.random.default_rng(3).normal(size=(4, 5, 5)))
    with pytest.raises(SpocoInputError, match="4-dimensional"):
        pca.transform(np.zeros((16, 5, 5)))
    with pytest.raises(SpocoInputError, match="NaN"):
        EmbeddingPCA().fit(np.full((3, 4, 4), np.nan))
