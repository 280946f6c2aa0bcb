"""One rule for the run defaults (lr, iterations, patch, batch, anisotropy) of every front end."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from napari_spoco.core import run_defaults as rd
from napari_spoco.core.training import Trainer, TrainingConfig
from napari_spoco.core.training.data import TrainingData

# -- the rules ---------------------------------------------------------------------------------


def test_learning_rate_is_2e4_from_scratch_and_a_tenth_of_the_source_when_fine_tuning():
    assert rd.default_learning_rate() == pytest.approx(2e-4)
    assert rd.default_learning_rate(fine_tuning=True, source_lr=1e-3) == pytest.approx(1e-4)
    assert rd.default_learning_rate(fine_tuning=True, source_lr=2e-4) == pytest.approx(2e-5)
    # a source that does not say its lr is taken as trained from scratch at 2e-4
    assert rd.default_learning_rate(fine_tuning=True) == pytest.approx(2e-5)
    assert rd.default_learning_rate(fine_tuning=False, source_lr=1e-3) == pytest.approx(2e-4)
    assert rd.source_learning_rate({"config": {"lr": 1e-3}}) == pytest.approx(1e-3)
    assert rd.source_learning_rate({"config": {}}) is None
    assert rd.source_learning_rate({}) is None


def test_the_trainer_fine_tunes_with_the_same_rule(tmp_path):
    from training_support import blobs, tiny

    path = Trainer([blobs()], tiny(lr=1e-3, iterations=0)).save(tmp_path / "source.pt")
    tuned = Trainer([blobs()], tiny(lr=None), source=path)
    assert tuned.lr == pytest.approx(rd.default_learning_rate(True, 1e-3)) == pytest.approx(1e-4)


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_default_iterations_are_fewer_on_a_cpu_and_in_3d(device):
    two_d = rd.default_iterations((512, 512), device)
    three_d = rd.default_iterations((48, 192, 192), device)
    if device == "cpu":
        assert two_d == 1500 and three_d == 500  # about 8 min each on a CPU
    else:
        assert (two_d, three_d) == (5000, 2000)
        assert rd.default_iterations((512, 512), "cpu") < two_d
        assert rd.default_iterations((48, 192, 192), "cpu") < three_d
    assert rd.default_iterations((512, 512), f"{device}:0") == two_d


@pytest.mark.parametrize("shape", [(512, 512), (2048, 2048), (96, 96), (40, 40), (48, 192, 192),
                                   (31, 61, 57), (6, 36, 36), (200, 1024, 1024)])
def test_a_default_cpu_run_takes_minutes_not_hours(shape):
    iterations = rd.default_iterations(shape, "cpu")
    patch, batch = rd.default_patch_and_batch(shape, "cpu")
    minutes = iterations * rd.estimated_cpu_seconds_per_step(patch, batch) / 60
    assert rd.CPU_MIN_ITERATIONS <= iterations <= rd.CPU_MAX_ITERATIONS
    assert iterations % rd.ITERATION_STEP == 0
    assert minutes < 10
    # the step costs the rule is built on: 0.3 s (2D 4 x 128²) and 7 s (3D 4 x 32 x 64²)
    assert rd.estimated_cpu_seconds_per_step((128, 128), 4) == pytest.approx(0.3)
    assert rd.estimated_cpu_seconds_per_step((32, 64, 64), 4) == pytest.approx(7.0)


def test_small_images_get_more_cheap_steps_on_a_cpu():
    assert rd.default_iterations((64, 64), "cpu") == rd.CPU_MAX_ITERATIONS
    assert rd.default_iterations((40, 40), "cpu") == rd.CPU_MAX_ITERATIONS
    assert rd.default_iterations((96, 96), "cuda") == 5000  # a GPU step is cheap anyway


@pytest.mark.parametrize(
    "shape, device, patch, batch",
    [
        ((512, 512), "cpu", (128, 128), 4),
        ((512, 512), "cuda", (256, 256), 8),
        ((512, 512), "mps", (256, 256), 8),
        ((100, 90), "cpu", (96, 88), 4),
        ((31, 61, 57), "cpu", (16, 56, 56), 1),
        ((5, 300, 300), "cuda:1", (5, 128, 128), 2),
    ],
)
def test_default_patch_and_batch(shape, device, patch, batch):
    assert rd.default_patch_and_batch(shape, device) == (patch, batch)


def test_the_widgets_keep_their_old_names_for_the_moved_functions():
    from napari_spoco.widgets import _logic

    assert _logic.default_patch_and_batch is rd.default_patch_and_batch
    assert _logic.fit_patch_side is rd.fit_patch_side
    assert _logic.default_learning_rate is rd.default_learning_rate
    assert not hasattr(_logic, "LR_FINE_TUNING")  # no second constant to drift


def test_thin_stacks_are_anisotropic_as_the_training_data_decide():
    assert rd.default_anisotropic([(12, 64, 64)])
    assert rd.default_anisotropic([(32, 64, 80)])  # Z = min(Y, X) / 2
    assert not rd.default_anisotropic([(33, 64, 80)])
    assert not rd.default_anisotropic([(12, 64, 64), (48, 64, 64)])  # every stack must be thin
    assert not rd.default_anisotropic([(64, 64)])
    assert not rd.default_anisotropic([])
    rng = np.random.default_rng(0)
    for shape in [(12, 64, 64), (48, 64, 64)]:
        labels = np.zeros(shape, np.uint32)
        labels[2:6, 10:20, 10:20] = 1
        data = TrainingData([(rng.random(shape, dtype=np.float32), labels)], ndim=3)
        assert data.anisotropic == rd.default_anisotropic([shape])


def test_resolve_keeps_what_is_given_and_fills_the_rest():
    filled = rd.resolve_run_settings([(512, 512), (300, 700)], "cpu")
    assert filled == rd.RunSettings(lr=2e-4, iterations=1500, patch_shape=(128, 128),
                                    batch_size=4, anisotropic=False)
    given = rd.resolve_run_settings([(12, 64, 64)], "cpu", fine_tuning=True, source_lr=1e-3,
                                    lr=3e-5, iterations=7, patch_shape=(8, 32, 32),
                                    batch_size=3, anisotropic=False)
    assert given.as_dict() == {"lr": 3e-5, "iterations": 7, "patch_shape": (8, 32, 32),
                               "batch_size": 3, "anisotropic": False}
    # a default never depends on another setting given: patch/batch given leave iterations
    partial = rd.resolve_run_settings([(12, 64, 64)], "cpu", patch_shape=(8, 32, 32))
    assert partial.iterations == rd.resolve_run_settings([(12, 64, 64)], "cpu").iterations
    assert partial.anisotropic and partial.batch_size == 1
    assert rd.smallest_shape([(512, 300), (200, 400)]) == (200, 300)


def test_the_demo_takes_its_defaults_from_the_same_rule():
    from napari_spoco.cli import demo

    parser = argparse.ArgumentParser()
    demo.add_parser(parser.add_subparsers())
    assert parser.parse_args(["demo"]).iterations is None
    config = demo.demo_config(2, None, "cpu", 0, (512, 512))  # nuclei_2d on a CPU
    assert config.iterations == rd.default_iterations((512, 512), "cpu",
                                                      budget_seconds=rd.DEMO_BUDGET_SECONDS)
    assert config.iterations < rd.default_iterations((512, 512), "cpu")
    assert (config.patch_shape, config.batch_size) == ((128, 128), 4)
    assert demo.demo_config(3, None, "cuda", 0, (48, 192, 192)).iterations == 2000
    assert demo.demo_config(2, 12, "cpu", 0, (512, 512)).iterations == 12


# -- the command line and the Train tab agree ---------------------------------------------------


def cli_config(image, labels, *options):
    """The config ``napari-spoco train`` builds for these arrays (no subprocess, no file read)."""
    from napari_spoco.cli.train import add_parser, build_config

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--image", "i.tif", "--labels", "l.tif", "--out", "m.pt",
                              *map(str, options)])
    return build_config(args, [(image, labels)])


def widget_config(qtbot, shape, device, source=None):
    """The config the Train tab's form gives for one image of spatial ``shape``."""
    from napari_spoco.widgets.train_settings import TrainSettings

    settings = TrainSettings()
    qtbot.addWidget(settings)
    settings.device_combo.setCurrentText(device)
    settings.suggest_patch(shape)  # what the Train tab does when the Data tab's pairs change
    if source is not None:
        settings.add_model(source)
    return settings.config(len(shape), None, None, shapes=[shape])


def save_source(path, ndim, lr):
    from training_support import blobs, tiny

    image, labels = blobs((12, 48, 48) if ndim == 3 else (48, 48))
    patch = (8, 32, 32) if ndim == 3 else (32, 32)
    config = tiny(lr=lr, iterations=0, patch_shape=patch, batch_size=1)
    return Trainer([(image, labels)], config).save(path)


@pytest.mark.parametrize(
    "shape, device, source_ndim",
    [
        ((300, 280), "cpu", None),
        ((10, 80, 72), "cpu", None),  # thin stack: anisotropic
        ((40, 64, 64), "cpu", None),  # not thin
        ((96, 96), "cpu", 2),  # fine-tuning a source trained at lr 1e-3
        ((10, 80, 72), "cpu", 3),
        ((256, 256), "auto", None),  # whatever "auto" is on this machine
    ],
)
def test_cli_and_train_tab_build_the_same_run(qtbot, tmp_path, shape, device, source_ndim):
    rng = np.random.default_rng(0)
    image = rng.random(shape, dtype=np.float32)
    labels = np.zeros(shape, np.uint32)
    labels[..., 5:15, 5:15] = 1
    options = [] if device == "auto" else ["--device", device]
    source = None
    if source_ndim is not None:
        source = save_source(tmp_path / "source.pt", source_ndim, lr=1e-3)
        options += ["--source", source]
    cli = cli_config(image, labels, *options)
    gui = widget_config(qtbot, shape, device, source)
    for name in ("lr", "iterations", "patch_shape", "batch_size", "anisotropic"):
        assert getattr(cli, name) == pytest.approx(getattr(gui, name)), name
    assert cli.input_scale is None and gui.input_scale is None  # the images' own grid
    assert cli.anisotropic == rd.default_anisotropic([shape])
    expected_lr = 1e-4 if source is not None else 2e-4
    assert cli.lr == pytest.approx(expected_lr) and gui.lr == pytest.approx(expected_lr)
    # and the trainer keeps the decided settings
    trainer = Trainer([(image, labels)], cli.replace(features=(8, 16), iterations=0),
                      source=source)
    assert trainer.config.anisotropic == cli.anisotropic
    assert trainer.config.patch_shape == cli.patch_shape and trainer.lr == pytest.approx(cli.lr)
    # the consistency weight: the Train tab shows it, the command line leaves it to the trainer
    expected_w_ucon = 10.0 if source is not None else 1.0
    assert gui.loss.w_ucon == pytest.approx(expected_w_ucon)
    assert trainer.config.loss.w_ucon == pytest.approx(gui.loss.w_ucon)
    assert trainer.loss_fn.config["w_ucon"] == pytest.approx(expected_w_ucon)


def test_consistency_weight_follows_the_source_and_the_mode_and_a_given_weight_wins(qtbot,
                                                                                  tmp_path):
    from napari_spoco.core.training import LossSettings
    from napari_spoco.widgets.train_settings import TrainSettings

    source = save_source(tmp_path / "source.pt", 2, lr=1e-3)
    image = np.random.default_rng(0).random((48, 48), dtype=np.float32)
    labels = np.zeros((48, 48), np.uint32)
    labels[5:15, 5:15] = 1

    def resolved(**changes):
        config = TrainingConfig(features=(4, 8), num_groups=2, patch_shape=(32, 32),
                                batch_size=1, iterations=0, device="cpu",
                                autosave_seconds=None, **changes)
        return Trainer([(image, labels)], config, source=source).config.loss.w_ucon

    assert resolved() == rd.FINE_TUNE_CONSISTENCY_WEIGHT
    assert resolved(mode="dense") == rd.DEFAULT_CONSISTENCY_WEIGHT
    assert resolved(loss=LossSettings(w_ucon=2.5)) == 2.5  # given explicitly: kept
    settings = TrainSettings()
    qtbot.addWidget(settings)
    assert settings.w_ucon_spin.value() == rd.DEFAULT_CONSISTENCY_WEIGHT
    settings.add_model(source)
    assert settings.w_ucon_spin.value() == rd.FINE_TUNE_CONSISTENCY_WEIGHT
    settings.mode_combo.setCurrentText("dense")
    assert settings.w_ucon_spin.value() == rd.DEFAULT_CONSISTENCY_WEIGHT
    settings.mode_combo.setCurrentText("sparse")
    assert settings.config(2, None, None).loss.w_ucon == rd.FINE_TUNE_CONSISTENCY_WEIGHT


def test_cli_and_train_tab_match_the_source_object_size_alike(qtbot):
    from napari_spoco.widgets.train_settings import TrainSettings

    image = np.zeros((64, 64), np.float32)
    labels = np.ones((64, 64), np.uint32)
    settings = TrainSettings()
    qtbot.addWidget(settings)
    assert not settings.object_size_check.isChecked()
    settings.object_size_check.setChecked(True)
    gui = settings.config(2, None, None, shapes=[(64, 64)])
    assert gui.input_scale == "auto" == cli_config(image, labels, "--input-scale",
                                                   "auto").input_scale


def test_cli_options_given_win_over_the_defaults():
    image = np.zeros((10, 80, 72), np.float32)
    labels = np.ones((10, 80, 72), np.uint32)
    config = cli_config(image, labels, "--device", "cpu", "--iterations", "7", "--patch-shape",
                        "4", "32", "32", "--batch-size", "3", "--lr", "5e-4")
    assert (config.iterations, config.patch_shape, config.batch_size) == (7, (4, 32, 32), 3)
    assert config.lr == pytest.approx(5e-4) and config.anisotropic
    # channels first: the defaults are those of the spatial shape
    two_channels = cli_config(np.zeros((2, 300, 280), np.float32), np.ones((300, 280), np.uint32),
                              "--device", "cpu", "--channel-axis", "0")
    assert two_channels.patch_shape == (128, 128) and two_channels.iterations == 1500


def test_the_train_tab_keeps_a_value_the_user_changed(qtbot):
    from napari_spoco.widgets.train_settings import TrainSettings

    settings = TrainSettings()
    qtbot.addWidget(settings)
    settings.device_combo.setCurrentText("cpu")
    settings.suggest_patch((96, 96))
    assert settings.iterations_spin.value() == rd.default_iterations((96, 96), "cpu")
    assert settings.patch_edit.text() == "96, 96"
    settings.iterations_spin.setValue(1234)
    settings.suggest_patch((48, 192, 192))  # another image: untouched fields follow it
    assert settings.iterations_spin.value() == 1234
    assert settings.patch_edit.text() == "16, 64, 64" and settings.batch_spin.value() == 1
    config = settings.config(3, None, None, shapes=[(48, 192, 192)])
    assert config.iterations == 1234 and config.anisotropic is True


@pytest.mark.gui
def test_the_dock_decides_like_the_cli_for_a_thin_stack(make_napari_viewer, qtbot):
    pytest.importorskip("napari")
    from napari_spoco.widgets import SpocoWidget

    shape = (10, 80, 72)
    rng = np.random.default_rng(1)
    image = rng.random(shape, dtype=np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="stack")
    widget = SpocoWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SPOCO")
    labels = widget.data.create_labels()
    labels.data_setitem(np.nonzero(np.ones((2, 5, 5))), 1)
    settings = widget.train.settings
    settings.device_combo.setCurrentText("cpu")
    arrays, channel_axis, ndim, views = widget.data.training_pairs()
    gui = settings.config(ndim, channel_axis, None, shapes=[v.spatial_shape for v in views])
    cli = cli_config(*arrays[0], "--device", "cpu")
    for name in ("lr", "iterations", "patch_shape", "batch_size", "anisotropic"):
        assert getattr(cli, name) == pytest.approx(getattr(gui, name)), name
    assert gui.anisotropic is True
    widget.shutdown()


def test_training_config_keeps_its_python_api_defaults():
    # Front ends decide every run default; TrainingConfig() alone keeps its documented fallbacks.
    config = TrainingConfig()
    assert config.lr is None and config.patch_shape is None and config.anisotropic is None


@pytest.mark.parametrize("voxel_size, expected", [((2.0, 0.5, 0.5), True),
                                                  ((0.5, 0.5, 0.5), False)])
def test_cli_and_train_tab_decide_anisotropy_alike_from_the_voxel_size(qtbot, tmp_path,
                                                                       voxel_size, expected):
    import tifffile

    from napari_spoco.cli.train import voxel_sizes
    from napari_spoco.widgets.train_settings import TrainSettings

    shape = (10, 80, 72)  # thin by shape: the voxel size decides instead
    image = np.zeros(shape, np.float32)
    labels = np.ones(shape, np.uint32)
    cli = cli_config(image, labels, "--device", "cpu", "--voxel-size", *voxel_size)
    settings = TrainSettings()
    qtbot.addWidget(settings)
    settings.device_combo.setCurrentText("cpu")
    settings.suggest_patch(shape)
    gui = settings.config(3, None, None, shapes=[shape], spacings=[voxel_size])  # layer.scale
    assert cli.anisotropic == gui.anisotropic == expected
    assert rd.default_anisotropic([shape], [voxel_size]) == expected
    # the same voxel size recorded in an ImageJ TIFF is read by the command line
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / voxel_size[1],) * 2,
                     metadata={"spacing": voxel_size[0], "axes": "ZYX"})
    args = argparse.Namespace(voxel_size=None, image=[str(path)])
    assert rd.default_anisotropic([shape], voxel_sizes(args, [shape])) == expected


@pytest.mark.parametrize("scale, expected", [((3.0, 1.0, 1.0), True), ((1.0, 1.0, 1.0), False)])
def test_segment_tab_and_cli_decide_mws_anisotropy_alike_from_the_voxel_size(
        tmp_path, monkeypatch, scale, expected):
    """The Segment tab passes the layer scale where the CLI passes --voxel-size."""
    import threading

    from training_support import tiny

    from napari_spoco.cli import segment as cli_segment
    from napari_spoco.core.inference import segmentation
    from napari_spoco.core.model.checkpoint import load_model
    from napari_spoco.widgets.workers import Progress, predict_and_segment

    rng = np.random.default_rng(0)
    image = rng.normal(size=(8, 24, 24)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint32)
    labels[2:6, 4:12, 4:12] = 1
    config = tiny(patch_shape=(8, 16, 16), iterations=0, anisotropic=False,
                  autosave_seconds=None)
    path = Trainer([(image, labels)], config).save(tmp_path / "m.pt")
    loaded = load_model(path, "cpu")
    decided = []
    original = segmentation.settings_for

    def spy(*args, **kwargs):
        decided.append(original(*args, **kwargs))
        return decided[-1]

    monkeypatch.setattr(segmentation, "settings_for", spy)
    predict_and_segment(lambda: (loaded.model, loaded.normalization, loaded), image, None,
                        "cpu", "mws", {}, Progress(), threading.Event(), spacing=scale)
    args = argparse.Namespace(merge=None, delta_v=None, delta_d=None, min_size=None,
                              fill=None, foreground=None, foreground_threshold=None,
                              method="mws", seed=0, voxel_size=list(scale), image=None,
                              **{dest: None for dest, _, _ in cli_segment.METHOD_OPTIONS})
    cli = cli_segment.settings_from_args(args, loaded, 3)
    assert decided and all(gui == cli for gui in decided)
    assert cli.params.get("anisotropic", False) is expected


# -- torch CPU threads: one load rule for the command line and the Train tab -----------------


@pytest.fixture
def no_thread_variables(monkeypatch):
    """The rule without the user's OMP_NUM_THREADS / MKL_NUM_THREADS (the test runs set one)."""
    for name in rd.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def torch_threads_restored(monkeypatch):
    """A fresh decision of apply_torch_threads, and torch's thread count put back afterwards."""
    import torch

    monkeypatch.setattr(rd, "_APPLIED", {})
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "cores, load, expected",
    [
        (2, 0.0, 2), (2, 0.4, 2),  # idle: all cores
        (2, 0.6, 1), (2, 1.9, 1), (2, 6.0, 1),  # one core busy or more: fewer, never 0
        (8, 0.3, 8), (8, 3.0, 5), (8, 7.6, 1), (8, 40.0, 1),
        (1, 0.0, 1), (1, 3.0, 1),
    ],
)
def test_torch_threads_use_all_cores_only_when_idle(no_thread_variables, cores, load, expected):
    assert rd.default_torch_threads(cpu_count=cores, load=load) == expected


def test_torch_threads_stay_between_one_and_the_cores_and_fall_as_the_load_rises(
        no_thread_variables):
    for cores in (1, 2, 3, 4, 8, 16, 64):
        counts = [rd.default_torch_threads(cpu_count=cores, load=load / 4)
                  for load in range(4 * (cores + 4))]
        assert min(counts) == 1 and max(counts) == cores
        assert counts == sorted(counts, reverse=True)


def test_an_explicit_thread_variable_wins_over_the_load(monkeypatch):
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert rd.default_torch_threads(cpu_count=2, load=9.0) == 3
    monkeypatch.setenv("MKL_NUM_THREADS", "2")  # as in torch: MKL_NUM_THREADS wins
    assert rd.default_torch_threads(cpu_count=8, load=0.0) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "zero")  # not a count: ignored, OMP_NUM_THREADS holds
    assert rd.default_torch_threads(cpu_count=8, load=0.0) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert rd.default_torch_threads(cpu_count=8, load=0.0) == 8


def test_without_a_load_average_all_cores_are_used(no_thread_variables, monkeypatch):
    import os

    def no_load_average():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", no_load_average)
    assert rd.one_minute_load() is None
    assert rd.default_torch_threads(cpu_count=6) == 6
    monkeypatch.setattr(os, "getloadavg", lambda: (1.3, 0.0, 0.0))  # and it is read when there
    assert rd.default_torch_threads(cpu_count=2) == 1
    assert 1 <= rd.available_cores() <= (os.cpu_count() or 1)


def test_apply_sets_the_default_once_and_keeps_what_the_user_set(
        no_thread_variables, torch_threads_restored, monkeypatch):
    import torch

    torch.set_num_threads(2)  # torch's count before the first run
    decisions = []

    def decide(**kwargs):
        decisions.append(kwargs)
        return 1

    monkeypatch.setattr(rd, "default_torch_threads", decide)
    assert rd.apply_torch_threads() == 1 and torch.get_num_threads() == 1
    assert rd.apply_torch_threads() == 1 and len(decisions) == 1  # decided once per process
    torch.set_num_threads(3)  # the user's choice after the first run is kept
    assert rd.apply_torch_threads() == 3 and torch.get_num_threads() == 3
    assert len(decisions) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # an explicit variable: torch is not touched
    torch.set_num_threads(2)
    assert rd.apply_torch_threads() == 2 and torch.get_num_threads() == 2


def test_apply_reaches_a_pooled_thread_that_ran_torch_before(
        no_thread_variables, torch_threads_restored, monkeypatch):
    """torch's OpenMP count is per thread once a thread ran torch work: set where work runs."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    torch.set_num_threads(2)
    monkeypatch.setattr(rd, "default_torch_threads", lambda **kwargs: 1)
    x = torch.ones(64, 64)
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(lambda: ((x @ x).sum(), torch.get_num_threads())[1]).result() == 2
        assert rd.apply_torch_threads() == 1  # in this thread ...
        assert pool.submit(torch.get_num_threads).result() == 2  # ... not yet in the pool's
        assert pool.submit(lambda: (rd.apply_torch_threads(),
                                    torch.get_num_threads())).result() == (1, 1)


@pytest.fixture
def thread_spy(monkeypatch):
    """Replace apply_torch_threads (looked up at call time by both front ends) by a recorder."""
    calls = []

    def spy(environ=None):
        calls.append(environ)
        import torch

        return torch.get_num_threads()

    monkeypatch.setattr(rd, "apply_torch_threads", spy)
    return calls


def test_the_cli_applies_the_thread_rule_before_torch_work_only(thread_spy, tmp_path, capsys):
    import tifffile
    import torch
    from training_support import blobs

    from napari_spoco.cli import main

    image, labels = blobs((40, 40))
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    code = main(["train", "--image", str(tmp_path / "img.tif"), "--labels",
                 str(tmp_path / "lab.tif"), "--out", str(tmp_path / "m.pt"), "--features", "8",
                 "16", "--batch-size", "1", "--iterations", "1", "--device", "cpu",
                 "--no-progress"])
    assert code == 0 and len(thread_spy) == 1
    device_line = [line for line in capsys.readouterr().err.splitlines()
                   if line.startswith("Device:")]
    assert device_line == [f"Device: cpu, {torch.get_num_threads()} CPU thread(s)"]
    # a subcommand that runs no network does not set (nor import for) torch threads
    tifffile.imwrite(tmp_path / "gt.tif", labels)
    assert main(["evaluate", "--gt", str(tmp_path / "gt.tif"), "--seg",
                 str(tmp_path / "gt.tif")]) == 0
    assert len(thread_spy) == 1


def test_the_train_tab_worker_applies_the_same_rule_before_building_the_trainer(thread_spy):
    from training_support import blobs, tiny

    from napari_spoco.widgets.preview import PreviewSchedule
    from napari_spoco.widgets.workers import TrainingFinished, training_loop

    built = []

    def make_trainer():
        built.append(len(thread_spy))  # how many thread decisions came before
        return Trainer([blobs()], tiny(iterations=2, autosave_seconds=None))

    loop = training_loop(make_trainer, PreviewSchedule(enabled=False), None)
    items = []
    try:
        while True:
            items.append(next(loop))
    except StopIteration as end:
        finished = end.value
    assert built == [1] and len(thread_spy) == 1
    assert isinstance(finished, TrainingFinished) and finished.iteration == 2
    assert [getattr(item, "iteration", None) for item in items[1:]] == [1, 2]
