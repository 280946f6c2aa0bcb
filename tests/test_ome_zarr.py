"""OME-Zarr images and labels, lazy TIFF, and voxel size deciding anisotropy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from test_cli_inference import tiny_checkpoint

from napari_spoco.cli import build_parser, main
from napari_spoco.cli.predict import read_image, resolve_channel_axis
from napari_spoco.core import run_defaults as rd
from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.inference.segmentation import segmentation_settings
from napari_spoco.core.io import check_output, read_array, write_array
from napari_spoco.core.ome_zarr import (
    channel_axis_from_metadata,
    read_ome_image,
    read_pyramid,
    read_voxel_size,
)


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


def tiny_3d_checkpoint(path, in_channels, image):
    """A 3D network as small as ``tiny_checkpoint``'s 2D one (no training run's channel axis)."""
    import torch

    from napari_spoco.core.model.checkpoint import save_checkpoint
    from napari_spoco.core.model.normalization import Normalization
    from napari_spoco.core.model.unet import UNet

    torch.manual_seed(0)
    model = UNet(in_channels, 4, 3, features=(4, 8), norm="group", num_groups=2)
    return save_checkpoint(path, {
        "architecture": model.config, "model_state": model.state_dict(),
        "momentum_state": model.state_dict(),
        "normalization": Normalization.fit([image], 0).to_dict(),
        "config": {"channel_axis": None, "loss": {"delta_v": 0.5, "delta_d": 2.0}},
    })


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_the_ome_channel_axis_is_the_cli_channel_axis_without_the_option(tmp_path, version):
    from napari_spoco.core.inference.prediction import predict_from_checkpoint
    from napari_spoco.core.model.checkpoint import load_model

    image = np.random.default_rng(2).normal(100, 20, (2, 24, 20)).astype(np.float32)
    path = ome_image(tmp_path / "two.ome.zarr", image, "cyx", fmt_version=version)
    # the training run put channels last: without the metadata, axis -1 (x) would be guessed
    ckpt = tiny_checkpoint(tmp_path / "m.pt", in_channels=2, channel_axis=-1,
                           image=np.moveaxis(image, 0, -1))
    args = build_parser().parse_args(["predict", "--checkpoint", str(ckpt), "--image",
                                      str(path), "--out", str(tmp_path / "e.npy")])
    loaded = load_model(str(ckpt), "cpu")
    assert resolve_channel_axis(args, read_image(path).shape, loaded) == 0
    args.image = str(tmp_path / "plain.npy")  # no metadata: the training run's axis, as before
    assert resolve_channel_axis(args, image.shape, loaded) == -1
    assert main(["predict", "--checkpoint", str(ckpt), "--image", str(path), "--out",
                 str(tmp_path / "e.npy"), "--device", "cpu", "--no-progress"]) == 0
    expected = predict_from_checkpoint(ckpt, image, channel_axis=0, device="cpu")
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected, atol=1e-6)
    assert main(["segment", "--checkpoint", str(ckpt), "--image", str(path), "--out",
                 str(path / "labels" / "cells"), "--device", "cpu", "--no-progress"]) == 0
    assert read_array(path / "labels" / "cells").shape == (24, 20)


def test_a_czyx_ome_image_predicts_with_its_channel_axis_and_refuses_another(tmp_path, capsys):
    image = np.random.default_rng(3).normal(100, 20, (2, 8, 16, 16)).astype(np.float32)
    path = ome_image(tmp_path / "vol.ome.zarr", image, "czyx", (1, 2.0, 0.5, 0.5))
    ckpt = tiny_3d_checkpoint(tmp_path / "m3.pt", 2, image)
    common = ["--checkpoint", str(ckpt), "--image", str(path), "--device", "cpu",
              "--no-progress"]
    # without metadata a 4-axis image for a 3D model with no trained axis needs the option
    assert main(["predict", *common, "--out", str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy").shape == (4, 8, 16, 16)
    assert main(["predict", *common, "--out", str(tmp_path / "f.npy"),
                 "--channel-axis", "-4"]) == 0  # the same axis, counted from the end
    capsys.readouterr()
    assert main(["predict", *common, "--out", str(tmp_path / "g.npy"),
                 "--channel-axis", "1"]) == 2
    err = capsys.readouterr().err
    assert "--channel-axis 1 contradicts the OME metadata" in err
    assert "axis 1 is 'z'" in err and "its channel axis is 0 (c, 2 channels)" in err
    assert not (tmp_path / "g.npy").exists()


def test_channel_axis_from_metadata_names_both_axes(tmp_path):
    one = ome_image(tmp_path / "one.ome.zarr", np.zeros((1, 8, 16), np.float32), "cyx")
    assert channel_axis_from_metadata(one) is None  # a single channel is no channel axis
    with pytest.raises(SpocoInputError, match="axis 0 is 'y'.*has no channel axis"):
        channel_axis_from_metadata(one, given=0)
    write_array(tmp_path / "p.npy", np.zeros((2, 8, 8), np.float32))
    assert channel_axis_from_metadata(tmp_path / "p.npy", given=2) == 2  # not OME: as given
    # NGFF lets a channel axis have any name: its type makes it the channel axis
    named = ome_image(tmp_path / "ch.ome.zarr", np.zeros((3, 8, 16), np.float32), "cyx")
    group = zarr.open_group(str(named), mode="r+")
    ome = dict(group.attrs["ome"])
    ome["multiscales"][0]["axes"][0] = {"name": "ch", "type": "channel"}
    group.attrs["ome"] = ome
    assert read_ome_image(named).axes == ("c", "y", "x")
    assert channel_axis_from_metadata(named) == 0


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_adding_labels_keeps_the_list_and_other_keys(tmp_path, version):
    path = ome_image(tmp_path / "i.ome.zarr", np.zeros((16, 12), np.float32), "yx",
                     fmt_version=version)
    write_array(path / "labels" / "first", np.ones((16, 12), np.uint32))
    group = zarr.open_group(str(path / "labels"), mode="r+")
    group.attrs["note"] = "written by another tool"
    write_array(path / "labels" / "second", np.full((16, 12), 2, np.uint32))
    attrs = dict(zarr.open_group(str(path / "labels"), mode="r").attrs)
    listed = attrs["ome"]["labels"] if version == "0.5" else attrs["labels"]
    assert listed == ["first", "second"] and attrs["note"] == "written by another tool"
    np.testing.assert_array_equal(read_array(path / "labels" / "second"), 2)
    assert not [p.name for p in (path / "labels").iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_a_failed_labels_list_write_leaves_the_old_metadata_byte_identical(tmp_path, version,
                                                                          monkeypatch):
    from napari_spoco.core import ome_zarr

    path = ome_image(tmp_path / "i.ome.zarr", np.zeros((16, 12), np.float32), "yx",
                     fmt_version=version)
    write_array(path / "labels" / "first", np.ones((16, 12), np.uint32))
    metadata = path / "labels" / ("zarr.json" if version == "0.5" else ".zattrs")
    before = metadata.read_bytes()
    assert b"first" in before

    def crash(target, text):  # half the new file written, then the disk is full
        Path(target).write_text(text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ome_zarr, "_write_text", crash)
    with pytest.raises(OSError, match="No space left"):
        write_array(path / "labels" / "second", np.full((16, 12), 2, np.uint32))
    assert metadata.read_bytes() == before
    # no temporary file is left behind (the label image itself was already in place)
    assert {p.name for p in (path / "labels").iterdir()} == {
        metadata.name, "first", "second", "zarr.json" if version == "0.5" else ".zgroup"}


def test_the_napari_reader_opens_an_ome_image_with_its_channels_and_labels(tmp_path):
    from napari.layers import Image, Labels

    from napari_spoco._reader import get_reader, read_ome_zarr

    image = np.random.default_rng(4).random((2, 6, 32, 40), dtype=np.float32)
    path = ome_image(tmp_path / "a.ome.zarr", image, "czyx", (1, 2.0, 0.5, 0.5))
    write_array(path / "labels" / "cells", np.ones((6, 32, 40), np.uint32))
    assert get_reader(str(path)) is read_ome_zarr
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("data", shape=(4, 4), dtype="f4")
    assert get_reader(str(tmp_path / "plain.zarr")) is None  # not OME: napari's own reader
    (data, kwargs, kind), (labels, label_kwargs, label_kind) = read_ome_zarr(str(path))
    assert kind == "image" and label_kind == "labels"
    assert kwargs["metadata"]["channel_axis"] == 0 and kwargs["scale"] == (1.0, 2.0, 0.5, 0.5)
    layer = Image(data, **kwargs)  # one layer holding both channels: the dock's "first axis"
    assert layer.multiscale and layer.data[0].shape == (2, 6, 32, 40)
    np.testing.assert_array_equal(np.asarray(layer.data[0][1, 2]), image[1, 2])
    labels_layer = Labels(labels, **label_kwargs)
    assert label_kwargs["scale"] == (2.0, 0.5, 0.5) and labels_layer.data.shape == (6, 32, 40)


def test_training_images_share_the_channel_axis_of_their_metadata(tmp_path):
    from napari_spoco.core.ome_zarr import common_channel_axis

    two = ome_image(tmp_path / "two.ome.zarr", np.zeros((2, 8, 16), np.float32), "cyx")
    again = ome_image(tmp_path / "again.ome.zarr", np.zeros((2, 12, 8), np.float32), "cyx")
    gray = ome_image(tmp_path / "gray.ome.zarr", np.zeros((12, 8), np.float32), "yx")
    plain = write_array(tmp_path / "p.npy", np.zeros((8, 8, 2), np.float32))
    assert common_channel_axis([two, again]) == 0
    assert common_channel_axis([plain], given=-1) == -1 and common_channel_axis([plain]) is None
    with pytest.raises(SpocoInputError, match="different axes.*two.ome.zarr.*0.*gray.*none"):
        common_channel_axis([two, gray])
    with pytest.raises(SpocoInputError, match="--channel-axis 2 contradicts"):
        common_channel_axis([two, again], given=2)


def test_training_on_a_cyx_ome_image_takes_its_channel_axis(tmp_path, capsys):
    from napari_spoco.core.model.checkpoint import load_checkpoint, load_model

    rng = np.random.default_rng(6)
    labels = np.zeros((40, 40), np.uint16)
    labels[4:14, 4:14], labels[20:30, 20:30] = 1, 2
    image = rng.normal(100, 10, (2, 40, 40)).astype(np.float32)
    image[1] += 50 * (labels > 0)  # the second channel shows the objects
    path = ome_image(tmp_path / "two.ome.zarr", image, "cyx")
    write_array(tmp_path / "labels.npy", labels)
    common = ["train", "--image", str(path), "--labels", str(tmp_path / "labels.npy"),
              "--features", "8", "16", "--batch-size", "1", "--patch-shape", "32", "32",
              "--device", "cpu", "--no-progress"]
    # without --channel-axis a (2, 40, 40) array would train as a 3D volume of 2 slices
    assert main([*common, "--iterations", "2", "--out", str(tmp_path / "m.pt")]) == 0
    saved = load_checkpoint(tmp_path / "m.pt")
    assert saved["config"]["channel_axis"] == 0 and saved["iteration"] == 2
    assert saved["architecture"]["in_channels"] == 2 and saved["architecture"]["ndim"] == 2
    loaded = load_model(tmp_path / "m.pt", "cpu")
    assert loaded.config["channel_axis"] == 0
    # the same axis counted from the end agrees with the metadata; resuming keeps it
    assert main([*common, "--iterations", "2", "--channel-axis", "-3", "--out",
                 str(tmp_path / "n.pt")]) == 0
    assert main(["train", "--resume", str(tmp_path / "m.pt"), "--image", str(path),
                 "--labels", str(tmp_path / "labels.npy"), "--iterations", "3",
                 "--device", "cpu", "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "m.pt")["iteration"] == 3
    capsys.readouterr()
    # a --channel-axis naming a spatial axis contradicts the metadata: refused, nothing written
    assert main([*common, "--iterations", "2", "--channel-axis", "2", "--out",
                 str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err
    assert "--channel-axis 2 contradicts the OME metadata" in err and "axis 2 is 'x'" in err
    assert not (tmp_path / "bad.pt").exists()


def test_the_manifest_offers_the_reader_for_ome_zarr_folders_only(tmp_path):
    import npe2
    from npe2 import PluginManager, PluginManifest

    import napari_spoco

    manifest = PluginManifest.from_file(Path(napari_spoco.__file__).parent / "napari.yaml")
    reader = manifest.contributions.readers[0]
    assert reader.accepts_directories and "*.zarr" in reader.filename_patterns
    manager = PluginManager()
    manager.register(manifest)
    image = np.random.default_rng(7).random((2, 16, 12), dtype=np.float32)
    path = ome_image(tmp_path / "a.ome.zarr", image, "cyx")
    # npe2 offers every reader that accepts directories for a folder: ours is among them
    assert [r.command for r in manager.iter_compatible_readers([str(path)])] == [
        "napari-spoco.get_reader"]
    # and reading through npe2 as napari does (the installed plugins, this manifest among them)
    # gives the one image layer, channels first
    PluginManager.instance().discover()
    (data, kwargs, kind), = npe2.read([str(path)], stack=False, plugin_name="napari-spoco")
    assert kind == "image" and kwargs["metadata"]["channel_axis"] == 0
    np.testing.assert_array_equal(np.asarray(data[0]), image)
    # a plain zarr folder is not claimed: napari goes on to its other readers
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("data", shape=(4, 4), dtype="f4")
    with pytest.raises(ValueError):
        npe2.read([str(tmp_path / "plain.zarr")], stack=False, plugin_name="napari-spoco")
