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
