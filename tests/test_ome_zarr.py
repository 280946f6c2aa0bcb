"""OME-Zarr images and labels, lazy TIFF, and voxel size deciding anisotropy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_spoco.cli import main
from napari_spoco.core import run_defaults as rd
from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.io import check_output, read_array, write_array
from napari_spoco.core.ome_zarr import read_ome_image, read_pyramid, read_voxel_size
from napari_spoco.core.segmentation import segmentation_settings
from test_cli_inference import tiny_checkpoint


def ome_image(path, image, axes="yx", scale=None, fmt_version="0.5"):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV05() if fmt_version == "0.5" else FormatV04()
    group = zarr.open_group(str(path), mode="w", zarr_format=3 if fmt_version == "0.5" else 2)
    write_image(image, group, axes=axes, scale_factors=(2,), fmt=fmt,
                scale=None if scale is None else dict(zip(axes, scale)))
    return Path(path)


def digests(folder: Path) -> dict:
    """Content hash of every file in ``folder`` outside ``labels/``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()
            and p.relative_to(folder).parts[0] != "labels"}


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_an_ome_zarr_image_reads_as_level_0_with_voxel_size_and_pyramid(tmp_path, version):
    image = np.random.default_rng(0).random((2, 6, 32, 40), dtype=np.float32)
    path = ome_image(tmp_path / "a.ome.zarr", image, "czyx", (1.0, 2.0, 0.5, 0.5), version)
    np.testing.assert_array_equal(read_array(path), image)
    assert not isinstance(read_array(path, lazy=True), np.ndarray)
    ome = read_ome_image(path)
    assert ome.axes == ("c", "z", "y", "x") and ome.channel_axis == 0
    assert ome.voxel_size == (2.0, 0.5, 0.5) == read_voxel_size(path)
    assert [level.shape for level in ome.levels] == [(2, 6, 32, 40), (2, 6, 16, 20)]
    assert [level.shape for level in read_pyramid(path)] == [(2, 6, 32, 40), (2, 6, 16, 20)]


def test_singleton_time_and_channel_axes_are_dropped_lazily(tmp_path):
    image = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(1, 1, 4, 16, 16)
    path = ome_image(tmp_path / "t.ome.zarr", image, "tczyx", (1, 1, 3.0, 1.0, 1.0))
    lazy = read_array(path, lazy=True)
    assert lazy.shape == (4, 16, 16) and lazy.dtype == np.uint16
    np.testing.assert_array_equal(lazy[1, 2:5], image[0, 0, 1, 2:5])
    np.testing.assert_array_equal(lazy[..., 3], image[0, 0, ..., 3])
    np.testing.assert_array_equal(read_array(path), image[0, 0])


def test_segment_writes_ome_labels_beside_the_image_read_back_by_ome_zarr(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    image = np.random.default_rng(1).normal(100, 20, (45, 38)).astype(np.float32)
    path = ome_image(tmp_path / "img.ome.zarr", image, "yx", (0.5, 0.5))
    before = digests(path)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    out = path / "labels" / "spoco"
    assert main(["segment", "--checkpoint", str(ckpt), "--image", str(path), "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    plain = tmp_path / "plain.npy"
    write_array(tmp_path / "image.npy", image)
    assert main(["segment", "--checkpoint", str(ckpt), "--image", str(tmp_path / "image.npy"),
                 "--out", str(plain), "--device", "cpu", "--no-progress"]) == 0
    assert digests(path) == before  # the image's arrays and metadata are untouched
    assert not list((path / "labels").glob(".*tmp*"))
    nodes = [n for n in Reader(parse_url(str(out)))() if n.load(Label)]
    assert len(nodes) == 1
    label = nodes[0]
    np.testing.assert_array_equal(np.asarray(label.data[0]), np.load(plain))
    meta = label.metadata
    assert [a["name"] for a in meta["axes"]] == ["y", "x"]
    assert meta["coordinateTransformations"][0][0]["scale"] == [0.5, 0.5]
    labels_group = zarr.open_group(str(path / "labels"), mode="r")
    assert labels_group.attrs["ome"]["labels"] == ["spoco"]
    assert "image-label" in zarr.open_group(str(out), mode="r").attrs["ome"]
    # a second run must not replace the labels silently
    with pytest.raises(SpocoInputError, match="already exists"):
        check_output(out, [("--image", path)])


def test_labels_target_is_refused_when_it_is_an_input(tmp_path):
    path = ome_image(tmp_path / "i.ome.zarr", np.zeros((16, 16), np.float32))
    out = path / "labels" / "spoco"
    check_output(out, [("--image", path)])  # beside the image: allowed
    with pytest.raises(SpocoInputError, match="same file as --mask"):
        check_output(out, [("--mask", out / "0")])
    with pytest.raises(SpocoInputError, match="spatial shape"):
        write_array(out, np.zeros((8, 8), np.uint32))
    assert not out.exists()


def test_bad_ome_zarr_inputs_are_explained(tmp_path):
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    group.create_array("a", shape=(4, 4), dtype="f4")
    group.create_array("b", shape=(4, 4), dtype="f4")
    with pytest.raises(SpocoInputError, match="holds 2 arrays"):
        read_array(tmp_path / "two.zarr")
    bad = ome_image(tmp_path / "bad.ome.zarr", np.zeros((4, 16, 16), np.float32), "zyx")
    meta = zarr.open_group(str(bad), mode="r+")
    ome = dict(meta.attrs["ome"])
    ome["multiscales"][0]["axes"][0] = {"name": "q", "type": "space"}
    meta.attrs["ome"] = ome
    with pytest.raises(SpocoInputError, match="axis 'q'"):
        read_array(bad)
    series = ome_image(tmp_path / "t.ome.zarr", np.zeros((3, 8, 16, 16), np.float32), "tzyx")
    with pytest.raises(SpocoInputError, match="time series"):
        read_array(series)
    assert main(["segment", "--checkpoint", str(tiny_checkpoint(tmp_path / "m.pt")),
                 "--image", str(bad), "--out", str(tmp_path / "o.npy")]) == 2


def test_tiff_reads_lazily_one_page_at_a_time(tmp_path, monkeypatch):
    stack = np.random.default_rng(0).integers(0, 255, (20, 64, 48), dtype=np.uint8)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    lazy = read_array(path, lazy=True)
    assert isinstance(lazy, zarr.Array) and lazy.shape == stack.shape
    read = []
    original = tifffile.FileHandle.read

    def counting(self, size=-1):
        read.append(size)
        return original(self, size)

    monkeypatch.setattr(tifffile.FileHandle, "read", counting)
    np.testing.assert_array_equal(lazy[7], stack[7])
    assert 0 < sum(read) <= 2 * 64 * 48  # about one page, not the 20 of the stack
    np.testing.assert_array_equal(read_array(path), stack)  # eager read unchanged


def test_voxel_size_from_imagej_tiff_decides_anisotropy(tmp_path):
    stack = np.zeros((40, 64, 64), np.float32)  # not thin by shape
    path = tmp_path / "coarse.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.5, "axes": "ZYX"})
    assert read_voxel_size(path) == (1.5, 0.5, 0.5)
    assert rd.default_anisotropic([stack.shape], [read_voxel_size(path)])
    assert not rd.default_anisotropic([stack.shape])
    assert read_voxel_size(tmp_path / "x.npy") is None
    # mws settings follow the image's voxel size when known, the checkpoint's otherwise
    config = {"anisotropic": False}
    assert segmentation_settings(config, ndim=3, spacing=(3, 1, 1)).params["anisotropic"]
    assert "anisotropic" not in segmentation_settings(config, ndim=3, spacing=(1, 1, 1)).params
    assert "anisotropic" not in segmentation_settings(config, ndim=3,
                                                      spacing=(0.5, 0.5, 0.5)).params


def test_voxel_size_rule():
    assert rd.default_anisotropic([(48, 64, 64)], [(2.0, 1.0, 1.0)])  # ratio 2: thin
    assert not rd.default_anisotropic([(48, 64, 64)], [(1.9, 1.0, 1.0)])
    assert not rd.default_anisotropic([(12, 64, 64)], [(0.3, 0.3, 0.3)])  # isotropic voxels
    assert rd.default_anisotropic([(12, 64, 64)], [(1, 1, 1)])  # ones: unknown, shape rule
    # one known, one guessed: every stack must be thin
    assert not rd.default_anisotropic([(12, 64, 64), (48, 64, 64)], [None, (1, 1, 1)])
    assert rd.resolve_run_settings([(48, 64, 64)], "cpu", spacings=[(4, 1, 1)]).anisotropic
