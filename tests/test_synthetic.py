"""Synthetic tissue/nuclei generators, sample datasets and napari sample-data providers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label as connected_components
from skimage.measure import regionprops
from skimage.segmentation import find_boundaries

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.synthetic import (
    TISSUE_PRESETS,
    make_nuclei,
    make_tissue,
    nuclei_params,
)
from napari_spoco.datasets import available_datasets, sample_dataset

SHAPE_2D = (256, 256)
SHAPE_3D = (24, 96, 96)
NOISE_FREE = {"photons": float("inf"), "read_noise": 0.0}


@pytest.fixture(scope="module")
def tissue_2d():
    return {p: make_tissue(SHAPE_2D, preset=p, seed=3) for p in TISSUE_PRESETS}


@pytest.fixture(scope="module")
def tissue_3d():
    return {p: make_tissue(SHAPE_3D, preset=p, seed=3) for p in TISSUE_PRESETS}


def _interior_cells(labels):
    """Ids of cells that do not touch the image border (their size is not cut)."""
    border = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        index = [slice(None)] * labels.ndim
        for end in (0, -1):
            index[axis] = end
            border[tuple(index)] = True
    return np.setdiff1d(np.unique(labels), np.unique(labels[border]))


def _boundary_contrast(image, labels):
    boundary = find_boundaries(labels, mode="thick")
    far = ndi.distance_transform_edt(~boundary) > 3
    return image[boundary].mean() - image[far].mean()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("preset", sorted(TISSUE_PRESETS))
def test_tissue_arrays_are_dense_consecutive_and_normalised(tissue_2d, tissue_3d, dims, preset):
    image, labels = (tissue_2d if dims == 2 else tissue_3d)[preset]
    shape = SHAPE_2D if dims == 2 else SHAPE_3D
    assert image.shape == labels.shape == shape
    assert image.dtype == np.float32 and labels.dtype == np.uint32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))  # no 0, no gaps


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("preset", sorted(TISSUE_PRESETS))
def test_membranes_lie_exactly_on_label_boundaries(tissue_2d, tissue_3d, dims, preset):
    image, labels = (tissue_2d if dims == 2 else tissue_3d)[preset]
    contrast = _boundary_contrast(image, labels)
    assert contrast > 0.1
    # ground truth moved by 6 px in x (wider than a blurred wall, also an oblique 3D one) no
    # longer matches the walls: the contrast collapses
    shifted = np.roll(labels, 6, axis=-1)
    assert _boundary_contrast(image, shifted) < 0.5 * contrast


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("preset", sorted(TISSUE_PRESETS))
def test_cells_are_connected(tissue_2d, tissue_3d, dims, preset):
    _, labels = (tissue_2d if dims == 2 else tissue_3d)[preset]
    components = connected_components(labels, background=0, connectivity=1)
    sizes = np.bincount(components.ravel())[1:]
    owner = np.zeros(sizes.size, dtype=np.int64)
    owner[components.ravel() - 1] = labels.ravel()
    largest = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    np.maximum.at(largest, owner, sizes)
    cell_sizes = np.bincount(labels.ravel())
    crumbs = sizes[sizes < largest[owner]]
    # sampling a warped cell can leave a few voxel-sized crumbs at junctions, nothing more
    assert crumbs.sum() <= 0.002 * labels.size
    assert crumbs.size == 0 or crumbs.max() <= 12
    big = cell_sizes[1:] > 200
    assert np.all(largest[1:][big] >= 0.95 * cell_sizes[1:][big])


def test_mean_cell_size_matches_preset_and_stem_cells_are_larger(tissue_2d):
    mean_area = {}
    for preset, (_, labels) in tissue_2d.items():
        inner = _interior_cells(labels)
        areas = np.bincount(labels.ravel())[inner]
        expected = np.pi / 4 * TISSUE_PRESETS[preset].cell_diameter ** 2
        assert 0.7 * expected < areas.mean() < 1.3 * expected, preset
        mean_area[preset] = areas.mean()
    assert mean_area["stem"] > 2.0 * mean_area["ovules"]


def test_ovule_cells_are_more_irregular_and_elongated_than_stem(tissue_2d):
    variation, elongation = {}, {}
    for preset, (_, labels) in tissue_2d.items():
        inner = set(_interior_cells(labels).tolist())
        props = [r for r in regionprops(labels) if r.label in inner]
        areas = np.array([r.area for r in props])
        variation[preset] = areas.std() / areas.mean()
        elongation[preset] = np.median(
            [r.axis_major_length / max(r.axis_minor_length, 1e-6) for r in props]
        )
    assert variation["ovules"] > variation["stem"]
    assert elongation["ovules"] > elongation["stem"] + 0.15


def test_stem_target_is_noisier_with_lower_wall_contrast_than_ovules():
    # The transfer target is the harder image (issue 9): fewer photons and dim, patchy walls
    # over a cytoplasm signal, so its walls stand out less from the noise than the source's.
    noise, cnr = {}, {}
    for preset in TISSUE_PRESETS:
        noisy, labels = make_tissue(SHAPE_2D, preset=preset, seed=5)
        clean, clean_labels = make_tissue(SHAPE_2D, preset=preset, seed=5, **NOISE_FREE)
        np.testing.assert_array_equal(labels, clean_labels)
        noise[preset] = (noisy - clean).std()
        far = ndi.distance_transform_edt(~find_boundaries(labels, mode="thick")) > 3
        cnr[preset] = _boundary_contrast(clean, labels) / noisy[far].std()
    assert noise["stem"] > 1.15 * noise["ovules"]
    assert cnr["ovules"] > 1.2 * cnr["stem"]


def test_tissue_is_deterministic_by_seed():
    image_a, labels_a = make_tissue((64, 80), preset="ovules", seed=11)
    image_b, labels_b = make_tissue((64, 80), preset="ovules", seed=11)
    image_c, labels_c = make_tissue((64, 80), preset="ovules", seed=12)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    assert not np.array_equal(labels_a, labels_c)
    assert not np.allclose(image_a, image_c)


def test_3d_cells_span_fewer_slices_by_the_anisotropy(tissue_3d):
    _, labels = tissue_3d["ovules"]
    anisotropy = TISSUE_PRESETS["ovules"].anisotropy
    boxes = ndi.find_objects(labels)
    ratios = []
    for cell in _interior_cells(labels):
        box = boxes[cell - 1]
        z, y, x = (s.stop - s.start for s in box)
        ratios.append(z * anisotropy / np.sqrt(y * x))
    # physical extent along z is about the in-plane extent, so slices ≈ extent / anisotropy
    assert 0.7 < np.median(ratios) < 1.4


def _gradient_energy(image, axis):
    # squared differences: a sheet blurred to width s keeps its jump but its energy falls as 1/s
    return (np.diff(image, axis=axis) ** 2).mean()


def test_point_spread_function_blurs_z_more_when_asked():
    # isotropic voxels and round cells, so only the PSF differs between the axes
    common = dict(
        voxel_size=(0.2, 0.2, 0.2), elongation=1.0, membrane_texture=0.0, **NOISE_FREE
    )
    iso, _ = make_tissue((40, 64, 64), preset="stem", seed=2, psf_sigma=(0.8, 0.8), **common)
    aniso, _ = make_tissue((40, 64, 64), preset="stem", seed=2, psf_sigma=(2.5, 0.8), **common)
    iso_ratio = _gradient_energy(iso, 0) / _gradient_energy(iso, 1)
    aniso_ratio = _gradient_energy(aniso, 0) / _gradient_energy(aniso, 1)
    assert 0.75 < iso_ratio < 1.33
    assert aniso_ratio < 0.7 * iso_ratio


def test_presets_blur_z_more_than_xy_in_physical_units():
    for preset in TISSUE_PRESETS.values():
        sigma_z, sigma_xy = preset.psf_sigma
        assert sigma_z * preset.anisotropy > 1.5 * sigma_xy
    assert TISSUE_PRESETS["ovules"].anisotropy != TISSUE_PRESETS["stem"].anisotropy


def test_nuclei_background_blobs_count_and_touching():
    image, labels = make_nuclei((256, 256), seed=4)
    assert image.dtype == np.float32 and labels.dtype == np.uint32
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # 0 = background, then 1..n
    n = ids.size - 1
    params = nuclei_params()
    target = params.fill_fraction * labels.size / (np.pi * params.radius**2)
    assert 0.5 * target < n <= target + 1
    assert image[labels > 0].mean() > image[labels == 0].mean() + 0.2
    assert 0.1 < (labels > 0).mean() < 0.5
    # some nuclei touch: a pixel of one nucleus next to a pixel of another
    left, right = labels[:, :-1], labels[:, 1:]
    assert np.any((left > 0) & (right > 0) & (left != right))
    assert int(connected_components(labels, background=0, connectivity=1).max()) <= n + 2


def test_nuclei_3d_and_determinism():
    image, labels = make_nuclei((16, 64, 64), seed=1)
    assert image.shape == labels.shape == (16, 64, 64)
    again, again_labels = make_nuclei((16, 64, 64), seed=1)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, again_labels)
    other, _ = make_nuclei((16, 64, 64), seed=2)
    assert not np.allclose(image, other)
    assert image[labels > 0].mean() > image[labels == 0].mean() + 0.15


@pytest.mark.parametrize(
    "call",
    [
        lambda: make_tissue((64, 64), preset="leaves"),
        lambda: make_tissue((64, 64), membrane_thicknes=3),
        lambda: make_tissue((2, 3, 64, 64)),
        lambda: make_tissue((4, 4)),
        lambda: make_tissue((64, 64), cell_diameter=1.0),
        lambda: make_nuclei((64, 64), radius_mean=5),
        lambda: sample_dataset("no_such_sample"),
    ],
)
def test_bad_requests_raise_actionable_errors(call):
    with pytest.raises(SpocoInputError):
        call()


@pytest.mark.parametrize("name", ["tissue_2d", "nuclei_2d", "stardist_2d", "stardist_3d"])
def test_sample_dataset_partial_labels_are_whole_objects_of_the_ground_truth(name):
    if name not in available_datasets():
        pytest.skip(f"{name} files are not installed")
    sample = sample_dataset(name, fraction=0.1, seed=0)
    image, labels, partial = sample["image"], sample["labels"], sample["partial_labels"]
    assert image.shape == labels.shape == partial.shape
    assert len(sample["scale"]) == image.ndim
    background_id = sample["background_id"]
    if background_id is not None:
        # the background strokes lie on true background only, a few pixels from any object
        strokes = partial == background_id
        assert strokes.sum() > 50 and (labels[strokes] == 0).all()
        partial = np.where(strokes, 0, partial)
    else:
        assert not (labels == 0).any()
    painted = partial > 0
    np.testing.assert_array_equal(partial[painted], labels[painted])
    kept = np.unique(partial[painted])
    # each kept object is painted completely
    np.testing.assert_array_equal(np.isin(labels, kept), painted)
    n_objects = np.unique(labels[labels > 0]).size
    assert kept.size == int(np.floor(0.1 * n_objects + 0.5)) >= 2


def test_sample_data_providers_return_napari_layer_tuples():
    from napari_spoco import _sample_data

    for provider in ("tissue_2d", "nuclei_2d", "stardist_3d"):
        if provider == "stardist_3d" and "stardist_3d" not in available_datasets():
            continue
        layers = getattr(_sample_data, provider)()
        assert [layer_type for _, _, layer_type in layers] == ["image", "labels"]
        (image, image_kwargs, _), (labels, labels_kwargs, _) = layers
        assert image.shape == labels.shape
        assert labels.dtype.kind == "u" and 0 < np.count_nonzero(labels) < labels.size
        assert image_kwargs["name"] and labels_kwargs["name"] != image_kwargs["name"]
        assert len(image_kwargs["scale"]) == image.ndim


def test_sample_data_module_does_not_import_napari():
    code = "import sys, napari_spoco._sample_data; sys.exit('napari' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_napari_accepts_the_sample_layer_tuples():
    layers_module = pytest.importorskip("napari.layers")
    from napari_spoco import _sample_data

    for data, kwargs, layer_type in _sample_data.nuclei_2d():
        layer = layers_module.Layer.create(data, kwargs, layer_type)
        assert layer.data.shape == data.shape and layer.name == kwargs["name"]
