"""``napari-spoco demo --headless``: the same loop as the widgets, writing its results."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_spoco.cli import main
from napari_spoco.cli.demo import has_display
from napari_spoco.core.model.checkpoint import load_model


@pytest.mark.slow
def test_headless_demo_writes_model_images_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--headless", "--sample", "stardist_2d", "--iterations", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SBD" in printed and str(out) in printed

    summary = json.loads((out / "metrics.json").read_text())
    assert summary["iterations"] == 2 and summary["sample"] == "stardist_2d"
    metrics = summary["metrics"]
    assert 0.0 <= metrics["sbd"] <= 1.0 and 0.0 <= metrics["adapted_rand_error"] <= 1.0
    truth = tifffile.imread(Path(__file__).parent / "data" / "stardist" / "mask2d.tif")
    assert metrics["n_gt"] == len(np.unique(truth)) - 1

    segmentation = tifffile.imread(out / "segmentation.tif")
    painted = tifffile.imread(out / "painted_labels.tif")
    assert segmentation.shape == painted.shape == (512, 512)
    assert metrics["n_seg"] == len(np.unique(segmentation)) - 1
    rgb = tifffile.imread(out / "embeddings_pca.tif")
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert (out / "embeddings_pca.png").stat().st_size > 0
    assert load_model(out / "model.pt").iteration == 2


def test_demo_is_headless_without_a_display(monkeypatch):
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not has_display()
    monkeypatch.setenv("DISPLAY", ":99")
    assert has_display()


def test_napari_demo_paints_the_fraction_it_is_given(request, monkeypatch, tmp_path):
    # the sample menu paints its own 10 %; the demo in napari paints --fraction, as headless
    napari = pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    import argparse

    from napari_spoco.cli.demo import add_parser, run_napari
    from napari_spoco.datasets import sample_dataset

    make_napari_viewer = request.getfixturevalue("make_napari_viewer")
    viewers = []
    def viewer(**kwargs):
        viewers.append(make_napari_viewer(**kwargs))
        return viewers[-1]

    monkeypatch.setattr(napari, "Viewer", viewer)
    monkeypatch.setattr(napari, "run", lambda: None)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["demo", "--sample", "nuclei_2d", "--fraction", "0.2",
                              "--iterations", "3", "--out", str(tmp_path)])
    assert run_napari(args) == 0
    painted = [layer for layer in viewers[0].layers if isinstance(layer, napari.layers.Labels)]
    expected = sample_dataset("nuclei_2d", fraction=0.2, seed=0)["partial_labels"]
    np.testing.assert_array_equal(painted[0].data, expected)
    default = sample_dataset("nuclei_2d", fraction=0.1, seed=0)["partial_labels"]
    assert len(np.unique(expected)) > len(np.unique(default))
