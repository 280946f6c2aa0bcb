"""Trainer: reports, control from other threads, EMA, reproducibility, resume and fine-tuning."""

from __future__ import annotations

import inspect
import json
import threading
import time

import numpy as np
import pytest
import torch
from training_support import blobs, tiny

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.loss import TERM_NAMES, SpocoLoss
from napari_spoco.core.model.checkpoint import load_checkpoint
from napari_spoco.core.training import LossSettings, Trainer, TrainingConfig


def run_all(trainer):
    return list(trainer.steps())


def test_reports_have_every_term_and_finite_values():
    trainer = Trainer([blobs()], tiny(iterations=3))
    reports = run_all(trainer)
    assert [r.iteration for r in reports] == [1, 2, 3]
    assert trainer.iteration == 3 and trainer.stop_reason == "iterations"
    for report in reports:
        assert set(report.terms) == {*TERM_NAMES, "fg"}
        assert np.isfinite([report.loss, report.smoothed_loss, *report.terms.values()]).all()
        assert report.iterations == 3 and report.device == "cpu"
        assert report.lr == pytest.approx(2e-4) and report.seconds_per_step > 0
    assert reports[-1].eta_seconds == 0
    # total = weighted sum of the terms with the default weights
    weights = dict(pull=1, push=1, reg=1e-3, obj=1, u_push=1, u_con=1, fg=1)
    expected = sum(weights[name] * value for name, value in reports[0].terms.items())
    assert reports[0].loss == pytest.approx(expected, rel=1e-5)


def test_config_round_trip_is_json_and_loss_defaults_match_spoco_loss():
    config = tiny(patch_shape=(16, 24), background_id=5, loss={"delta_v": 0.7})
    data = json.loads(json.dumps(config.to_dict()))
    assert TrainingConfig.from_dict(data) == config
    assert config.loss.delta_v == 0.7
    signature = inspect.signature(SpocoLoss)
    # an unresolved config's loss is that of a run from scratch (w_ucon None: decided later)
    for name, value in TrainingConfig().loss_kwargs().items():
        if name in LossSettings().__dict__:
            assert signature.parameters[name].default == value, name
    assert LossSettings().w_ucon is None
    with pytest.raises(SpocoInputError, match="Unknown"):
        TrainingConfig.from_dict({"iterations": 3, "colour": "red"})
    with pytest.raises(SpocoInputError, match="momentum"):
        TrainingConfig(momentum=1.0)


def test_g_is_the_moving_average_of_f_and_receives_no_gradient():
    m = 0.75
    trainer = Trainer([blobs()], tiny(momentum=m, iterations=2))
    f, g = trainer.model, trainer.momentum_model
    for pf, pg in zip(f.parameters(), g.parameters()):
        assert torch.equal(pf, pg)  # g starts as a copy of f
    steps = trainer.steps()
    next(steps)
    g_before = [p.detach().clone() for p in g.parameters()]
    next(steps)
    for pg, pg0, pf in zip(g.parameters(), g_before, f.parameters()):
        torch.testing.assert_close(pg, m * pg0 + (1 - m) * pf, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(pg, pf) for pg, pf in zip(g.parameters(), f.parameters()))
    assert all(not p.requires_grad and p.grad is None for p in g.parameters())
    assert all(p.grad is not None for p in f.parameters())


def test_same_seed_same_weights_other_seed_other_weights():
    states = []
    for seed in (4, 4, 5):
        trainer = Trainer([blobs()], tiny(seed=seed))
        run_all(trainer)
        states.append(trainer.model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_stop_mid_run_and_save(tmp_path):
    trainer = Trainer([blobs()], tiny(iterations=50))
    for report in trainer.steps():
        if report.iteration == 2:
            trainer.stop()
    assert trainer.iteration == 2 and trainer.stop_reason == "stopped"
    path = trainer.save(tmp_path / "stopped.pt")
    assert load_checkpoint(path)["iteration"] == 2
    # the stop request was used up: steps() continues the run
    trainer.config.iterations = 3
    assert [r.iteration for r in trainer.steps()] == [3]


def _wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_pause_resume_and_stop_while_paused_from_another_thread():
    trainer = Trainer([blobs()], tiny(iterations=100_000, batch_size=1, patch_shape=(16, 16)))
    seen = []
    worker = threading.Thread(target=lambda: seen.extend(r.iteration for r in trainer.steps()))
    worker.start()
    try:
        _wait_for(lambda: len(seen) >= 2)
        trainer.pause()
        assert trainer.paused
        _wait_for(lambda: trainer.held)  # the step running when pause() was called finished
        held = trainer.iteration
        time.sleep(0.5)
        assert trainer.iteration == held and trainer.held and worker.is_alive()
        trainer.resume()
        _wait_for(lambda: trainer.iteration > held + 1)
        assert not trainer.held
        trainer.pause()
        _wait_for(lambda: trainer.held)
        trainer.stop()  # must end the generator although it is paused
        worker.join(timeout=30)
        assert not worker.is_alive()
    finally:
        trainer.stop()
        trainer.resume()
        worker.join(timeout=30)
    assert trainer.stop_reason == "stopped" and trainer.iteration < 100_000
    assert seen == list(range(1, trainer.iteration + 1))


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    straight = Trainer([blobs()], tiny(iterations=4))
    run_all(straight)

    first = Trainer([blobs()], tiny(iterations=4))
    steps = first.steps()
    next(steps), next(steps)
    path = first.save(tmp_path / "half.pt")
    resumed = Trainer.from_checkpoint(path, [blobs()])
    assert resumed.iteration == 2 and resumed.config == first.config
    saved_state = first.optimizer.state_dict()["state"]
    for index, state in resumed.optimizer.state_dict()["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], saved_state[index][key])
    assert [r.iteration for r in resumed.steps()] == [3, 4]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    for key, value in straight.momentum_model.state_dict().items():
        assert torch.equal(resumed.momentum_model.state_dict()[key], value), key


def test_fine_tuning_starts_from_the_source_with_a_tenth_of_its_lr(tmp_path):
    source = Trainer([blobs()], tiny(lr=1e-3, iterations=2))
    run_all(source)
    path = source.save(tmp_path / "source.pt")
    target = blobs(shape=(40, 56), seed=9)
    tuned = Trainer([target], tiny(features=(4, 4, 4)), source=path)
    assert tuned.config.lr == pytest.approx(1e-4) and tuned.lr == pytest.approx(1e-4)
    assert tuned.config.features == (8, 16)  # the source's architecture wins
    assert tuned.scheduler is None  # fixed lr, as the paper fine-tunes
    for key, value in source.model.state_dict().items():
        assert torch.equal(tuned.model.state_dict()[key], value)
    # normalisation refitted on the target images
    assert tuned.normalization.mean[0] == pytest.approx(float(target[0].mean()), rel=1e-6)
    explicit = Trainer([target], tiny(lr=3e-5), source=path)
    assert explicit.lr == pytest.approx(3e-5)
    kept = Trainer([target], tiny(normalization="source"), source=path)
    assert kept.normalization == source.normalization


def test_source_of_other_dimensionality_or_channels_is_refused(tmp_path):
    source = Trainer([blobs()], tiny(iterations=1))
    run_all(source)
    path = source.save(tmp_path / "source2d.pt")
    volume = blobs(shape=(8, 32, 32))
    with pytest.raises(SpocoInputError, match="2D"):
        Trainer([volume], tiny(ndim=3, patch_shape=None), source=path)
    with pytest.raises(SpocoInputError, match="3D"):  # ndim inferred from the source
        Trainer([volume], tiny(patch_shape=None), source=path)
    image, labels = blobs()
    two_channels = np.stack([image, image])
    with pytest.raises(SpocoInputError, match="channel"):
        Trainer([(two_channels, labels)], tiny(channel_axis=0), source=path)


@pytest.mark.parametrize("problem, match", [
    ("shape", "shape"),
    ("no_labels", "No labeled pixel"),
    ("nan", "NaN"),
    ("constant", "constant"),
    ("ndim", "axes"),
])
def test_bad_inputs_raise_clear_errors_before_training(problem, match):
    image, labels = blobs()
    if problem == "shape":
        labels = labels[:40]
    elif problem == "no_labels":
        labels = np.zeros_like(labels)
    elif problem == "nan":
        image = image.copy()
        image[3, 3] = np.nan
    elif problem == "constant":
        image = np.full_like(image, 7.0)
    elif problem == "ndim":
        image = image[None, None]
        labels = labels[None, None]
    with pytest.raises(SpocoInputError, match=match):
        Trainer([(image, labels)], tiny())


def test_set_labels_reaches_the_data_and_is_checked():
    image, labels = blobs()
    trainer = Trainer([(image, labels)], tiny(iterations=1))
    assert trainer.data.objects_per_pair() == [3]
    more = labels.copy()
    more[40:46, 40:46] = 99
    trainer.set_labels(0, more)
    assert trainer.data.objects_per_pair() == [4]
    with pytest.raises(SpocoInputError):
        trainer.set_labels(0, more[:10])
    run_all(trainer)


def test_lr_drops_by_factor_on_plateau_and_training_stops_below_min_lr():
    # patience 0: every step without a new best smoothed loss lowers the lr
    trainer = Trainer([blobs()], tiny(iterations=200, lr=1e-3, lr_patience=0, min_lr=5e-5,
                                      loss_smoothing=0.0))
    reports = run_all(trainer)
    lrs = sorted({round(r.lr, 12) for r in reports}, reverse=True)
    assert lrs[:2] == pytest.approx([1e-3, 2e-4])
    assert trainer.stop_reason == "lr" and trainer.iteration < 200
    assert reports[-1].lr < 5e-5 <= reports[-2].lr


def test_autosave_by_iterations_and_at_the_end(tmp_path):
    path = tmp_path / "auto.pt"
    trainer = Trainer([blobs()], tiny(iterations=3, autosave_iterations=2,
                                      autosave_seconds=None), autosave_path=path)
    steps = trainer.steps()
    next(steps)
    assert not path.exists()
    next(steps), next(steps)  # the autosave happens after the second report is consumed
    assert load_checkpoint(path)["iteration"] == 2
    assert list(steps) == []
    assert load_checkpoint(path)["iteration"] == 3


def test_non_finite_loss_is_reported_and_weights_stay(monkeypatch):
    trainer = Trainer([blobs()], tiny())
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real = trainer.loss_fn.forward

    def nan_loss(*args, **kwargs):
        total, terms = real(*args, **kwargs)
        return total * float("nan"), terms

    monkeypatch.setattr(trainer.loss_fn, "forward", nan_loss)
    with pytest.raises(SpocoInputError, match="non-finite"):
        run_all(trainer)
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.iteration == 0


def test_short_3d_training_runs_end_to_end(tmp_path):
    volume = blobs(shape=(8, 40, 40), seed=2)
    config = tiny(patch_shape=(8, 24, 24), anisotropic_levels=1, iterations=2)
    trainer = Trainer([volume], config)
    reports = run_all(trainer)
    assert trainer.config.ndim == 3 and trainer.model.config["anisotropic_levels"] == 1
    assert len(reports) == 2 and np.isfinite(reports[-1].loss)
    assert load_checkpoint(trainer.save(tmp_path / "3d.pt"))["architecture"]["ndim"] == 3


def test_the_run_settings_are_resolved_without_changing_the_users_config(tmp_path):
    from training_support import blobs, tiny

    from napari_spoco.core.training.config import resolve_config

    chosen = tiny(lr=None, iterations=0, method="crac")
    before = chosen.to_dict()
    first = Trainer([blobs()], chosen).config
    assert chosen.to_dict() == before  # the caller's config is never mutated
    assert first.to_dict() == Trainer([blobs()], chosen).config.to_dict()  # same in, same out
    assert first.lr == pytest.approx(2e-4) and first.affinity_channels > 0 and first.ndim == 2
    source = Trainer([blobs()], tiny(lr=1e-3, iterations=0)).save(tmp_path / "source.pt")
    from napari_spoco.core.model.checkpoint import load_checkpoint

    tuned = resolve_config(tiny(lr=None), [blobs()], load_checkpoint(source), str(source))
    assert tuned.lr == pytest.approx(1e-4)  # a tenth of the source's, decided in one place
