"""Mutex watershed and the shared segment() pipeline on embeddings with known objects."""

import sys
import types

import numpy as np
import pytest
from skimage import measure
from synthetic_embeddings import make_embeddings

from napari_spoco.core.clustering import affinities, default_edge_layout, segment
from napari_spoco.core.clustering.mutex_watershed import edge_strengths, mutex_watershed
from napari_spoco.core.errors import SpocoInputError


def same_partition(a, b):
    """True when a and b group the pixels identically (ids may differ)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    pairs = np.unique(np.stack([a, b]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


def blocks_embeddings(label_image, centers, noise=0.02, seed=0):
    """Piecewise-constant embeddings: centers[label] per pixel plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    centers = np.asarray(centers, np.float32)
    emb = np.moveaxis(centers[label_image], -1, 0)
    return (emb + rng.normal(0, noise, emb.shape)).astype(np.float32)


# --- reference mutex watershed: affogato's semantics, plain Python over a tiny graph ----------

def reference_mws(weights, offsets, number_of_attractive_channels, strides=None,
                  randomize_strides=False, algorithm="kruskal", mask=None):
    """Kruskal-order mutex watershed (Wolf et al.), as affogato's compute_mws_segmentation."""
    assert strides is None and not randomize_strides
    shape = weights.shape[1:]
    index = np.arange(int(np.prod(shape))).reshape(shape)
    edges = []
    for channel, offset in enumerate(offsets):
        src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(offset, shape))
        dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(offset, shape))
        u, v, w = index[src].ravel(), index[dst].ravel(), weights[channel][src].ravel()
        if mask is not None:
            keep = mask[src].ravel() & mask[dst].ravel()
            u, v, w = u[keep], v[keep], w[keep]
        repulsive = channel >= number_of_attractive_channels
        edges += [(-wi, repulsive, ui, vi) for ui, vi, wi in zip(u, v, w)]
    edges.sort(key=lambda edge: edge[0])
    parent = list(range(index.size))
    mutex = [set() for _ in range(index.size)]

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, repulsive, u, v in edges:
        ru, rv = find(u), find(v)
        if ru == rv or rv in mutex[ru]:
            continue
        if repulsive:
            mutex[ru].add(rv)
            mutex[rv].add(ru)
        else:
            parent[rv] = ru
            for other in mutex[rv]:
                mutex[other].discard(rv)
                mutex[other].add(ru)
            mutex[ru] |= mutex[rv]
    labels = np.array([find(i) for i in range(index.size)]).reshape(shape)
    labels = np.unique(labels, return_inverse=True)[1].reshape(shape)
    if mask is not None:
        labels = labels + 1
        labels[~mask] = 0
    return labels


@pytest.fixture
def fake_affogato(monkeypatch):
    """Make ``affogato.segmentation.compute_mws_segmentation`` importable (the reference)."""
    package = types.ModuleType("affogato")
    submodule = types.ModuleType("affogato.segmentation")
    submodule.compute_mws_segmentation = reference_mws
    package.segmentation = submodule
    monkeypatch.setitem(sys.modules, "affogato", package)
    monkeypatch.setitem(sys.modules, "affogato.segmentation", submodule)


# --- affinities ---------------------------------------------------------------------------------

def test_affinity_channel_c_at_p_joins_p_and_p_plus_offset():
    rng = np.random.default_rng(0)
    emb = rng.normal(0, 1.5, (3, 7, 9)).astype(np.float32)
    offsets = [(1, 0), (0, 1), (0, -3), (-2, 1)]
    affs = affinities(emb, offsets, delta_d=2.0)
    for channel, (dy, dx) in enumerate(offsets):
        for y in range(7):
            for x in range(9):
                if 0 <= y + dy < 7 and 0 <= x + dx < 9:
                    d = np.linalg.norm(emb[:, y, x] - emb[:, y + dy, x + dx])
                    expected = max((4.0 - d) / 4.0, 0.0) ** 2
                else:
                    expected = 0.0
                assert affs[channel, y, x] == pytest.approx(expected, abs=1e-5)


def test_default_offsets():
    layout = default_edge_layout(2)
    assert layout.offsets[: layout.n_attractive] == ((1, 0), (0, 1))
    assert set(layout.offsets[2:]) == {(3, 0), (0, 3), (9, 0), (0, 9), (27, 0), (0, 27)}
    aniso = default_edge_layout(3, anisotropic=True)
    z_repulsive = sorted(o[0] for o in aniso.offsets[3:] if o[0])
    assert z_repulsive == [1, 2, 4]
    assert max(max(o[1:]) for o in aniso.offsets) == 27


# --- mutex watershed -----------------------------------------------------------------------------

@pytest.mark.parametrize("first_width", [2, 5])
def test_offset_sign_convention_splits_at_the_step(first_width):
    # one row, a jump in embedding between x = first_width - 1 and x = first_width; the
    # nearest-neighbour edge is both attractive and repulsive, so the only cut possible is the
    # edge whose strength was computed across the jump: a shifted convention cuts elsewhere
    truth = (np.arange(8) >= first_width).astype(int)[None, :]
    emb = blocks_embeddings(truth, [[0.0, 0.0], [5.0, 0.0]], noise=0.0)
    labels = mutex_watershed(emb, offsets=[(0, 1), (0, 1)], n_attractive=1, strides=1)
    assert same_partition(labels, truth)
    assert np.unique(labels).size == 2


@pytest.mark.parametrize("shape,n_objects,options", [
    ((96, 96), 12, {}), ((12, 40, 40), 10, {}), ((6, 40, 40), 8, {"anisotropic": True}),
])
def test_mws_recovers_clean_objects_exactly(shape, n_objects, options):
    emb, truth = make_embeddings(shape, n_objects, noise=0.1, boundary_blur=0, seed=1)
    # segments are connected, and so are these digital Voronoi cells (not for every seed)
    assert measure.label(truth, connectivity=1).max() == n_objects
    labels = segment(emb, **options)
    assert labels.dtype == np.uint32
    assert same_partition(labels, truth)
    assert set(np.unique(labels)) == set(range(1, n_objects + 1))


def test_mws_splits_touching_objects_and_keeps_apart_equal_but_distant_ones():
    truth = np.zeros((30, 30), int)
    truth[:, 10:20] = 1
    truth[:, 20:] = 2  # touches 1, same embedding as 0 but not touching it
    emb = blocks_embeddings(truth, [[0, 0, 0], [4.5, 0, 0], [0, 0, 0]])
    labels = segment(emb)
    assert same_partition(labels, truth)
    # touching objects with the same embedding are one object
    merged = blocks_embeddings(truth, [[0, 0, 0], [0, 0, 0], [4.5, 0, 0]])
    assert same_partition(segment(merged), truth == 2)


def test_randomized_strides_are_reproducible_by_seed():
    emb, _ = make_embeddings((48, 48), 6, seed=1)
    layout = default_edge_layout(2)
    first = edge_strengths(emb, layout, 2.0, (3, 3), randomize_strides=True, seed=5)
    again = edge_strengths(emb, layout, 2.0, (3, 3), randomize_strides=True, seed=5)
    other = edge_strengths(emb, layout, 2.0, (3, 3), randomize_strides=True, seed=6)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[2:] > 0, other[2:] > 0)
    kept = np.count_nonzero(first[2:]) / np.count_nonzero(
        edge_strengths(emb, layout, 2.0, 1)[2:])
    assert 1 / 9 * 0.8 < kept < 1 / 9 * 1.2
    labels = [segment(emb, randomize_strides=True, strides=(3, 3), seed=5) for _ in range(2)]
    np.testing.assert_array_equal(*labels)


def test_random_stride_values_equal_full_computation_with_negative_offsets():
    emb, _ = make_embeddings((20, 24), 4, seed=2)
    layout = default_edge_layout(2)
    layout = type(layout)(layout.offsets[:2] + ((0, -3), (-5, 2)), 2)
    full = edge_strengths(emb, layout, 2.0, 1)
    sparse = edge_strengths(emb, layout, 2.0, (2, 2), randomize_strides=True, seed=0)
    kept = sparse > 0
    np.testing.assert_allclose(sparse[kept], full[kept])
    assert kept[2:].any() and (full[2:][~kept[2:]] > 0).any()


@pytest.mark.parametrize("strides,randomize", [((2, 2), False), ((2, 3), True), (1, False)])
def test_backends_give_the_same_segmentation(fake_affogato, strides, randomize):
    emb, _ = make_embeddings((20, 20), 5, noise=0.6, boundary_blur=1.0, seed=4)
    offsets = [(1, 0), (0, 1), (3, 0), (0, 3), (-2, 2), (5, 0)]
    kwargs = dict(offsets=offsets, n_attractive=2, strides=strides,
                  randomize_strides=randomize, seed=7)
    ours = mutex_watershed(emb, backend="mwatershed", **kwargs)
    reference = mutex_watershed(emb, backend="affogato", **kwargs)
    assert np.unique(ours).size > 5  # a non-trivial partition
    assert same_partition(ours, reference)


def test_backends_agree_with_a_mask(fake_affogato):
    emb, _ = make_embeddings((18, 18), 4, noise=0.5, seed=8)
    mask = np.ones((18, 18), bool)
    mask[5:9, :] = False
    mask[14, 14] = True
    mask[13:16, 13:16] = False
    mask[14, 14] = True  # an island of one pixel: its own segment
    kwargs = dict(mask=mask, strides=(2, 2))
    ours = mutex_watershed(emb, backend="mwatershed", **kwargs)
    reference = mutex_watershed(emb, backend="affogato", **kwargs)
    assert same_partition(ours, reference)
    assert (ours[~mask] == 0).all() and (ours[mask] > 0).all()
    assert np.count_nonzero(ours == ours[14, 14]) == 1


@pytest.mark.parametrize("shape,n_objects,kwargs", [
    ((40, 40), 6, {}),
    ((40, 40), 6, {"strides": (2, 3), "randomize_strides": True, "seed": 3}),
    ((32, 32), 5, {"mask": "holes"}),
    ((8, 24, 24), 5, {}),
    ((8, 24, 24), 5, {"anisotropic": True, "strides": 1}),
])
def test_contracted_mutex_watershed_equals_the_reference(fake_affogato, monkeypatch, shape,
                                                         n_objects, kwargs):
    """The safe-component contraction gives the plain Kruskal mutex watershed's partition."""
    mws_module = sys.modules["napari_spoco.core.clustering.mutex_watershed"]
    emb, _ = make_embeddings(shape, n_objects, noise=0.4, boundary_blur=1.0, seed=11)
    kwargs = dict(kwargs)
    if kwargs.get("mask") == "holes":
        mask = np.ones(shape, bool)
        mask[10:14, :] = False
        mask[20:23, 20:23] = False
        mask[21, 21] = True  # an island of one pixel
        kwargs["mask"] = mask
    monkeypatch.setattr(mws_module, "CONTRACTED_MAX_NODE_FRACTION", 1.0)  # never fall back
    monkeypatch.setattr(mws_module, "CONTRACTED_MAX_EDGE_FRACTION", np.inf)
    calls = []
    contracted = mws_module._run_mwatershed_contracted

    def spy(strengths, layout, strides=None):
        labels = contracted(strengths, layout, strides)
        calls.append(labels is not None)
        return labels

    monkeypatch.setattr(mws_module, "_run_mwatershed_contracted", spy)
    ours = mutex_watershed(emb, backend="mwatershed", **kwargs)
    reference = mutex_watershed(emb, backend="affogato", **kwargs)
    assert calls == [True]
    assert np.unique(ours).size > n_objects  # a non-trivial partition, with fragments
    assert same_partition(ours, reference)
    if "mask" in kwargs:
        assert (ours[~kwargs["mask"]] == 0).all() and (ours[kwargs["mask"]] > 0).all()


def test_safe_components_contract_most_pixels_into_single_segments():
    mws_module = sys.modules["napari_spoco.core.clustering.mutex_watershed"]
    emb, _ = make_embeddings((64, 64), 8, boundary_blur=0.7, seed=2)
    layout = default_edge_layout(2)
    strengths = edge_strengths(emb, layout, 2.0, (4, 4))
    repulsive = mws_module._repulsive_edge_list(strengths, layout)
    node, n_nodes = mws_module._safe_components(strengths, layout, [0, 1], repulsive)
    assert node.min() == 0 and node.max() == n_nodes - 1
    assert n_nodes < 0.2 * node.size  # the contraction pays
    # every component lies inside one segment of the uncontracted mutex watershed
    import mwatershed

    signed = strengths.copy()
    signed[2:] *= -1
    plain = mwatershed.agglom(signed, [list(o) for o in layout.offsets]).reshape(-1)
    pairs = np.unique(np.stack([node, plain]), axis=1)
    assert pairs.shape[1] == n_nodes


def test_contraction_falls_back_to_agglom_where_it_cannot_apply(monkeypatch):
    mws_module = sys.modules["napari_spoco.core.clustering.mutex_watershed"]
    emb, _ = make_embeddings((24, 24), 4, seed=3)
    diagonal = [(1, 1), (0, 1), (3, 0), (0, 3)]  # attractive (1, 1): not a step along an axis
    layout = mws_module.check_edge_layout(diagonal, 2, 2)
    strengths = edge_strengths(emb, layout, 2.0, 1)
    assert mws_module._run_mwatershed_contracted(strengths, layout) is None
    labels = mutex_watershed(emb, offsets=diagonal, n_attractive=2, strides=1,
                             backend="mwatershed")
    assert np.unique(labels).size >= 4
    # random embeddings: almost every pixel stays its own node, agglom is cheaper
    noise = np.random.default_rng(0).normal(0, 3, (4, 32, 32)).astype(np.float32)
    layout = default_edge_layout(2)
    strengths = edge_strengths(noise, layout, 2.0, (4, 4))
    assert mws_module._run_mwatershed_contracted(strengths, layout) is None


def test_auto_backend_without_affogato_and_clear_error():
    pytest.importorskip("mwatershed")
    try:
        import affogato.segmentation  # noqa: F401
        pytest.skip("affogato is installed here")
    except ImportError:
        pass
    emb, truth = make_embeddings((32, 32), 3, boundary_blur=0, noise=0.1, seed=0)
    assert same_partition(mutex_watershed(emb, backend="auto"), truth)
    with pytest.raises(SpocoInputError, match="conda-forge"):
        mutex_watershed(emb, backend="affogato")


def test_real_affogato_matches_mwatershed():
    pytest.importorskip("affogato.segmentation")
    emb, _ = make_embeddings((40, 40), 6, noise=0.5, boundary_blur=1.0, seed=4)
    assert same_partition(
        mutex_watershed(emb, backend="affogato"), mutex_watershed(emb, backend="mwatershed")
    )


# --- pipeline post-processing -------------------------------------------------------------------

def test_mask_restricts_segmentation():
    emb, truth = make_embeddings((40, 40), 5, boundary_blur=0, noise=0.1, seed=5)
    mask = np.zeros((40, 40), bool)
    mask[:, :25] = True
    for method in ("mws", "meanshift"):
        labels = segment(emb, method, mask=mask)
        assert (labels[~mask] == 0).all()
        assert same_partition(labels[mask], truth[mask])
    assert not segment(emb, mask=np.zeros((40, 40), bool)).any()


def test_merge_close_clusters_all_or_adjacent_only():
    truth = np.zeros((24, 36), int)
    truth[:, 12:24] = 1
    truth[:, 24:] = 2
    # 0 and 2 have close means (1.5 < delta_d) but do not touch; 1 is far from both
    emb = blocks_embeddings(truth, [[0, 0, 0], [6, 0, 0], [0, 1.5, 0]])
    assert same_partition(segment(emb), truth)
    assert same_partition(segment(emb, merge="adjacent"), truth)
    assert same_partition(segment(emb, merge=True), np.where(truth == 2, 0, truth))


def test_merge_touching_close_clusters():
    truth = np.zeros((24, 24), int)
    truth[:, 12:] = 1
    # 1.5 apart: MWS splits them (repulsion 0.61 beats attraction 0.39), merge joins them
    emb = blocks_embeddings(truth, [[0, 0], [1.5, 0]])
    assert np.unique(segment(emb)).size == 2
    assert np.unique(segment(emb, merge="adjacent")).size == 1


def test_min_size_removes_and_fill_absorbs_small_segments():
    truth = np.zeros((30, 30), int)
    truth[:, 15:] = 1
    truth[4:7, 4:7] = 2  # 9 pixels
    emb = blocks_embeddings(truth, [[0, 0], [5, 0], [0, 5]])
    labels = segment(emb, min_size=10, fill=False)
    assert (labels[4:7, 4:7] == 0).all() and np.unique(labels).tolist() == [0, 1, 2]
    filled = segment(emb, min_size=10, fill=True)
    assert same_partition(filled, np.minimum(truth, 1) * (truth != 2))
    assert np.unique(filled).tolist() == [1, 2]


def test_ids_are_consecutive_from_one():
    emb, _ = make_embeddings((64, 64), 9, seed=6)
    for kwargs in ({}, {"min_size": 30}, {"merge": True}):
        labels = segment(emb, **kwargs)
        ids = np.unique(labels[labels > 0])
        np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))


@pytest.mark.parametrize("call,match", [
    (lambda e: segment(e[0]), "channels first"),
    (lambda e: segment(e, "kmeans"), "Unknown clustering method"),
    (lambda e: segment(e, mask=np.ones((3, 3), bool)), "mask"),
    (lambda e: segment(e, strides=(0, 4)), "strides"),
    (lambda e: segment(e, min_cluster_size=5), "Unknown parameter"),
    (lambda e: segment(e, "consistency"), "embeddings_g"),
    (lambda e: segment(e.astype(int)), "floating point"),
    (lambda e: segment(np.where(e > 0, np.nan, e)), "NaN"),
    (lambda e: segment(e, offsets=[(1, 0, 0)]), "offset"),
    (lambda e: segment(e, min_size=-1), "min_size"),
    (lambda e: segment(e, "hdbscan", max_samples="many"), "max_samples"),
    (lambda e: segment(e, merge="nearby"), "merge"),
])
def test_input_errors_say_what_to_do(call, match):
    emb, _ = make_embeddings((16, 16), 2, n_channels=4, seed=0)
    with pytest.raises(SpocoInputError, match=match):
        call(emb)
