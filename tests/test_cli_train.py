"""``napari-spoco train``: from scratch, fine-tuning, resume, Ctrl-C and input errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile

from napari_spoco.cli import main
from napari_spoco.core.io import write_array
from napari_spoco.core.model.checkpoint import load_checkpoint
from napari_spoco.core.training import Trainer

TINY = ["--features", "8", "16", "--batch-size", "1", "--iterations", "2", "--device", "cpu",
        "--no-progress"]


def blobs(shape, seed=0):
    rng = np.random.default_rng(seed)
    image = (rng.normal(size=shape) * 10 + 100).astype(np.float32)
    labels = np.zeros(shape, np.uint16)
    for obj, start in enumerate((4, 20), start=1):
        region = (..., slice(start, start + 10), slice(start, start + 10))
        labels[region] = obj
        image[region] += 50
    return image, labels


@pytest.fixture
def files_2d(tmp_path):
    image, labels = blobs((40, 40))
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    return tmp_path / "img.tif", tmp_path / "lab.tif"


@pytest.fixture
def files_3d(tmp_path):
    image, labels = blobs((6, 36, 36), seed=1)
    write_array(tmp_path / "vol.npy", image)
    write_array(tmp_path / "vol_labels.zarr", labels)
    return tmp_path / "vol.npy", tmp_path / "vol_labels.zarr"


def train(*args):
    return main(["train", *map(str, args)])


@pytest.mark.parametrize("ndim", [2, 3])
def test_train_from_scratch_then_fine_tune_its_checkpoint(ndim, files_2d, files_3d, tmp_path):
    image, labels = files_2d if ndim == 2 else files_3d
    patch = ["32", "32"] if ndim == 2 else ["4", "32", "32"]
    model = tmp_path / f"model{ndim}.pt"
    assert train("--image", image, "--labels", labels, "--out", model, "--patch-shape",
                 *patch, "--lr", "1e-3", *TINY) == 0
    saved = load_checkpoint(model)
    assert saved["iteration"] == 2 and saved["architecture"]["ndim"] == ndim
    assert saved["architecture"]["features"] == [8, 16]
    assert saved["config"]["patch_shape"] == [int(p) for p in patch]

    tuned = tmp_path / f"tuned{ndim}.pt"
    assert train("--source", model, "--image", image, "--labels", labels, "--out", tuned,
                 "--patch-shape", *patch, *TINY) == 0
    fine = load_checkpoint(tuned)
    assert fine["iteration"] == 2 and fine["source"] == str(model)
    assert fine["config"]["lr"] == pytest.approx(1e-4)
    assert fine["optimizer_state"]["param_groups"][0]["lr"] == pytest.approx(1e-4)


def test_several_pairs_resume_and_fraction(files_2d, tmp_path):
    image, labels = files_2d
    model = tmp_path / "m.pt"
    assert train("--image", image, "--labels", labels, "--image", image, "--labels", labels,
                 "--out", model, "--fraction", "0.5", *TINY) == 0
    assert train("--resume", model, "--image", image, "--labels", labels,
                 "--iterations", "3", "--device", "cpu", "--no-progress") == 0
    assert load_checkpoint(model)["iteration"] == 3


def test_ctrl_c_saves_the_checkpoint(files_2d, tmp_path, monkeypatch, capsys):
    image, labels = files_2d
    real_step = Trainer._step

    def interrupted_second_step(self):
        if self.iteration == 1:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "_step", interrupted_second_step)
    model = tmp_path / "interrupted.pt"
    assert train("--image", image, "--labels", labels, "--out", model, *TINY) == 130
    assert load_checkpoint(model)["iteration"] == 1
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("counts", "one --labels after each --image"),
    ("no_labels", "No labeled pixel"),
    ("no_out", "--out"),
    ("2d_model_3d_data", "2D"),
])
def test_input_errors_exit_2_with_a_message(case, message, files_2d, files_3d, tmp_path,
                                            capsys):
    image, labels = files_2d
    args = ["--image", image, "--labels", labels, "--out", tmp_path / "x.pt", *TINY]
    if case == "counts":
        args = ["--image", image, *args]
    elif case == "no_labels":
        args += ["--fraction", "0"]
    elif case == "no_out":
        args.remove("--out")
        args.remove(tmp_path / "x.pt")
    else:
        model = tmp_path / "m2d.pt"
        assert train(*args[:4], "--out", model, *TINY) == 0
        capsys.readouterr()
        args = ["--source", model, "--image", files_3d[0], "--labels", files_3d[1],
                "--out", tmp_path / "y.pt", *TINY]
    assert train(*args) == 2
    err = capsys.readouterr().err
    assert "napari-spoco train: error:" in err and message in err


def test_sparse_labels_without_background_are_told_to_paint_some(files_2d, tmp_path, capsys):
    image, labels = files_2d
    assert train("--image", image, "--labels", labels, "--out", tmp_path / "a.pt",
                 "--patch-shape", "32", "32", *TINY) == 0
    assert "No background was painted" in capsys.readouterr().err
    painted = tifffile.imread(labels)
    painted[30:34, 2:12] = 500
    tifffile.imwrite(tmp_path / "with_bg.tif", painted)
    assert train("--image", image, "--labels", tmp_path / "with_bg.tif", "--background-id",
                 "500", "--out", tmp_path / "b.pt", "--patch-shape", "32", "32", *TINY) == 0
    assert "No background was painted" not in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "b.pt")["annotations"]["background_known"] is True


# -- progress without a terminal -----------------------------------------------------------------

PLAIN = ["--features", "8", "16", "--batch-size", "1", "--iterations", "5", "--device", "cpu",
         "--patch-shape", "32", "32"]
LINE = re.compile(r"step (\d+)/5  loss \d+\.\d{4}  [0-9.e+]+ steps/s  ETA (\d+ s|\d+ min \d+ s)")


def progress_lines(err):
    return [line for line in err.splitlines() if line.startswith("step ")]


def test_progress_lines_when_stderr_is_not_a_terminal(files_2d, tmp_path, capsys):
    # Under capsys stderr is no terminal, as in a log file or a batch job: tqdm draws nothing.
    image, labels = files_2d
    assert train("--image", image, "--labels", labels, "--out", tmp_path / "a.pt", *PLAIN,
                 "--progress-seconds", "1e-9") == 0
    lines = progress_lines(capsys.readouterr().err)
    assert [int(LINE.fullmatch(line).group(1)) for line in lines] == [1, 2, 3, 4, 5]
    assert lines[-1].endswith("ETA 0 s")

    # the default interval (10 s) is longer than this run: only the line at the end
    assert train("--image", image, "--labels", labels, "--out", tmp_path / "b.pt", *PLAIN) == 0
    err = capsys.readouterr().err
    assert [LINE.fullmatch(line).group(1) for line in progress_lines(err)] == ["5"]
    assert "5 steps" in err  # the run's settings line says how long it will be

    assert train("--image", image, "--labels", labels, "--out", tmp_path / "c.pt", *PLAIN,
                 "--progress-seconds", "1e-9", "--no-progress") == 0
    assert progress_lines(capsys.readouterr().err) == []

    assert train("--image", image, "--labels", labels, "--out", tmp_path / "d.pt", *PLAIN,
                 "--progress-seconds", "-1") == 2
    assert "--progress-seconds" in capsys.readouterr().err


def test_progress_lines_come_every_interval_and_at_the_end():
    from types import SimpleNamespace

    from napari_spoco.cli.train import ProgressLines

    class Stream:
        def __init__(self):
            self.text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    now = [0.0]
    stream = Stream()
    lines = ProgressLines(total=100, every=10.0, stream=stream, clock=lambda: now[0])
    for step in range(1, 36):  # one step per second, 2 steps per second after step 20
        now[0] += 1.0 if step <= 20 else 0.5
        lines.update(SimpleNamespace(iteration=step, smoothed_loss=1.0 / step))
    lines.close()
    printed = stream.text.splitlines()
    assert [line.split("  ")[0] for line in printed] == ["step 10/100", "step 20/100",
                                                         "step 35/100"]
    assert printed[0] == "step 10/100  loss 0.1000  1 steps/s  ETA 1 min 30 s"
    assert printed[2].endswith("2 steps/s  ETA 32 s")  # 65 steps left at the recent speed
    lines.close()  # the last step is printed once
    assert len(stream.text.splitlines()) == 3
