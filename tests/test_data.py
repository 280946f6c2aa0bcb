import json
import sys
import threading

import numpy as np
import pytest
import tifffile
import torch

import napari_spoco.core.training.data as data_module
from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.model.normalization import Normalization
from napari_spoco.core.training.data import TrainingData, validate_pair
from napari_spoco.core.training.sampling import subsample_objects

DATA = "tests/data/stardist"


@pytest.fixture(scope="module")
def stardist2d():
    return tifffile.imread(f"{DATA}/img2d.tif"), tifffile.imread(f"{DATA}/mask2d.tif")


@pytest.fixture(scope="module")
def stardist3d():
    return tifffile.imread(f"{DATA}/img3d.tif"), tifffile.imread(f"{DATA}/mask3d.tif")


def _noise(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# -- normalisation ---------------------------------------------------------------------------


def test_normalization_fit_pools_all_pixels_per_channel():
    a = np.random.default_rng(0).normal([1, 50, -3], [2, 10, 0.5], (40, 30, 3))
    b = np.random.default_rng(1).normal([4, 20, -3], [1, 5, 0.5], (25, 20, 3))
    norm = Normalization.fit([a, b], channel_axis=-1)
    pooled = np.concatenate([a.reshape(-1, 3), b.reshape(-1, 3)])
    np.testing.assert_allclose(norm.mean, pooled.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(norm.std, pooled.std(axis=0), rtol=1e-10)
    out = norm.apply(a, channel_axis=-1)
    assert out.dtype == np.float32 and out.shape == a.shape
    both = np.concatenate([out.reshape(-1, 3), norm.apply(b, -1).reshape(-1, 3)])
    np.testing.assert_allclose(both.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(both.std(axis=0), 1, atol=1e-5)


def test_normalization_is_stable_far_from_zero():
    image = 1e7 + np.random.default_rng(0).normal(size=(100, 100))
    norm = Normalization.fit([image[:50], image[50:]])
    assert norm.std[0] == pytest.approx(image.std(), rel=1e-6)


def test_normalization_subsamples_huge_images_deterministically():
    y, x = np.indices((600, 700))
    image = np.sin(y / 37.0) * 5 + x / 70.0
    norm = Normalization.fit([image], max_pixels=10_000)
    assert norm == Normalization.fit([image], max_pixels=10_000)
    assert norm.mean[0] == pytest.approx(image.mean(), abs=0.05)
    assert norm.std[0] == pytest.approx(image.std(), rel=0.02)


def test_normalization_constant_channel_maps_to_zero():
    image = np.stack([np.full((8, 8), 7.0), np.arange(64.0).reshape(8, 8)])
    out = Normalization.fit([image], channel_axis=0).apply(image, channel_axis=0)
    assert np.isfinite(out).all() and np.all(out[0] == 0)


def test_normalization_dict_round_trip_and_errors():
    norm = Normalization((1.5, -2.0), (3.0, 0.25))
    assert Normalization.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm
    with pytest.raises(SpocoInputError):
        Normalization.from_dict({"mean": [1.0]})
    with pytest.raises(SpocoInputError):
        Normalization((1.0, 2.0), (1.0,))
    with pytest.raises(SpocoInputError, match="2 channel"):
        norm.apply(np.zeros((4, 4)))


# -- SPOCO@p ---------------------------------------------------------------------------------


def test_subsample_objects_keeps_rounded_fraction_of_whole_objects():
    labels = np.repeat(np.arange(11, dtype=np.uint16), 7).reshape(7, 11) * 3  # ids 3..30
    out = subsample_objects(labels, 0.35, seed=4)
    kept = set(np.unique(out)) - {0}
    assert len(kept) == 4  # round half up of 0.35 * 10 = 3.5
    assert kept <= set(np.unique(labels))
    assert out.dtype == labels.dtype
    for i in np.unique(labels):
        assert np.all(out[labels == i] == (i if i in kept else 0))


def test_subsample_objects_is_seeded_and_respects_keep_ids(stardist2d):
    mask = stardist2d[1]
    ids = set(np.unique(mask)) - {0}
    a = subsample_objects(mask, 0.1, seed=1)
    assert np.array_equal(a, subsample_objects(mask, 0.1, seed=1))
    assert not np.array_equal(a, subsample_objects(mask, 0.1, seed=2))
    assert len(set(np.unique(a)) - {0}) == int(np.floor(0.1 * len(ids) + 0.5))
    keep = max(ids)
    b = subsample_objects(mask, 0.0, seed=1, keep_ids=[keep])
    assert set(np.unique(b)) == {0, keep}
    full = subsample_objects(mask, 1.0, seed=1, keep_ids=[keep])
    assert np.array_equal(full, mask)


def test_clustered_subsample_keeps_a_compact_group_of_neighbours():
    # a 10 x 10 grid of 4 x 4 squares, ids 1..100 (row-major) plus a kept background id 500
    grid = np.arange(1, 101).reshape(10, 10)
    labels = np.kron(grid, np.ones((4, 4), dtype=int))
    labels[:2, :2] = 500
    out = subsample_objects(labels, 0.09, seed=3, placement="clustered", keep_ids=[500])
    kept = sorted(set(np.unique(out)) - {0, 500})
    assert len(kept) == 9
    rows, cols = np.divmod(np.array(kept) - 1, 10)
    # nine nearest squares to one square: a 3 x 3 block (or its clipped version at an edge)
    assert rows.max() - rows.min() <= 3 and cols.max() - cols.min() <= 3
    assert np.all(out[labels == 500] == 500)
    assert np.array_equal(out, subsample_objects(labels, 0.09, 3, [500], "clustered"))
    spread = [subsample_objects(labels, 0.09, s, [500], "random") for s in range(5)]
    # random draws of nine squares spread wider than the clustered one
    widths = [np.ptp(np.divmod(np.array(sorted(set(np.unique(o)) - {0, 500})) - 1, 10)[0])
              for o in spread]
    assert max(widths) > rows.max() - rows.min()


def test_subsample_objects_rejects_unknown_placement():
    with pytest.raises(SpocoInputError, match="random.*clustered"):
        subsample_objects(np.ones((3, 3), int), 0.5, 0, placement="grid")


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_subsample_objects_rejects_bad_fraction(fraction):
    with pytest.raises(SpocoInputError, match=r"\[0, 1\]"):
        subsample_objects(np.ones((3, 3), int), fraction, 0)


# -- validation ------------------------------------------------------------------------------


def _labels(shape=(16, 16)):
    labels = np.zeros(shape, np.uint16)
    labels[(slice(2, 6),) * len(shape)] = 4
    return labels


@pytest.mark.parametrize(
    "image, labels, ndim, channel_axis, match",
    [
        (_noise((16, 16)), _labels((16, 12)), 2, None, r"\(16, 12\).*\(16, 16\)"),
        (_noise((3, 16, 16)), _labels(), 2, None, r"\(Y, X\).*channel_axis.*3D model"),
        (_noise((16, 16)), _labels(), 3, None, r"\(Z, Y, X\).*2D model"),
        (_noise((16, 16)), _labels(), 2, 0, "channel_axis=None"),
        (_noise((16, 16)), _labels(), 2, 5, "channel_axis=5 does not exist"),
        (_noise((16, 16)), _labels() > 0, 2, None, "boolean mask"),
        (_noise((16, 16)), _labels() * 0.3, 2, None, "non-integer"),
        (_noise((16, 16)), _labels().astype(np.int32) - 1, 2, None, "negative"),
        (np.where(_labels() > 0, np.nan, _noise((16, 16))), _labels(), 2, None, "NaN"),
        (np.full((16, 16), np.inf), _labels(), 2, None, "infinite"),
        (np.full((16, 16), 3, np.uint8), _labels(), 2, None, "constant"),
        (_noise((16, 16)).astype(complex), _labels(), 2, None, "real numbers"),
    ],
)
def test_validate_pair_errors(image, labels, ndim, channel_axis, match):
    with pytest.raises(SpocoInputError, match=match):
        validate_pair(image, labels, ndim, channel_axis)


def test_validate_pair_accepts_integral_float_labels_and_channels():
    labels = validate_pair(_noise((16, 16, 2)), _labels().astype(np.float32), 2, -1)
    assert labels.dtype == np.int64 and np.array_equal(labels, _labels())
    big_ids = _labels().astype(np.uint64) * np.uint64(2**40)
    assert validate_pair(_noise((16, 16)), big_ids, 2) is big_ids
    volume = _labels((4, 16, 16))
    assert validate_pair(_noise((2, 4, 16, 16)), volume, 3, channel_axis=0) is volume
    with pytest.raises(SpocoInputError, match="beyond int64"):
        validate_pair(_noise((16, 16)), np.where(big_ids > 0, np.uint64(2**63 + 5), 0), 2)


def test_training_data_requires_some_labeled_pixel():
    empty = np.zeros((16, 16), np.uint8)
    with pytest.raises(SpocoInputError, match="paint at least one object"):
        TrainingData([(_noise((16, 16)), empty), (_noise((16, 16), 1), empty)], 2)
    # One labeled pair is enough; unlabeled pairs still give unlabeled pixels.
    data = TrainingData([(_noise((16, 16)), empty), (_noise((16, 16), 1), _labels())], 2)
    assert data.objects_per_pair() == [0, 1]


def test_training_data_names_the_bad_pair():
    with pytest.raises(SpocoInputError, match="Training pair 1"):
        TrainingData([(_noise((16, 16)), _labels()), (_noise((16, 16)), _labels((8, 8)))], 2)


# -- sampling --------------------------------------------------------------------------------


def test_sample_batch_shapes_and_labeled_patch_preference(stardist2d):
    image, mask = stardist2d
    sparse = subsample_objects(mask, 0.1, seed=0)
    data = TrainingData([(image, sparse)], ndim=2, patch_shape=(48, 48))
    assert data.ndim == 2 and data.in_channels == 1 and data.patch_shape == (48, 48)
    x_f, x_g, labels = data.sample_batch(40, np.random.default_rng(0))
    assert x_f.shape == x_g.shape == (40, 1, 48, 48) and labels.shape == (40, 48, 48)
    assert x_f.dtype == x_g.dtype == torch.float32 and labels.dtype == torch.int64
    assert not torch.equal(x_f, x_g)
    with_labels = (labels.flatten(1) > 0).any(dim=1).float().mean()
    assert with_labels >= 0.8
    # Uniform crops alone find labels far less often on this sparse image.
    uniform = TrainingData([(image, sparse)], 2, patch_shape=(48, 48), labeled_fraction=0.0)
    _, _, labels = uniform.sample_batch(40, np.random.default_rng(0))
    assert (labels.flatten(1) > 0).any(dim=1).float().mean() < with_labels
    assert set(torch.unique(labels).tolist()) <= set(np.unique(sparse).tolist())


def test_unaugmented_full_patch_is_the_normalised_image_with_channels_last():
    image = np.random.default_rng(0).normal([10, 0, -5], [1, 2, 3], (20, 24, 3))
    labels = _labels((20, 24))
    data = TrainingData([(image, labels)], 2, channel_axis=-1, patch_shape=(64, 64),
                        augment=False)
    assert data.patch_shape == (20, 24) and data.in_channels == 3
    x_f, x_g, out_labels = data.sample_batch(2, 0)
    expected = (image - image.mean(axis=(0, 1))) / image.std(axis=(0, 1))
    np.testing.assert_allclose(x_f[0].numpy(), np.moveaxis(expected, -1, 0), atol=1e-5)
    assert torch.equal(x_f, x_g)
    np.testing.assert_array_equal(out_labels[1].numpy(), labels)


def test_sampling_3d_stardist(stardist3d):
    image, mask = stardist3d
    data = TrainingData([(image, subsample_objects(mask, 0.2, 0))], 3, patch_shape=(32, 32, 32))
    assert data.patch_shape == (31, 32, 32) and not data.anisotropic
    x_f, x_g, labels = data.sample_batch(3, 1)
    assert x_f.shape == (3, 1, 31, 32, 32) and labels.shape == (3, 31, 32, 32)
    thin = TrainingData([(_noise((8, 40, 40)), _labels((8, 40, 40)))], 3)
    assert thin.anisotropic and thin.patch_shape == (8, 40, 40)


def test_same_seed_same_batch(stardist2d):
    image, mask = stardist2d
    data = TrainingData([(image, subsample_objects(mask, 0.2, 0))], 2, patch_shape=(64, 64),
                        augment={"elastic_probability": 0.5})
    first = data.sample_batch(4, np.random.default_rng(7))
    second = data.sample_batch(4, np.random.default_rng(7))
    other = data.sample_batch(4, np.random.default_rng(8))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])


def test_patch_is_clipped_to_the_smallest_image():
    pairs = [(_noise((30, 80)), _labels((30, 80))), (_noise((50, 40), 1), _labels((50, 40)))]
    data = TrainingData(pairs, 2)
    assert data.patch_shape == (30, 40)
    assert data.sample_batch(5, 0)[0].shape == (5, 1, 30, 40)


def test_set_labels_replaces_what_is_sampled():
    image = _noise((32, 32))
    before = np.zeros((32, 32), np.uint32)
    before[2:8, 2:8] = 5
    data = TrainingData([(image, before)], 2, patch_shape=(16, 16))
    after = np.zeros((32, 32), np.uint32)
    after[20:30, 20:30] = 9
    after[2:4, 25:28] = 11
    before[:] = 0  # painting into the caller's array does not reach the sampler
    assert 5 in data.sample_batch(8, 0)[2]
    data.set_labels(0, after)
    assert data.objects_per_pair() == [2]
    ids = set(torch.unique(data.sample_batch(16, 0)[2]).tolist())
    assert 5 not in ids and 9 in ids
    with pytest.raises(SpocoInputError, match="paint at least one object"):
        data.set_labels(0, np.zeros((32, 32), np.uint8))
    with pytest.raises(SpocoInputError, match=r"\(16, 16\)"):
        data.set_labels(0, np.ones((16, 16), np.uint8))
    assert data.objects_per_pair() == [2]


def test_set_labels_from_another_thread_never_mixes_labels_in_a_batch():
    image = _noise((64, 64))
    versions = []
    for value in (5, 9):
        labels = np.zeros((64, 64), np.int64)
        labels[::4, ::4] = value  # every patch sees the object
        versions.append(labels)
    data = TrainingData([(image, versions[0])], 2, patch_shape=(16, 16), augment=False)
    stop = threading.Event()

    def repaint():
        i = 0
        while not stop.is_set():
            i += 1
            data.set_labels(0, versions[i % 2])

    painter = threading.Thread(target=repaint)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so a race would show
    painter.start()
    try:
        for seed in range(40):
            ids = set(torch.unique(data.sample_batch(32, seed)[2]).tolist()) - {0}
            assert ids in ({5}, {9})
    finally:
        stop.set()
        painter.join()
        sys.setswitchinterval(interval)


def test_objects_per_pair_counts_background_and_skips_ignore():
    labels = np.zeros((20, 20), np.uint16)
    labels[:3] = 50  # painted background
    labels[5:8, 5:8] = 1
    labels[10:12, 10:15] = 2
    labels[15:18, 0:4] = 99  # ignored
    sparse = TrainingData([(_noise((20, 20)), labels)], 2, background_id=50, ignore_id=99)
    assert sparse.objects_per_pair() == [3]
    assert sparse.objects_per_pair(include_background=False) == [2]
    dense = TrainingData([(_noise((20, 20)), labels)], 2, mode="dense", ignore_id=99)
    assert dense.objects_per_pair() == [4]  # 0, 1, 2, 50
    assert dense.objects_per_pair(include_background=False) == [3]
    with pytest.raises(SpocoInputError, match="background_id=0"):
        TrainingData([(_noise((20, 20)), labels)], 2, background_id=0)


def test_lazy_zarr_pairs_sample_like_numpy(tmp_path, monkeypatch):
    zarr = pytest.importorskip("zarr")
    image = np.random.default_rng(0).normal(5, 2, (2, 40, 50)).astype(np.float32)
    labels = _labels((40, 50))
    stored_image = zarr.create_array(tmp_path / "i.zarr", shape=image.shape, dtype=image.dtype,
                                     chunks=(1, 16, 16))
    stored_image[...] = image
    stored_labels = zarr.create_array(tmp_path / "l.zarr", shape=labels.shape,
                                      dtype=labels.dtype, chunks=(16, 16))
    stored_labels[...] = labels
    monkeypatch.setattr(data_module, "LAZY_BYTES", 0)
    lazy = TrainingData([(stored_image, stored_labels)], 2, channel_axis=0, patch_shape=(24, 24))
    assert not isinstance(lazy._images[0], np.ndarray)
    eager = TrainingData([(image, labels)], 2, channel_axis=0, patch_shape=(24, 24))
    np.testing.assert_allclose(lazy.normalization.mean, eager.normalization.mean, rtol=1e-6)
    for a, b in zip(lazy.sample_batch(3, 2), eager.sample_batch(3, 2)):
        torch.testing.assert_close(a, b)


def test_given_normalization_must_match_channels():
    with pytest.raises(SpocoInputError, match="channel"):
        TrainingData([(_noise((16, 16)), _labels())], 2,
                     normalization=Normalization((0.0, 0.0), (1.0, 1.0)))
