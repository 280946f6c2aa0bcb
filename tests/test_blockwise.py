"""Blockwise prediction and segmentation (core.blockwise, ``--blockwise``) against whole runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_spoco.cli import main
from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.inference import blockwise as bw
from napari_spoco.core.inference.prediction import frozen_network, predict_embeddings
from napari_spoco.core.inference.segmentation import segment_output, segmentation_settings
from napari_spoco.core.model.unet import UNet
from napari_spoco.core.synthetic.tissue import make_tissue


class LabelEmbedding(torch.nn.Module):
    """A "network" whose embedding of a pixel is its input value times 5 on channel 0.

    Given a label image it embeds every object at one point, 5 or more apart from any other
    object: the mutex watershed then recovers the labels exactly, so any difference of a
    blockwise result is the stitching's.
    """

    out_channels, in_channels, foreground, required_multiple = 2, 1, False, (1, 1)
    receptive_field = (1, 1)

    def __init__(self, ndim=2):
        super().__init__()
        self.ndim = ndim
        self.required_multiple = (1,) * ndim
        self.receptive_field = (1,) * ndim
        self.scale = torch.nn.Parameter(torch.tensor(5.0), requires_grad=False)

    def forward(self, x):
        return torch.cat([x * self.scale, torch.zeros_like(x)], dim=1)


def same_partition(a, b) -> bool:
    """Whether two labellings split the pixels identically (ids may differ)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_blocks_cover_the_volume_once_and_their_slabs_lie_in_what_they_segment():
    grid = bw.plan_blocks((70, 200, 190), (16, 64, 60), context=(6, 20, 20), multiple=(2, 4, 4))
    assert grid.block == (16, 64, 60) and grid.halo == (10, 32, 32)  # context + 4 or + half
    cover = np.zeros(grid.shape, np.int32)
    for index in grid.indices():
        cover[grid.core(index)] += 1
        segmented, outer = grid.segmented(index), grid.outer(index)
        for s, o, c in zip(segmented, outer, grid.core(index)):
            assert o.start <= s.start <= c.start and c.stop <= s.stop <= o.stop
        for axis, side in grid.faces(index):
            for f, s in zip(grid.face_region(index, axis, side), segmented):
                assert s.start <= f.start and f.stop <= s.stop
    assert (cover == 1).all()
    # blocks and halos are put on the network's pooling grid
    assert bw.plan_blocks((64, 64), 30, 5, multiple=(8, 8)).block == (32, 32)
    assert bw.plan_blocks((64, 64), 30, 5, multiple=(8, 8)).halo == (8, 8)


def test_bad_block_options_are_refused_with_a_reason():
    with pytest.raises(SpocoInputError, match="2 integers"):
        bw.plan_blocks((64, 64), (16, 16, 16))
    with pytest.raises(SpocoInputError, match="at least 2"):
        bw.plan_blocks((64, 64), 16, halo=1)
    with pytest.raises(SpocoInputError, match="2D or 3D"):
        bw.plan_blocks((4, 4, 4, 4))


def test_stitching_joins_merges_across_blocks_transitively():
    # block 0 has 2 segments, block 1 has 1, block 2 has 2; 0:2 = 1:1 = 2:1
    tables = bw.final_ids([2, 1, 2], [(0, 2, 1, 1), (1, 1, 2, 1)])
    assert [t.tolist() for t in tables] == [[0, 1, 2], [0, 2], [0, 2, 3]]


@pytest.mark.parametrize("ndim", [2, 3])
def test_blockwise_embeddings_equal_a_whole_volume_pass(tmp_path, ndim):
    torch.manual_seed(0)
    model = UNet(1, 4, ndim, features=(4, 8, 16), num_groups=2,
                 anisotropic_levels=1 if ndim == 3 else 0).eval()
    shape = (72, 90) if ndim == 2 else (20, 44, 52)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    block = 32 if ndim == 2 else (8, 16, 16)
    bw.segment_blockwise(model, image, block_shape=block, embeddings_out=tmp_path / "e.zarr")
    blockwise = zarr.open_array(str(tmp_path / "e.zarr"))[...]
    # the same volume-wide group-norm statistics, the whole volume in one pass
    frozen = frozen_network(model, image, device="cpu")
    whole = predict_embeddings(frozen, image, device="cpu", tile_shape=shape)
    np.testing.assert_allclose(blockwise, whole, atol=1e-5)
    # a halo below the network's context does not reach this: the default halo is needed
    bw.segment_blockwise(model, image, block_shape=block, halo=2,
                         embeddings_out=tmp_path / "short.zarr")
    short = zarr.open_array(str(tmp_path / "short.zarr"))[...]
    assert np.abs(short - whole).max() > 1e-3


def voronoi_cells(shape, n, seed=0):
    """Convex cells: every box cuts each of them into one connected piece."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    seeds = rng.random((n, len(shape))) * np.array(shape)
    grid = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, len(shape))
    return (cKDTree(seeds).query(grid)[1] + 1).reshape(shape).astype(np.uint32)


@pytest.mark.parametrize("shape, block", [((150, 170), 48), ((24, 80, 72), (8, 32, 24))])
def test_stitched_labels_equal_the_whole_volume_run_across_every_block_face(tmp_path, shape,
                                                                              block):
    cells = voronoi_cells(shape, 120)
    network = LabelEmbedding(len(shape))
    # every repulsive edge kept: with the default strides even a whole-image run may join two
    # cells that touch briefly, and this test is about the stitching only
    settings = segmentation_settings(min_size=1, fill=False, strides=1)
    embeddings = network(torch.from_numpy(cells.astype(np.float32))[None, None])[0].numpy()
    whole = segment_output(embeddings, None, settings)  # the cells' connected pieces
    result = bw.segment_blockwise(network, cells.astype(np.float32), settings=settings,
                                  block_shape=block, halo=4, labels_out=tmp_path / "l.zarr")
    labels = zarr.open_array(str(tmp_path / "l.zarr"))[...]
    grid = result["grid"]
    crossing = {int(c) for i in grid.indices() for axis, side in grid.faces(i) if side > 0
                for c in np.unique(cells[grid.face_region(i, axis, side)])}
    assert len(crossing) > 40  # many cells do cross block faces
    assert same_partition(labels, whole)
    assert result["segments"] == len(np.unique(whole)) == labels.max()


def test_the_cli_segments_blockwise_on_a_local_cluster_like_in_process(tmp_path, capsys):
    image, cells = make_tissue((96, 112), seed=2)
    np.save(tmp_path / "image.npy", image)
    ckpt = tmp_path / "m.pt"
    _tiny_checkpoint(ckpt, image)
    common = ["segment", "--checkpoint", str(ckpt), "--image", str(tmp_path / "image.npy"),
              "--blockwise", "--block-shape", "48", "--device", "cpu", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a.zarr"), "--scheduler", "synchronous"]) == 0
    assert main([*common, "--out", str(tmp_path / "b.zarr"), "--workers", "2"]) == 0
    assert "6 blocks of (48, 48)" in capsys.readouterr().out
    a = zarr.open_array(str(tmp_path / "a.zarr"))[...]
    b = zarr.open_array(str(tmp_path / "b.zarr"))[...]
    np.testing.assert_array_equal(a, b)
    assert a.shape == image.shape and a.max() > 1
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no scratch left


def test_the_cli_predicts_blockwise_into_zarr(tmp_path):
    image = np.random.default_rng(3).random((40, 100), dtype=np.float32)
    np.save(tmp_path / "image.npy", image)
    ckpt = tmp_path / "m.pt"
    model = _tiny_checkpoint(ckpt, image)
    assert main(["predict", "--checkpoint", str(ckpt), "--image", str(tmp_path / "image.npy"),
                 "--out", str(tmp_path / "e.zarr"), "--blockwise", "--block-shape", "32",
                 "--scheduler", "synchronous", "--device", "cpu", "--no-progress"]) == 0
    from napari_spoco.core.model.checkpoint import load_model

    loaded = load_model(ckpt, "cpu")
    frozen = frozen_network(loaded.model, image, loaded.normalization, device="cpu")
    whole = predict_embeddings(frozen, image, loaded.normalization, device="cpu",
                               tile_shape=image.shape)
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "e.zarr"))[...], whole, atol=1e-5)
    assert model.out_channels == whole.shape[0]


@pytest.mark.parametrize("options, message", [
    (["--blockwise", "--out", "x.tif"], "must be a .zarr"),
    (["--block-shape", "32", "--out", "x.zarr"], "only apply with --blockwise"),
    (["--blockwise", "--tile-shape", "64", "--out", "x.zarr"], "--block-shape"),
    (["--blockwise", "--method", "consistency", "--out", "x.zarr"], "consistency"),
    (["--blockwise", "--workers", "0", "--out", "x.zarr"], "--workers"),
])
def test_blockwise_option_misuse_exits_2_with_a_reason(tmp_path, capsys, options, message):
    image = np.zeros((32, 32), np.float32)
    np.save(tmp_path / "image.npy", image)
    _tiny_checkpoint(tmp_path / "m.pt", image)
    options = [str(tmp_path / o) if o.startswith("x.") else o for o in options]
    code = main(["segment", "--checkpoint", str(tmp_path / "m.pt"),
                 "--image", str(tmp_path / "image.npy"), *options])
    assert code == 2
    assert message in capsys.readouterr().err


def _tiny_checkpoint(path, image):
    from napari_spoco.core.model.checkpoint import save_checkpoint
    from napari_spoco.core.model.normalization import Normalization

    torch.manual_seed(0)
    model = UNet(1, 4, 2, features=(4, 8), norm="group", num_groups=2)
    save_checkpoint(path, {
        "architecture": model.config, "model_state": model.state_dict(),
        "momentum_state": model.state_dict(),
        "normalization": Normalization.fit([image], None).to_dict(),
        "config": {"channel_axis": None, "loss": {"delta_v": 0.5, "delta_d": 2.0}},
    })
    return model


def test_blockwise_labels_go_beside_an_ome_zarr_image(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr.writer import write_image

    image = make_tissue((64, 80), seed=4)[0]
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    write_image(image, group, axes="yx", scale_factors=(),
                coordinate_transformations=[[{"type": "scale", "scale": [0.5, 0.5]}]])
    _tiny_checkpoint(tmp_path / "m.pt", image)
    out = tmp_path / "img.ome.zarr" / "labels" / "blocks"
    common = ["segment", "--checkpoint", str(tmp_path / "m.pt"),
              "--image", str(tmp_path / "img.ome.zarr"), "--device", "cpu", "--no-progress"]
    assert main([*common, "--out", str(out), "--blockwise", "--block-shape", "32",
                 "--scheduler", "synchronous"]) == 0
    assert main([*common, "--out", str(tmp_path / "b.zarr"), "--blockwise",
                 "--block-shape", "32", "--scheduler", "synchronous"]) == 0
    label_nodes = [n for n in Reader(parse_url(str(out)))() if n.zarr.path.endswith("blocks")]
    np.testing.assert_array_equal(np.asarray(label_nodes[0].data[0]),
                                  zarr.open_array(str(tmp_path / "b.zarr"))[...])
    assert sorted(p.name for p in (tmp_path / "img.ome.zarr").iterdir()) == [
        ".zattrs", ".zgroup", "labels", "s0"]  # no scratch left beside the image
