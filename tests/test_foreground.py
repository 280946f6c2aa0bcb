"""The foreground head: targets, loss, learning, checkpoints and the fine-tuning head."""

import numpy as np
import pytest
import torch
from training_support import blobs, tiny

from napari_spoco.core.inference.prediction import predict_embeddings, predict_with_foreground
from napari_spoco.core.loss.foreground import foreground_loss, foreground_targets, object_rings
from napari_spoco.core.model.checkpoint import load_model, save_checkpoint
from napari_spoco.core.model.unet import UNet
from napari_spoco.core.training import Trainer
from napari_spoco.core.training.sampling import background_strokes


def test_targets_follow_the_label_convention():
    labels = torch.tensor([[0, 3, 7, 9]])
    is_object, known = foreground_targets(labels, "sparse", background_id=7, ignore_id=9)
    assert is_object.tolist() == [[False, True, False, False]]
    assert known.tolist() == [[False, True, True, False]]
    is_object, known = foreground_targets(labels, "dense")
    assert is_object.tolist() == [[False, True, True, True]] and known.all()


def test_loss_uses_known_pixels_and_the_ring_around_objects_only():
    logits = torch.zeros(1, 1, 6, requires_grad=True)
    labels = torch.tensor([[[0, 0, 0, 0, 0, 0]]])
    loss = foreground_loss(logits, labels, "sparse")
    assert loss.item() == 0.0
    loss.backward()  # still attached to the graph
    # an object pixel, its unlabeled ring pixel and a stroke: BCE of logit 0 is log 2 each
    labels = torch.tensor([[[0, 0, 5, 0, 0, 8]]])
    assert foreground_loss(logits, labels, "sparse", background_id=8).item() == pytest.approx(
        np.log(2))
    # unlabeled pixels away from objects change nothing; the ring is background, each of its
    # pixels weighing like an object pixel (two ring pixels beside one object pixel: weight 2)
    far = torch.tensor([[[9.0, 0.0, 0.0, 0.0, -9.0, 0.0]]])
    assert foreground_loss(far, labels, "sparse", background_id=8).item() == pytest.approx(
        np.log(2))
    ring = torch.tensor([[[0.0, 9.0, 0.0, -9.0, 0.0, 0.0]]])
    ring_bce = (np.log1p(np.exp(9.0)) + np.log1p(np.exp(-9.0))) / 2
    assert foreground_loss(ring, labels, "sparse", background_id=8).item() == pytest.approx(
        (2 * np.log(2) + 2 * ring_bce) / 4, rel=1e-5)
    assert foreground_loss(ring, labels, "sparse", background_id=8,
                           ring_width=0).item() == pytest.approx(np.log(2))
    # the ignore id stays out of every class, the ring included
    ignored = torch.tensor([[[0, 9, 5, 9, 0, 8]]])
    assert foreground_loss(ring, ignored, "sparse", background_id=8,
                           ignore_id=9).item() == pytest.approx(np.log(2))


def test_dense_background_next_to_objects_weighs_like_object_pixels():
    labels = torch.tensor([[[0, 0, 5, 0, 0, 0]]])  # dense: every 0 is known background
    logits = torch.tensor([[[0.0, 9.0, 0.0, -9.0, 3.0, -3.0]]])
    bce = lambda x, target: float(np.log1p(np.exp(-x if target else x)))  # noqa: E731
    far = (bce(0.0, 0) + bce(3.0, 0) + bce(-3.0, 0)) / 3
    ring = (bce(9.0, 0) + bce(-9.0, 0)) / 2
    expected = (bce(0.0, 1) + far + 2 * ring) / 4
    assert foreground_loss(logits, labels, "dense").item() == pytest.approx(expected, rel=1e-5)
    # without the ring the edge is part of the background class
    plain = (bce(0.0, 1) + (far * 3 + ring * 2) / 5) / 2
    assert foreground_loss(logits, labels, "dense", ring_width=0).item() == pytest.approx(
        plain, rel=1e-5)


def test_rings_are_in_plane_in_3d():
    is_object = torch.zeros(1, 3, 5, 5, dtype=torch.bool)
    is_object[0, 1, 2, 2] = True
    ring = object_rings(is_object, ~is_object, 1)
    assert ring[0, 1].sum() == 8 and not ring[0, 0].any() and not ring[0, 2].any()


def test_head_learns_the_background_from_a_few_strokes():
    image, truth = blobs()
    painted = truth.copy()
    painted[truth == 30] = 0  # one object left unlabeled: the head must call it foreground
    painted[background_strokes(truth, n_strokes=4, length=20, seed=0)] = 99
    config = tiny(iterations=120, mode="sparse", background_id=99, augment=False,
                  patch_shape=(48, 48))
    trainer = Trainer([(image, painted)], config)
    for _ in trainer.steps():
        pass
    _, foreground = predict_with_foreground(trainer.model, image, trainer.normalization,
                                            device="cpu")
    from scipy import ndimage

    far = ndimage.distance_transform_edt(truth == 0) > 4  # object borders are uncertain
    assert foreground[far].mean() < 0.3 and (foreground[far] < 0.5).mean() > 0.8
    # the unlabeled object is foreground too: clearly inside, and as a segment (mean)
    inside = ndimage.binary_erosion(truth == 30, iterations=2)
    assert foreground[inside].mean() > 0.8 and foreground[truth == 30].mean() > 0.7


def test_head_is_optional_and_predict_embeddings_drops_it():
    net = UNet(out_channels=4, features=(4, 8), foreground=True)
    image = np.random.default_rng(0).normal(size=(24, 24)).astype(np.float32)
    embeddings = predict_embeddings(net, image, device="cpu")
    with_fg, foreground = predict_with_foreground(net, image, device="cpu")
    assert embeddings.shape == with_fg.shape == (4, 24, 24)
    np.testing.assert_array_equal(embeddings, with_fg)
    assert foreground.shape == (24, 24) and ((foreground > 0) & (foreground < 1)).all()
    plain = UNet(out_channels=4, features=(4, 8))
    assert predict_with_foreground(plain, image, device="cpu")[1] is None


def test_tiled_foreground_matches_a_whole_image_pass():
    torch.manual_seed(0)
    net = UNet(out_channels=4, features=(4, 8), norm=None, foreground=True).eval()
    image = np.random.default_rng(1).normal(size=(96, 80)).astype(np.float32)
    whole = predict_with_foreground(net, image, device="cpu")[1]
    tiled = predict_with_foreground(net, image, tile_shape=48, overlap=32, device="cpu")[1]
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def _legacy_checkpoint(path):
    """A checkpoint as written before the foreground head existed."""
    trainer = Trainer([blobs()], tiny(iterations=0, foreground=False))
    payload = trainer.checkpoint_payload()
    del payload["annotations"]
    payload["architecture"].pop("foreground")
    for key in ("foreground", "foreground_weight"):
        payload["config"].pop(key)
    save_checkpoint(path, payload)
    return trainer


def test_checkpoints_without_the_head_load_and_fine_tune_with_a_new_head(tmp_path):
    source = _legacy_checkpoint(tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    assert loaded.architecture["foreground"] is False and loaded.annotations == {}
    resumed = Trainer.from_checkpoint(tmp_path / "old.pt", [blobs()], iterations=1)
    assert resumed.model.foreground is False  # resuming keeps the network as it was

    tuned = Trainer([blobs()], tiny(iterations=0), source=tmp_path / "old.pt")
    assert tuned.model.foreground is True and tuned.config.foreground is True
    old_state, new_state = source.model.state_dict(), tuned.model.state_dict()
    for key, value in old_state.items():
        torch.testing.assert_close(new_state[key], value)
    assert {k for k in new_state if k not in old_state} == {
        "foreground_head.weight", "foreground_head.bias"}
    tuned.save(tmp_path / "tuned.pt")
    assert load_model(tmp_path / "tuned.pt").architecture["foreground"] is True


def test_background_strokes_stay_off_objects_in_2d_and_3d():
    labels = np.zeros((4, 64, 64), np.uint32)
    labels[:, 10:30, 10:30] = 1
    labels[:, 40:60, 35:60] = 2
    for array in (labels[0], labels):
        strokes = background_strokes(array, n_strokes=5, seed=3)
        assert strokes.sum() > 40
        assert not strokes[array > 0].any()
        # at least margin (3 px) from any object
        from scipy import ndimage

        assert ndimage.distance_transform_edt(array == 0)[strokes].min() > 3
    assert not background_strokes(np.ones((16, 16), int)).any()
