import numpy as np
import pytest
import tifffile

from napari_spoco.core import io
from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.io import read_array, write_array


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".npy", ".zarr", ".TIF"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(5 * 7, dtype=np.uint16).reshape(5, 7),
        np.random.default_rng(0).normal(size=(3, 4, 6)).astype(np.float32),
        (np.arange(4 * 5 * 6, dtype=np.uint64) * 2**40).reshape(4, 5, 6),
    ],
    ids=["uint16-2d", "float32-3d", "uint64-large-ids"],
)
def test_round_trip_keeps_values_dtype_and_shape(tmp_path, suffix, array):
    path = write_array(tmp_path / "sub" / f"a{suffix}", array)
    back = read_array(path)
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_tif_written_is_readable_by_tifffile(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_array(tmp_path / "a.tif", array)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"), array)


def test_lazy_zarr_read_returns_the_stored_array(tmp_path):
    array = np.arange(24, dtype=np.int32).reshape(4, 6)
    write_array(tmp_path / "a.zarr", array)
    lazy = read_array(tmp_path / "a.zarr", lazy=True)
    assert not isinstance(lazy, np.ndarray)
    np.testing.assert_array_equal(lazy[1:3, 2:5], array[1:3, 2:5])


def test_zarr_group_with_data_or_single_array(tmp_path):
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("data", data=np.ones((2, 3), np.uint8))
    group.create_array("other", data=np.zeros((2, 3), np.uint8))
    np.testing.assert_array_equal(read_array(tmp_path / "g.zarr"), np.ones((2, 3)))
    single = zarr.open_group(tmp_path / "s.zarr", mode="w")
    single.create_array("only", data=np.full((2, 2), 7, np.int16))
    np.testing.assert_array_equal(read_array(tmp_path / "s.zarr"), np.full((2, 2), 7))
    ambiguous = zarr.open_group(tmp_path / "m.zarr", mode="w")
    ambiguous.create_array("a", data=np.ones(2))
    ambiguous.create_array("b", data=np.ones(2))
    with pytest.raises(SpocoInputError, match="holds 2 arrays"):
        read_array(tmp_path / "m.zarr")


@pytest.mark.parametrize("name", ["a.png", "a.h5", "noext"])
def test_unknown_suffix_is_an_error_naming_the_known_ones(tmp_path, name):
    for call in (lambda: read_array(tmp_path / name), lambda: write_array(tmp_path / name, [1])):
        with pytest.raises(SpocoInputError, match=r"unknown file type.*\.tif.*\.npy.*\.zarr"):
            call()


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(SpocoInputError, match="does not exist"):
        read_array(tmp_path / "missing.npy")


@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_write_leaves_only_the_final_file(tmp_path, suffix):
    write_array(tmp_path / f"a{suffix}", np.zeros((3, 3)))
    write_array(tmp_path / f"a{suffix}", np.ones((3, 3)))  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == [f"a{suffix}"]
    np.testing.assert_array_equal(read_array(tmp_path / f"a{suffix}"), np.ones((3, 3)))


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "a.npy"
    write_array(target, np.arange(4))

    def broken_save(fh, array, allow_pickle=False):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_array(target, np.zeros(4))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]
    np.testing.assert_array_equal(read_array(target), np.arange(4))


def test_zarr_can_be_overwritten_with_another_shape(tmp_path):
    write_array(tmp_path / "a.zarr", np.zeros((3, 3)))
    write_array(tmp_path / "a.zarr", np.ones((4, 5), np.uint8))
    back = read_array(tmp_path / "a.zarr")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, np.ones((4, 5)))
