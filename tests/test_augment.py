import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.training.augment import (
    AugmentConfig,
    Geometry,
    apply_geometry,
    draw_geometry,
    random_geometric,
    random_photometric,
)

DATA = "tests/data/stardist"
EVERYTHING = AugmentConfig(scale_probability=1.0, elastic_probability=1.0, elastic_spacing=8)


@pytest.fixture(scope="module")
def nuclei():
    return tifffile.imread(f"{DATA}/mask2d.tif")[:160, :200].astype(np.int64)


def _interior(labels):
    # Pixels whose whole 3x3(x3) neighbourhood carries their own label.
    footprint = np.ones((3,) * labels.ndim, bool)
    same = ndimage.maximum_filter(labels, footprint=footprint) == ndimage.minimum_filter(
        labels, footprint=footprint
    )
    return same.astype(np.int64)


@pytest.mark.parametrize("config", [AugmentConfig(scale_probability=1.0), EVERYTHING])
def test_image_and_labels_get_the_same_transform(nuclei, config):
    image = nuclei[np.newaxis].astype(np.float32)
    for seed in range(12):
        out_image, out_labels = random_geometric(
            image, nuclei, np.random.default_rng(seed), (96, 80), config=config, image_order=0
        )
        assert out_labels.shape == (96, 80) and out_image.shape == (1, 96, 80)
        np.testing.assert_array_equal(out_image[0], out_labels)


@pytest.mark.parametrize("config", [AugmentConfig(scale_probability=1.0), EVERYTHING])
def test_linear_image_agrees_with_labels_inside_objects(nuclei, config):
    image = nuclei[np.newaxis].astype(np.float32)
    interior = _interior(nuclei)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        geometry = draw_geometry(rng, (96, 80), nuclei.shape, config=config)
        window = tuple(slice(0, s) for s in geometry.window_shape)
        out_image, out_labels = apply_geometry(geometry, image[(slice(None), *window)],
                                               nuclei[window])
        _, out_interior = apply_geometry(geometry, None, interior[window])
        inside = out_interior == 1
        assert inside.mean() > 0.5
        np.testing.assert_allclose(out_image[0][inside], out_labels[inside], atol=1e-4)


def test_label_values_are_never_interpolated(nuclei):
    ids = set(np.unique(nuclei))
    for seed in range(10):
        _, out = random_geometric(nuclei[np.newaxis].astype(np.float32), nuclei,
                                  np.random.default_rng(seed), (64, 64), config=EVERYTHING)
        assert set(np.unique(out)) <= ids


def test_without_scaling_pixels_are_only_permuted(nuclei):
    labels = nuclei[:96, :96]
    config = AugmentConfig(scale_probability=0.0)
    outputs = []
    for seed in range(8):
        _, out = random_geometric(labels[np.newaxis].astype(np.float32), labels,
                                  np.random.default_rng(seed), config=config)
        np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(labels, axis=None))
        outputs.append(out)
    assert sum(not np.array_equal(out, labels) for out in outputs) >= 4


def test_scaling_changes_object_sizes(nuclei):
    config = AugmentConfig(scale_probability=1.0, scale_range=(1.25, 1.25), flip=False,
                           rotate90=False)
    geometry = draw_geometry(np.random.default_rng(0), (96, 96), nuclei.shape, config=config)
    assert geometry.window_shape == (77, 77)
    _, out = apply_geometry(geometry, None, nuclei[:77, :77])
    # Zooming in by 1.25 makes each fully contained object 1.25² times larger.
    inside = [i for i in np.unique(nuclei[1:76, 1:76]) if i and not (
        np.isin(i, nuclei[0]) or np.isin(i, nuclei[:77, 0]) or np.isin(i, nuclei[76, :77])
        or np.isin(i, nuclei[:77, 76]))]
    before = np.bincount(nuclei[:77, :77].ravel())[inside]
    after = np.bincount(out.ravel(), minlength=nuclei.max() + 1)[inside]
    np.testing.assert_allclose(after / before, 1.5625, rtol=0.15)


def test_non_square_patch_always_has_the_requested_shape():
    labels = np.arange(30 * 50).reshape(30, 50)
    for seed in range(16):
        _, out = random_geometric(labels[np.newaxis].astype(np.float32), labels,
                                  np.random.default_rng(seed), (20, 40), config=EVERYTHING)
        assert out.shape == (20, 40)


def test_patch_larger_than_image_is_an_error():
    with pytest.raises(SpocoInputError, match="larger than the image"):
        draw_geometry(np.random.default_rng(0), (64, 64), (32, 64))


def _slice_coded_volume():
    # Each z slice holds its own range of values: z = value // 1000.
    z, y, x = np.indices((6, 24, 24))
    return z * 1000 + y * 24 + x


def test_anisotropic_3d_keeps_slices_and_isotropic_moves_them():
    labels = _slice_coded_volume()
    image = labels[np.newaxis].astype(np.float32)
    config = AugmentConfig(scale_probability=1.0)
    moved = 0
    for seed in range(16):
        _, out = random_geometric(image, labels, np.random.default_rng(seed), (6, 16, 16),
                                  anisotropic=True, config=config)
        np.testing.assert_array_equal(out // 1000, np.indices(out.shape)[0])
        _, out = random_geometric(image, labels, np.random.default_rng(seed), (6, 16, 16),
                                  anisotropic=False, config=config)
        moved += not np.array_equal(out // 1000, np.indices(out.shape)[0])
    assert moved >= 4


def test_anisotropic_scaling_reads_the_full_patch_depth():
    config = AugmentConfig(scale_probability=1.0)
    windows = [draw_geometry(np.random.default_rng(s), (8, 32, 32), (20, 64, 64), anisotropic,
                             config).window_shape for s in range(10) for anisotropic in (0, 1)]
    assert all(w[0] == 8 for w in windows[1::2])
    assert any(w[0] != 8 for w in windows[0::2])


def test_zero_elastic_field_matches_plain_resampling(nuclei):
    window = nuclei[:90, :70]
    image = window[np.newaxis].astype(np.float32) + 0.3
    plain = Geometry((64, 64), (90, 70))
    elastic = Geometry((64, 64), (90, 70), displacement=np.zeros((2, 4, 4)))
    a_image, a_labels = apply_geometry(plain, image, window)
    b_image, b_labels = apply_geometry(elastic, image, window)
    np.testing.assert_array_equal(a_labels, b_labels)
    np.testing.assert_allclose(a_image, b_image, atol=1e-4)


def test_elastic_deformation_moves_pixels_but_keeps_shape(nuclei):
    window = nuclei[:64, :64]
    field = np.random.default_rng(0).normal(0, 3, (2, 4, 4))
    _, warped = apply_geometry(Geometry((64, 64), (64, 64), displacement=field), None, window)
    assert warped.shape == window.shape
    changed = np.mean(warped != window)
    assert 0.01 < changed < 0.5


def test_photometric_draws_differ_and_are_finite():
    image = np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32)
    config = AugmentConfig(photometric_probability=1.0)
    rng = np.random.default_rng(1)
    f = random_photometric(image, rng, config=config)
    g = random_photometric(image, rng, config=config)
    assert f.dtype == np.float32 and f.shape == image.shape
    assert np.isfinite(f).all() and not np.allclose(f, g)
    assert not np.allclose(f, image)


def test_photometric_with_zero_strengths_is_identity():
    image = np.random.default_rng(0).normal(size=(1, 16, 16)).astype(np.float32)
    config = AugmentConfig(photometric_probability=1.0, contrast=0, brightness=0, gamma=0,
                           blur_sigma=0, noise_std=0)
    np.testing.assert_array_equal(random_photometric(image, np.random.default_rng(0),
                                                     config=config), image)


def test_gamma_keeps_the_range_of_negative_normalised_values():
    image = np.random.default_rng(0).normal(size=(1, 32, 32)).astype(np.float32)
    config = AugmentConfig(photometric_probability=1.0, contrast=0, brightness=0, gamma=0.5,
                           blur_sigma=0, noise_std=0)
    out = random_photometric(image, np.random.default_rng(3), config=config)
    assert np.isfinite(out).all() and not np.allclose(out, image)
    np.testing.assert_allclose([out.min(), out.max()], [image.min(), image.max()], atol=1e-5)
    # Gamma is monotonic: the order of pixels is unchanged.
    np.testing.assert_array_equal(np.argsort(out, axis=None), np.argsort(image, axis=None))


def test_anisotropic_blur_stays_in_plane():
    image = np.zeros((1, 5, 16, 16), np.float32)
    image[0, 2, 8, 8] = 1.0
    config = AugmentConfig(photometric_probability=1.0, contrast=0, brightness=0, gamma=0,
                           blur_sigma=2.0, noise_std=0)
    out = random_photometric(image, np.random.default_rng(0), anisotropic=True, config=config)
    assert out[0, 2].sum() == pytest.approx(1.0, abs=1e-4) and out[0, 2, 8, 8] < 1
    assert np.all(out[0, [0, 1, 3, 4]] == 0)


def test_config_dict_round_trip():
    config = AugmentConfig(scale_range=(0.5, 2.0), elastic_probability=0.3)
    assert AugmentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(SpocoInputError, match="rotate"):
        AugmentConfig.from_dict({"rotate": True})
