"""Data-parallel training (core/training/distributed.py) and the mixed-precision decisions.

The 2-process run uses gloo on the CPU through ``torchrun`` (tests/distributed_worker.py),
augmentation on, a loss without random anchors (``anchor_at_mean``, consistency weight 0) and
without the foreground head, whose class balancing is per rank batch (see distributed.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_worker import exact_config
from training_support import blobs, tiny

from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.model.checkpoint import load_checkpoint
from napari_spoco.core.training import Trainer, distributed

WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(WORKER), str(out)], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "result.json").read_text())


def test_two_ranks_equal_one_process_with_the_combined_batch(two_rank_run, tmp_path):
    out, result = two_rank_run
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    single = Trainer([blobs()], exact_config(batch_size=2), autosave_path=tmp_path / "one.pt")
    losses = [report.loss for report in single.steps()]
    # float32 sums in another order (all-reduce vs one mean): agreement to ~1e-6 relative
    np.testing.assert_allclose(result["losses"], losses, rtol=1e-4)
    assert len(set(np.round(losses, 3))) > 1  # a real curve, not a constant

    saved = load_checkpoint(out / "rank0.pt")  # weights_only=True inside
    assert saved["iteration"] == 5
    for key in ("model_state", "momentum_state"):
        ours = single.checkpoint_payload()[key]
        for name, value in ours.items():
            torch.testing.assert_close(saved[key][name], value, rtol=1e-4, atol=1e-5)


def test_only_rank_0_writes_and_f_and_g_stay_identical_across_ranks(two_rank_run):
    out, result = two_rank_run
    assert (out / "rank0.pt").exists() and not (out / "rank1.pt").exists()
    assert result["spread"] == {"f": 0.0, "g": 0.0}


def test_rank_batch_is_the_slice_of_the_global_batch():
    from napari_spoco.core.training.data import TrainingData

    data = TrainingData([blobs()], ndim=2, patch_shape=(16, 16))
    whole = data.sample_batch(4, np.random.default_rng(5))
    for rank in (0, 1):
        part = distributed.rank_batch(data, 2, np.random.default_rng(5),
                                      distributed.DistContext(rank, 2))
        for full, mine in zip(whole, part):
            assert torch.equal(full[2 * rank:2 * rank + 2], mine)


def test_adversarial_term_is_refused_when_distributed():
    config = tiny(adversarial={})
    with pytest.raises(SpocoInputError, match="distributed"):
        distributed.check_supported(config, distributed.DistContext(0, 2))
    distributed.check_supported(config, distributed.DistContext())  # one process: fine


def test_amp_decision_and_device_line():
    assert distributed.amp_dtype("cpu") is None
    assert distributed.amp_dtype("cuda", False) is None
    assert distributed.amp_dtype("mps", True) is None
    assert distributed.amp_dtype("cpu", True) == torch.bfloat16
    assert distributed.describe_device("cuda:0", torch.float16) == "cuda:0 (fp16)"
    assert not distributed.make_scaler(torch.device("cpu"), torch.bfloat16).is_enabled()
    assert distributed.rank_device(torch.device("cuda"), distributed.DistContext(1, 2, 1)) \
        == torch.device("cuda", 1)
    assert Trainer([blobs()], tiny(iterations=0)).amp_dtype is None  # off on the CPU


def test_bf16_autocast_on_cpu_trains_with_a_finite_loss_close_to_float32():
    losses = {}
    for amp in (False, True):
        trainer = Trainer([blobs()], tiny(mixed_precision=amp, iterations=3,
                                          autosave_seconds=None))
        losses[amp] = [report.loss for report in trainer.steps()]
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert np.isfinite(losses[True]).all()
    # bf16 has an 8-bit mantissa: the first step (same weights) agrees to a few percent
    np.testing.assert_allclose(losses[True][0], losses[False][0], rtol=0.05)


def test_cli_under_torchrun_prints_once_and_writes_one_checkpoint(tmp_path):
    image, labels = blobs()
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "model.pt"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "napari_spoco.cli", "train", "--image", str(tmp_path / "image.npy"),
         "--labels", str(tmp_path / "labels.npy"), "--out", str(out), "--iterations", "2",
         "--features", "8", "16", "--patch-shape", "32", "32", "--batch-size", "1",
         "--device", "cpu", "--no-progress"],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("Device: cpu, rank 0 of 2 (gloo), global batch 2") == 1
    assert done.stderr.count("Saved ") == 1
    assert load_checkpoint(out)["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.npy", "labels.npy",
                                                          "model.pt"]


def test_scaled_step_skips_an_overflowing_float16_step_and_says_so():
    model = torch.nn.Linear(2, 1)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=True)
    loss = model(torch.tensor([[float("inf"), 1.0]])).sum()
    with pytest.warns(RuntimeWarning, match="skipped"):
        assert not distributed.scaled_step(scaler, optimizer, loss, 7)
    assert torch.equal(model.weight, before) and scaler.get_scale() < 2.0**16
    optimizer.zero_grad()  # as Trainer._step does before every step
    loss = model(torch.ones(1, 2)).sum()
    assert distributed.scaled_step(scaler, optimizer, loss, 8)
    assert not torch.equal(model.weight, before)
