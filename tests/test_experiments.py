"""The paper-reproduction scripts in ``benchmarks/`` run end to end and fill every row.

Each script is run through its ``main`` with its ``--quick`` settings shrunk to a few
iterations on small images, so these tests check the pipelines (data, training, prediction,
clustering, metrics, table), not the numbers: ``docs/results.md`` holds the full runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import adversarial_ablation
    import sparse_vs_dense
    import transfer

    return transfer, sparse_vs_dense, adversarial_ablation


def _all_scores(results):
    for values in results.values():
        for value in values:
            yield from (value if isinstance(value, (list, tuple)) else [value])


def test_transfer_fills_every_row(scripts, monkeypatch, capsys):
    transfer = scripts[0]
    # 128² stem-like image: ~13 cells, so 1 % and 5 % each keep one cell
    monkeypatch.setitem(transfer.SETTINGS, (2, True),
                        ((128, 128), (64, 64), 1, (64, 64), 2, 2, 2))
    results = transfer.main(["--quick", "--seeds", "2", "--threads", "1", "--train-source"])
    assert list(results) == [
        "source only", "target only", "fine-tuned @1%", "fine-tuned @5%",
        "fine-tuned @10%", "fine-tuned @5% clustered", "fine-tuned @100% (dense control)",
    ]
    assert [len(v) for v in results.values()] == [1, 1, 2, 2, 2, 2, 1]
    assert all(0.0 <= score <= 1.0 for score in _all_scores(results))
    out = capsys.readouterr().out
    assert "| fine-tuned @5% clustered |" in out and "ratio fine-tuned@5% / source only" in out


def test_sparse_vs_dense_fills_every_row(scripts, capsys):
    sparse_vs_dense = scripts[1]
    results = sparse_vs_dense.main(["--quick", "--iterations", "1", "--threads", "1"])
    assert len(results) == 13
    assert {"SPOCO@0.1 w/o u_con", "dense", "dense w/o u_con"} <= set(results)
    assert not any("dense w/o u_push" in row for row in results)
    for sbd, dic in (pair for values in results.values() for pair in values):
        assert 0.0 <= sbd <= 1.0 and dic >= 0 and math.isfinite(dic)
    assert "| A.5 sparse spread" in capsys.readouterr().out


def test_nuclei_quality_rescores_kept_predictions_as_the_run_scored_them(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import nuclei_quality

    common = ["--settings", "sparse@0.4", "--seeds", "0", "--iterations", "3", "--report-at",
              "2", "--threads", "1"]
    trained = nuclei_quality.main(common + ["--keep", str(tmp_path)])
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".npz", ".npz", ".pt", ".pt"]
    rescored = nuclei_quality.main(common + ["--rescore", str(tmp_path)])
    assert [r["steps"] for r in trained[1:]] == [2, 3] == [r["steps"] for r in rescored[1:]]
    keys = ("sbd", "ap50", "adapted_rand_error", "n_seg", "min_size", "foreground")
    for run, again in zip(trained[1:], rescored[1:]):
        assert {k: run[k] for k in keys} == {k: again[k] for k in keys}
    baseline = trained[0]
    assert baseline["setting"].startswith("Otsu") and 0.5 < baseline["sbd"] < 1.0


def test_adversarial_ablation_runs_the_critic_in_3d(scripts, monkeypatch):
    ablation = scripts[2]
    monkeypatch.setitem(ablation.SETTINGS, (3, True),
                        ((8, 48, 48), (8, 32, 32), 1, (8, 32, 32), 4))
    results = ablation.main(["--quick", "--ndim", "3", "--threads", "1"])
    assert list(results) == ["SPOCO loss", "SPOCO loss + 0.1 WGAN-GP"]
    assert all(0.0 <= score <= 1.0 for score in _all_scores(results))


def test_transfer_defaults_fine_tunes_with_the_decided_consistency_weight(monkeypatch, capsys,
                                                                           tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import transfer_defaults

    target = str(tmp_path / "target.pt")
    rows = transfer_defaults.main(["--quick", "--fractions", "0.1", "0.01", "--placements",
                                   "clustered", "--seeds", "0", "--iterations", "2",
                                   "--w-ucon", "1", "--target-iterations", "2",
                                   "--target-checkpoint", target])
    # a second run scores the saved target-only model instead of training it again
    again = transfer_defaults.main(["--quick", "--fractions", "0.01", "--seeds", "0",
                                    "--iterations", "0", "--target-iterations", "2",
                                    "--target-checkpoint", target])
    assert not rows[2]["reused"] and again[2]["reused"]
    keys = ("sbd", "ap50", "adapted_rand_error", "steps")
    assert {k: again[2][k] for k in keys} == {k: rows[2][k] for k in keys}
    names = [row["row"] for row in rows]
    # one painted cell (@1 %) is no group of neighbours: no clustered run for it
    assert names == ["seeded watershed of the membranes", "source only", "target only",
                     "fine-tuned @0.1 clustered, default", "fine-tuned @0.1 clustered, w_ucon 1"]
    assert rows[2]["steps"] == 2
    rows = [rows[0], rows[1], *rows[3:]]
    # the default run takes run_defaults' fine-tuning weight, the comparison row the paper's
    assert [row["w_ucon"] for row in rows[2:]] == [10.0, 1.0]
    assert rows[2]["painted"] == rows[3]["painted"] >= 5
    assert all(0.0 <= row[key] <= 1.0 for row in rows for key in ("sbd", "ap50"))
    assert "(mean of 1)" in capsys.readouterr().out


def test_source_training_stops_at_the_validation_plateau_and_ships_the_best(monkeypatch,
                                                                            tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import train_source_models as sources

    from napari_spoco.core.model.checkpoint import load_model

    tiny = sources.Recipe(
        name="tiny_2d", description="test", preset="ovules", train_shape=(96, 96),
        train_seeds=(1,), val_shape=(64, 64), val_seeds=(1001,), validate_every=2, patience=2,
        config={"mode": "dense", "features": (8, 16), "patch_shape": (32, 32), "batch_size": 1,
                "iterations": 40, "lr": 1e-3, "seed": 0},
    )
    monkeypatch.setitem(sources.RECIPES, "tiny_2d", tiny)
    # no later validation can beat the first by more than an SBD of 2: it stays the best
    monkeypatch.setattr(sources, "MIN_IMPROVEMENT", 2.0)
    dirs = ["--out-dir", str(tmp_path / "models"), "--docs-dir", str(tmp_path / "docs"),
            "--work-dir", str(tmp_path / "work"), "--threads", "1"]
    (tmp_path / "models").mkdir()
    assert sources.main(["tiny_2d", *dirs]) == 0
    checks = sources.read_curve(tmp_path / "docs" / "tiny_2d_validation.csv")
    # validations at 2, 4, 6; the two after the first did not improve: stop at 6, not at 40
    assert [c["iteration"] for c in checks] == [2, 4, 6]
    assert [c["best"] for c in checks] == [1, 0, 0]
    assert all(0.0 <= c["sbd"] <= 1.0 for c in checks)
    assert load_model(tmp_path / "models" / "tiny_2d.pt", "cpu").iteration == 2
    assert sources.read_curve(tmp_path / "docs" / "tiny_2d_loss.csv")[-1]["iteration"] == 6
