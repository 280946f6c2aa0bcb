"""CRAC training mode: loss terms, heads, training, checkpoints and segmentation by MWS."""

import numpy as np
import pytest
import torch

from napari_spoco.cli import main
from napari_spoco.core.errors import SpocoInputError
from napari_spoco.core.inference.crac_segmentation import predict_affinities, segment_affinities
from napari_spoco.core.inference.segmentation import segment_output, settings_for
from napari_spoco.core.io import read_array, write_array
from napari_spoco.core.loss.crac import (
    CracLoss,
    CracSettings,
    _pair_slices,
    affinity_targets,
    confident,
    edge_offsets,
    implicit_affinities,
)
from napari_spoco.core.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from napari_spoco.core.model.unet import UNet
from napari_spoco.core.training import Trainer, TrainingConfig

OFFSETS = edge_offsets(2)


def _labels():
    labels = torch.zeros(1, 24, 24, dtype=torch.long)
    labels[0, 2:10, 2:10] = 1
    labels[0, 12:22, 4:14] = 2
    return labels


def _logits_from(values_per_offset, shape):
    """Full ``(1, C, *shape)`` logits whose valid region holds the given per-offset values."""
    logits = torch.zeros((1, len(OFFSETS)) + shape)
    for channel, (offset, values) in enumerate(zip(OFFSETS, values_per_offset)):
        source, _ = _pair_slices(shape, offset)
        logits[:, channel:channel + 1][source] = values.unsqueeze(1)
    return logits


def test_targets_follow_the_sparse_convention():
    labels = torch.tensor([[[1, 1, 0, 2, 0, 0]]])
    (target, known), = affinity_targets(labels, [(0, 1)])
    assert target.tolist() == [[[1.0, 0.0, 0.0, 0.0, 1.0]]]
    # object-unlabeled pairs are known (0); unlabeled-unlabeled pairs are not
    assert known.tolist() == [[[True, True, True, True, False]]]
    dense = affinity_targets(labels, [(0, 1)], mode="dense")[0][1]
    assert bool(dense.all())


def test_perfect_affinities_give_near_zero_supervised_loss():
    labels = _labels()
    embeddings = (labels.float() * 10.0).unsqueeze(1).repeat(1, 2, 1, 1)  # objects far apart
    targets = affinity_targets(labels, OFFSETS)
    perfect = _logits_from([(t * 2 - 1) * 20.0 for t, _ in targets], (24, 24))
    _, terms = CracLoss(OFFSETS)(embeddings, perfect, labels)
    assert terms["aff_exp"] < 1e-6 and terms["aff_imp"] < 1e-6
    _, wrong = CracLoss(OFFSETS)(embeddings, -perfect, labels)
    assert wrong["aff_exp"] > 10.0


def test_consistency_vanishes_when_explicit_equals_implicit():
    labels = _labels()
    embeddings = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 0.5
    implicit = implicit_affinities(embeddings, OFFSETS, 2.0)
    equal = _logits_from([torch.logit(a) for a in implicit], (24, 24))
    _, terms = CracLoss(OFFSETS)(embeddings, equal, labels)
    assert terms["aff_con"] < 1e-10
    _, other = CracLoss(OFFSETS)(embeddings, torch.full_like(equal, -3.0), labels)
    assert other["aff_con"] > 1e-2


def test_only_confident_pairs_supervise_and_the_confident_share_grows():
    p = torch.tensor([0.02, 0.5, 0.97, 0.45, 0.55, 0.999])
    everything = torch.ones(6, dtype=torch.bool)
    kept = confident(p, everything, 0.5)
    assert kept.tolist() == [True, False, True, False, False, True]
    assert confident(p, everything, 0.0).all()
    loss = CracLoss(OFFSETS, settings=CracSettings(alpha0=0.5, alpha_power=1.5))
    assert loss.alpha(0, 100) == pytest.approx(0.5)
    assert loss.alpha(50, 100) < loss.alpha(10, 100) and loss.alpha(100, 100) == 0.0
    # an uncertain explicit map (p = 0.5 everywhere) must not pull the implicit map: the only
    # gradient the embeddings get from the consistency term comes from confident pairs
    labels = torch.zeros(1, 24, 24, dtype=torch.long)  # nothing known: consistency only
    embeddings = torch.rand(1, 2, 24, 24, generator=torch.Generator().manual_seed(1))
    embeddings.requires_grad_(True)
    uncertain = torch.zeros(1, len(OFFSETS), 24, 24, requires_grad=True)
    total, _ = CracLoss(OFFSETS)(embeddings, uncertain, labels, iteration=0, iterations=10)
    total.backward()
    assert float(embeddings.grad.abs().sum()) == 0.0  # all explicit pairs tie at max entropy
    assert float(uncertain.grad.abs().sum()) > 0.0  # the explicit map still learns


def test_gradient_reaches_both_heads():
    net = UNet(out_channels=4, features=(4, 8), num_groups=2, affinity_channels=len(OFFSETS))
    out, logits = net(torch.rand(1, 1, 24, 24), with_affinities=True)
    assert out.shape == (1, 4, 24, 24) and logits.shape == (1, len(OFFSETS), 24, 24)
    total, _ = CracLoss(OFFSETS)(out, logits, _labels())
    total.backward()
    assert float(net.head.weight.grad.abs().sum()) > 0
    assert float(net.affinity_head.weight.grad.abs().sum()) > 0
    assert net(torch.rand(1, 1, 24, 24)).shape == (1, 4, 24, 24)  # forward unchanged


def _pair():
    rng = np.random.default_rng(0)
    labels = np.zeros((48, 48), np.uint32)
    image = rng.normal(0, 0.1, (48, 48)).astype(np.float32)
    for index, (y, x) in enumerate([(4, 4), (4, 28), (28, 6), (26, 30)], start=1):
        image[y:y + 14, x:x + 14] += 1.0
        labels[y:y + 14, x:x + 14] = index
    image[:, 46:] += 0.0
    return image, labels


def _config(**changes):
    settings = dict(features=(8, 16), num_groups=4, patch_shape=(32, 32), batch_size=2,
                    iterations=60, device="cpu", autosave_seconds=None, lr=3e-3, method="crac")
    return TrainingConfig(**{**settings, **changes})


def _explicit_accuracy(model, image, labels):
    with torch.no_grad():
        _, logits = model.eval()(torch.from_numpy(image)[None, None], with_affinities=True)
    model.train()
    correct = total = 0
    for (target, known), channel in zip(
            affinity_targets(torch.from_numpy(labels.astype(np.int64))[None], OFFSETS),
            range(len(OFFSETS))):
        source, _ = _pair_slices(image.shape, OFFSETS[channel])
        predicted = logits[:, channel:channel + 1][source][:, 0] > 0
        correct += int(((predicted == (target > 0.5)) & known).sum())
        total += int(known.sum())
    return correct / total


def test_short_crac_training_improves_explicit_affinities():
    image, labels = _pair()
    sparse = labels.copy()
    sparse[sparse >= 3] = 0  # half the objects painted
    trainer = Trainer([(image, sparse)], _config())
    before = _explicit_accuracy(trainer.model, image, labels)
    reports = list(trainer.steps())
    after = _explicit_accuracy(trainer.model, image, labels)  # also the unpainted objects
    assert {"aff_exp", "aff_imp", "aff_con"} <= set(reports[-1].terms)
    assert after > before + 0.1 and after > 0.8


@pytest.fixture(scope="module")
def crac_checkpoint(tmp_path_factory):
    image, labels = _pair()
    trainer = Trainer([(image, labels)], _config(iterations=20))
    list(trainer.steps())
    path = trainer.save(tmp_path_factory.mktemp("crac") / "crac.pt")
    return path, image, trainer


def test_checkpoint_round_trip_keeps_the_affinity_head(crac_checkpoint, tmp_path):
    path, image, trainer = crac_checkpoint
    loaded = load_model(path, "cpu")
    assert loaded.architecture["affinity_channels"] == len(OFFSETS)
    assert loaded.config["method"] == "crac"
    x = torch.from_numpy(image)[None, None]
    with torch.no_grad():
        expected = trainer.model.eval()(x, with_affinities=True)[1]
        got = loaded.model(x, with_affinities=True)[1]
    trainer.model.train()
    assert torch.allclose(expected, got)
    resumed = Trainer.from_checkpoint(path, [(image, _pair()[1])], iterations=21)
    assert resumed.iteration == 20 and resumed.crac_loss is not None
    # a checkpoint written before the key existed still loads, without the head
    old = load_checkpoint(path)
    spoco = Trainer([(image, _pair()[1])], _config(method="spoco", iterations=0))
    payload = spoco.checkpoint_payload()
    payload["architecture"].pop("affinity_channels")
    payload["config"].pop("method"), payload["config"].pop("affinity_channels")
    payload["config"].pop("crac")
    legacy = load_model(save_checkpoint(tmp_path / "old.pt", payload), "cpu")
    assert legacy.model.affinity_head is None and old["architecture"]["affinity_channels"]
    assert settings_for(legacy).affinity_source == "embeddings"


def test_crac_checkpoint_segments_by_mws_on_explicit_affinities(crac_checkpoint, tmp_path):
    path, image, _ = crac_checkpoint
    loaded = load_model(path, "cpu")
    settings = settings_for(loaded)
    assert settings.method == "mws" and settings.affinity_source == "explicit"
    assert settings_for(loaded, method="hdbscan").affinity_source == "embeddings"
    with pytest.raises(SpocoInputError, match="affinities"):
        segment_output(np.zeros((16, 48, 48), np.float32), None, settings)
    affinities = predict_affinities(loaded.model, image, loaded.normalization, device="cpu")
    assert affinities.shape == (len(OFFSETS), 48, 48)
    assert 0.0 <= affinities.min() and affinities.max() <= 1.0
    expected = segment_output(None, None, settings, affinities=affinities)
    assert np.array_equal(expected, segment_affinities(affinities, settings))
    write_array(tmp_path / "image.npy", image)
    out = tmp_path / "labels.npy"
    status = main(["segment", "--checkpoint", str(path), "--image", str(tmp_path / "image.npy"),
                   "--out", str(out), "--device", "cpu", "--no-progress"])
    assert status == 0
    assert np.array_equal(read_array(out), expected)


def test_crac_fine_tunes_a_spoco_source_with_a_new_affinity_head(tmp_path):
    """A SPOCO-only source (no affinity head) fine-tuned with "crac": the backbone and g load,
    the head starts new, learns, and the result segments on its explicit affinities."""
    image, labels = _pair()
    source = Trainer([(image, labels)], _config(method="spoco", iterations=10))
    list(source.steps())
    path = source.save(tmp_path / "spoco.pt")
    assert load_model(path, "cpu").model.affinity_head is None
    sparse = labels.copy()
    sparse[sparse >= 3] = 0
    tuned = Trainer([(image, sparse)], _config(iterations=60, lr=None), source=path)
    assert tuned.config.affinity_channels == len(OFFSETS)
    assert tuned.config.lr == pytest.approx(source.config.lr / 10)  # the fine-tuning default
    for network, trained in ((tuned.model, source.model), (tuned.momentum_model,
                                                           source.momentum_model)):
        own, loaded = network.state_dict(), trained.state_dict()
        assert set(own) - set(loaded) == {"affinity_head.weight", "affinity_head.bias"}
        assert all(torch.equal(own[key], loaded[key].to(own[key].device)) for key in loaded)
    # the new head is the one a network built with this seed starts with, not zeros
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tuned.config.seed)
        fresh = UNet.from_config(tuned.config.architecture)
    assert torch.equal(tuned.model.affinity_head.weight, fresh.affinity_head.weight)
    assert float(tuned.model.affinity_head.weight.detach().abs().sum()) > 0
    # the new head learns at the heads' lr, the loaded network at a tenth of the source's
    head_ids = {id(p) for p in tuned.model.affinity_head.parameters()}
    head_lr = [group["lr"] for group in tuned.optimizer.param_groups
               if {id(p) for p in group["params"]} == head_ids]
    assert head_lr == [tuned.config.foreground_lr] and tuned.lr == tuned.config.lr
    before = _explicit_accuracy(tuned.model, image, labels)
    reports = list(tuned.steps())
    after = _explicit_accuracy(tuned.model, image, labels)
    assert {"aff_exp", "aff_imp", "aff_con"} <= set(reports[-1].terms)
    # at the network's lr (3e-4) this head reached 0.57 in these 60 steps; here 0.75
    assert after > before + 0.25 and after > 0.65, (before, after)
    assert settings_for(tuned).affinity_source == "explicit"
    # from scratch, and from a source that has the head, it learns with the network
    scratch = Trainer([(image, sparse)], _config(iterations=0))
    again = Trainer([(image, sparse)], _config(iterations=0, lr=None),
                    source=tuned.save(tmp_path / "tuned.pt"))
    for trainer in (scratch, again):
        assert {group["lr"] for group in trainer.optimizer.param_groups[::2]} \
            == {trainer.config.lr}
    resumed = Trainer.from_checkpoint(tmp_path / "tuned.pt", [(image, sparse)], iterations=61)
    assert resumed.optimizer.param_groups[2]["lr"] == tuned.config.foreground_lr
    assert [r.iteration for r in resumed.steps()] == [61]
