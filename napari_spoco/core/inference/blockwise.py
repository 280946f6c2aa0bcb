"""Prediction and segmentation of volumes larger than memory, block by block, on dask.

The volume is cut into a grid of **blocks**. Each block is predicted and segmented on its own,
together with a **halo** of context around it, and only its core is kept; a second step stitches
the block labellings into one. Memory is bounded by one block (plus its halo) per worker,
whatever the size of the volume, and blocks run in parallel on a ``dask.distributed`` cluster
(a ``LocalCluster`` by default, or any scheduler address), or one after the other in this
process (``scheduler="synchronous"``, what the napari dock uses).

Why the blocks agree with a whole-volume run (docs/method.md, "Blockwise segmentation"):

- **Prediction**: group norm is frozen once to volume-wide statistics
  (``prediction.frozen_network``, calibration tiles spread over the whole volume) before any
  block runs, so a block's embeddings equal the whole-volume ones wherever the halo covers the
  network's context.
- **Segmentation**: each block's mutex watershed runs on its core plus the part of the halo
  whose embeddings are exact (``halo - context`` deep: 7 x 14 x 14 voxels for the shipped 3D
  model), so it sees objects crossing a face, though not every long repulsive edge of a pixel
  next to the face (they reach 27 pixels in-plane); most disagreements with a whole-volume run
  lie within a few pixels of a face (benchmarks/bench_blockwise.py).
- **Stitching by overlap**: two neighbouring blocks both segment a slab of ``2 * w`` pixels
  around their shared face (``w`` = half the halo): ``w`` inside each one's core, ``w`` inside
  its halo. A segment of one block and a segment of the other are the same object when they
  share more than half of each one's slab pixels; merged pairs are joined across
  the whole volume (connected components of the merge graph) and relabelled consecutively.
  The test is mutual (more than half of *each* one's slab pixels): with "half of the smaller
  one" half the merges joined different cells on the shipped 3D model, through slivers one
  block draws across the face into its neighbour's cell.

Seams that remain: an object that one block splits and its neighbour does not is merged
(the neighbour's view wins), and an object whose extent along an axis exceeds the block plus
halo may be cut differently than in a whole-volume run, because no single block sees its long
repulsive edges end to end.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SpocoInputError

#: Default block (core) shape per spatial dimensionality. 3D: a block with its default halo is
#: about 72 x 232 x 232 voxels for the shipped 3D network, predicted in one pass (about 2 GB
#: of activations on the CPU), so a 2-worker cluster fits in a few GB.
DEFAULT_BLOCK = {2: (1024, 1024), 3: (32, 160, 160)}

#: Embeddings larger than this are not held in memory by the napari dock: it predicts block by
#: block into a temporary zarr store instead (:func:`needs_blockwise`).
IN_MEMORY_LIMIT = 2 * 2**30

#: Two segments across a face are one object when they share more than this fraction of each
#: one's slab pixels.
MERGE_OVERLAP = 0.5


@dataclass(frozen=True)
class BlockGrid:
    """A volume cut into blocks with a halo: which pixels each block keeps and reads.

    Attributes
    ----------
    shape : tuple of int
        Spatial shape of the volume.
    block : tuple of int
        Core shape of a block (the last block along an axis may be smaller).
    halo : tuple of int
        Context read around each core on every side (clipped at the volume's border).
    slab : tuple of int
        Half-width ``w`` of the slab around a face that two neighbours both segment.
    context : tuple of int
        Rim of the read region (inside the volume) whose embeddings are not exact because the
        network saw past the block's edge there; it is predicted but not segmented.

    Examples
    --------
    >>> grid = BlockGrid((100, 70), (64, 64), (8, 8), (4, 4), (4, 4))
    >>> grid.grid_shape, len(grid.indices())
    ((2, 2), 4)
    >>> grid.core((1, 0)), grid.outer((1, 0))
    ((slice(64, 100, None), slice(0, 64, None)), (slice(56, 100, None), slice(0, 70, None)))
    """

    shape: tuple
    block: tuple
    halo: tuple
    slab: tuple
    context: tuple

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def grid_shape(self) -> tuple:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block))

    def indices(self) -> list:
        return list(itertools.product(*(range(n) for n in self.grid_shape)))

    def core(self, index) -> tuple:
        return tuple(slice(i * b, min((i + 1) * b, s))
                     for i, b, s in zip(index, self.block, self.shape))

    def outer(self, index) -> tuple:
        return tuple(slice(max(0, c.start - h), min(s, c.stop + h))
                     for c, h, s in zip(self.core(index), self.halo, self.shape))

    def segmented(self, index) -> tuple:
        """The read region without its inexact rim: what the block clusters."""
        return tuple(slice(o.start + (c if o.start > 0 else 0),
                           o.stop - (c if o.stop < s else 0))
                     for o, c, s in zip(self.outer(index), self.context, self.shape))

    def faces(self, index) -> list:
        """``(axis, side)`` of the faces this block shares with a neighbour (side +1 or -1)."""
        faces = []
        for axis, (i, n) in enumerate(zip(index, self.grid_shape)):
            if i > 0:
                faces.append((axis, -1))
            if i < n - 1:
                faces.append((axis, +1))
        return faces

    def face_region(self, index, axis: int, side: int) -> tuple:
        """Global region of the slab around one face: ``2 w`` thick, the core's cross-section."""
        core = list(self.core(index))
        face = core[axis].stop if side > 0 else core[axis].start
        w = self.slab[axis]
        core[axis] = slice(face - w, face + w)
        return tuple(core)


def needs_blockwise(spatial_shape, channels: int, lazy: bool) -> bool:
    """Whether a front end should predict block by block instead of into memory.

    True for a lazy image (dask, zarr: reading it whole is what its owner avoided) and for
    ``channels`` float32 embeddings over ``IN_MEMORY_LIMIT`` bytes.

    Examples
    --------
    >>> needs_blockwise((512, 512), 16, lazy=False), needs_blockwise((512, 512), 16, lazy=True)
    (False, True)
    >>> needs_blockwise((256, 1024, 1024), 16, lazy=False)  # 16 GiB of embeddings
    True
    """
    return bool(lazy) or 4 * int(channels) * int(np.prod(spatial_shape)) > IN_MEMORY_LIMIT


def plan_blocks(spatial_shape, block_shape=None, halo=None, *, context=None,
                multiple=None) -> BlockGrid:
    """The block grid for a volume.

    Parameters
    ----------
    spatial_shape : sequence of int
    block_shape : int or sequence of int, optional
        Core shape; default :data:`DEFAULT_BLOCK`. Rounded up to ``multiple``.
    halo : int or sequence of int, optional
        Default: the network's ``context`` plus half of it (at least 4 pixels), so that the
        stitching slab (``halo - context`` deep, at most half the halo) lies where both
        neighbours' embeddings are exact. Rounded up to ``multiple``.
    context : sequence of int, optional
        :func:`.prediction.network_context`; default the prediction tiles' overlap.
    multiple : sequence of int, optional
        The network's ``required_multiple``: blocks and halos on that grid keep the network's
        pooling aligned with a whole-volume pass.

    Raises
    ------
    SpocoInputError
        If the volume is not 2D or 3D, or a shape is not a positive integer per axis.
    """
    from .prediction import DEFAULT_OVERLAP

    shape = tuple(int(s) for s in spatial_shape)
    ndim = len(shape)
    if ndim not in DEFAULT_BLOCK:
        raise SpocoInputError(f"Blockwise processing takes 2D or 3D volumes, not {ndim}D.")
    multiple = (1,) * ndim if multiple is None else tuple(int(m) for m in multiple)
    context = tuple(DEFAULT_OVERLAP[ndim]) if context is None else tuple(context)
    block = _per_axis(DEFAULT_BLOCK[ndim] if block_shape is None else block_shape, ndim, "block")
    if halo is None:
        halo = tuple(c + max(4, c // 2) for c in context)
    halo = _per_axis(halo, ndim, "halo", minimum=2)
    block = tuple(min(_round_up(b, m), s) for b, m, s in zip(block, multiple, shape))
    halo = tuple(_round_up(h, m) for h, m in zip(halo, multiple))
    # the rim clipped so that the slab (at least 1 pixel) stays inside the clustered region
    context = tuple(min(c, h - 1) for c, h in zip(context, halo))
    # the last block along an axis may be thin: the slab must fit in it too
    thinnest = tuple(s - (-(-s // b) - 1) * b for s, b in zip(shape, block))
    slab = tuple(max(1, min(h // 2, h - c, t)) for h, c, t in zip(halo, context, thinnest))
    return BlockGrid(shape, block, halo, slab, context)


def _round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def _per_axis(value, ndim: int, name: str, minimum: int = 1) -> tuple:
    values = (value,) * ndim if np.isscalar(value) else tuple(value)
    if len(values) != ndim or any(int(v) != v or int(v) < minimum for v in values):
        raise SpocoInputError(
            f"The {name} shape must be {ndim} integers of at least {minimum} (one per spatial "
            f"axis), got {value!r}.")
    return tuple(int(v) for v in values)


# -- the work of one block (runs on a worker) ---------------------------------------------------


@dataclass
class BlockJob:
    """Everything a worker needs for its blocks; pickled once per worker.

    ``image`` is an array that slices lazily (zarr, a tifffile zarr view) or a path, which each
    worker opens itself (:func:`_open`) so that no file handle needs to be pickled.
    """

    network: object
    normalization: object
    image: object
    channel_axis: int | None
    grid: BlockGrid
    settings: object | None
    device: str
    labels_path: str | None
    embeddings_path: str | None
    foreground_path: str | None
    scratch: str
    torch_threads: int | None = None
    cluster: Callable | None = None


def _open(image):
    from ..io import read_array

    # opened anew per block: cheap, and a store replaced between runs is never read stale
    return read_array(image, lazy=True) if isinstance(image, (str, os.PathLike)) else image


def _open_zarr(path: str):
    import zarr

    return zarr.open_array(path, mode="r+")


def _read_region(image, region, channel_axis):
    index = list(region)
    if channel_axis is not None:
        index.insert(channel_axis, slice(None))
    return np.asarray(image[tuple(index)])


def process_block(job: BlockJob, index) -> dict:
    """Predict and (with ``job.settings``) segment one block; write its core to the stores.

    Returns the number of segments kept in the core (``n``: local ids ``1..n``) and, per face
    shared with a neighbour, the file holding the block's labels of the stitching slab.
    """
    from .prediction import predict_with_foreground

    if job.torch_threads:
        import torch

        torch.set_num_threads(int(job.torch_threads))
    grid, index = job.grid, tuple(index)
    outer, core = grid.outer(index), grid.core(index)
    inner = _within(core, outer)
    region = _read_region(_open(job.image), outer, job.channel_axis)
    # one pass over the block and its halo: no tile seams inside a block
    outer_shape = tuple(o.stop - o.start for o in outer)
    embeddings, foreground = predict_with_foreground(
        job.network, region, job.normalization, channel_axis=job.channel_axis,
        device=job.device, tile_shape=outer_shape)
    if job.embeddings_path is not None:
        _open_zarr(job.embeddings_path)[(slice(None), *core)] = embeddings[(slice(None), *inner)]
    if job.foreground_path is not None and foreground is not None:
        _open_zarr(job.foreground_path)[core] = foreground[inner]
    if job.settings is None:
        return {"index": index, "n": 0, "slabs": {}}
    segmented = grid.segmented(index)
    labels = _segment_region(job, region, embeddings, foreground, _within(segmented, outer))
    labels, n_core = core_first(labels, _within(core, segmented))
    _open_zarr(job.labels_path)[core] = labels[_within(core, segmented)]
    slabs = {}
    for axis, side in grid.faces(index):
        local = _within(grid.face_region(index, axis, side), segmented)
        name = os.path.join(job.scratch, f"{'_'.join(map(str, index))}_{axis}_{side:+d}.npy")
        np.save(name, labels[local], allow_pickle=False)
        slabs[(axis, side)] = name
    return {"index": index, "n": n_core, "slabs": slabs}


def _within(region, outer) -> tuple:
    """``region`` (global) in the coordinates of the enclosing ``outer`` region."""
    return tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, outer))


def _segment_region(job: BlockJob, region, embeddings, foreground, part) -> np.ndarray:
    from .segmentation import segment_output

    extra = {}
    if job.settings.affinity_source == "explicit":
        from .crac_segmentation import predict_affinities

        affinities = predict_affinities(
            job.network, region, job.normalization, channel_axis=job.channel_axis,
            device=job.device, tile_shape=embeddings.shape[1:])
        extra["affinities"] = affinities[(slice(None), *part)]
    foreground = None if foreground is None else foreground[part]
    return np.asarray(segment_output(embeddings[(slice(None), *part)], foreground,
                                     job.settings, cluster=job.cluster, **extra),
                      dtype=np.uint32)


def core_first(labels: np.ndarray, inner: tuple) -> tuple[np.ndarray, int]:
    """Relabel so the ``n`` segments present in the core are ``1..n``, halo-only ones after.

    Examples
    --------
    >>> labels = np.array([[7, 7, 3, 0, 5]])
    >>> core_first(labels, (slice(None), slice(2, 4)))
    (array([[3, 3, 1, 0, 2]], dtype=uint32), 1)
    """
    ids, inverse = np.unique(labels, return_inverse=True)
    in_core = np.isin(ids, labels[inner])
    in_core[ids == 0] = False
    others = ~in_core & (ids != 0)
    new = np.zeros(ids.shape, np.uint32)
    n_core = int(in_core.sum())
    new[in_core] = np.arange(1, n_core + 1)
    new[others] = np.arange(n_core + 1, n_core + 1 + int(others.sum()))
    return new[inverse].reshape(labels.shape), n_core


def face_merges(slab_a: np.ndarray, n_a: int, slab_b: np.ndarray, n_b: int,
                overlap: float = MERGE_OVERLAP) -> np.ndarray:
    """Pairs ``(a, b)`` of core segments of two neighbours that are the same object.

    ``slab_a`` and ``slab_b`` are the two blocks' labels of the same slab around their face;
    only ids ``1..n`` (segments of each block's core) can be merged.

    Examples
    --------
    >>> a = np.array([[1, 1, 2, 2, 2]]); b = np.array([[1, 1, 2, 2, 3]])
    >>> face_merges(a, 2, b, 3).tolist()  # b's 3 is a sliver of a's 2: not joined
    [[1, 1], [2, 2]]
    """
    a, b = slab_a.reshape(-1).astype(np.int64), slab_b.reshape(-1).astype(np.int64)
    size_a = np.bincount(a, minlength=n_a + 1)
    size_b = np.bincount(b, minlength=n_b + 1)
    keep = (a > 0) & (a <= n_a) & (b > 0) & (b <= n_b)
    pairs, counts = np.unique(a[keep] * (n_b + 1) + b[keep], return_counts=True)
    pa, pb = pairs // (n_b + 1), pairs % (n_b + 1)
    # mutual: most of each one's slab pixels are the other's, so a sliver that one block
    # draws across the face into its neighbour's object does not join the two
    larger = np.maximum(size_a[pa], size_b[pb])
    merged = counts > overlap * larger
    return np.stack([pa[merged], pb[merged]], axis=1)


def _merge_face(_job, name_a: str, n_a: int, name_b: str, n_b: int) -> np.ndarray:
    return face_merges(np.load(name_a), n_a, np.load(name_b), n_b)


def relabel_block(job: BlockJob, index, table: np.ndarray) -> int:
    """Write the final ids of one block's core: ``table[local id]``."""
    store = _open_zarr(job.labels_path)
    core = job.grid.core(tuple(index))
    store[core] = table[np.asarray(store[core])]
    return int(table.max(initial=0))


# -- the driver ---------------------------------------------------------------------------------


def final_ids(counts: list, merges: list) -> list:
    """Per block, the table from local id (``0..n``) to the final consecutive id.

    ``counts[k]`` is block ``k``'s number of core segments; ``merges`` holds
    ``(block_a, id_a, block_b, id_b)`` pairs of segments that are one object.

    Examples
    --------
    >>> [t.tolist() for t in final_ids([2, 1], [(0, 2, 1, 1)])]
    [[0, 1, 2], [0, 2]]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    if merges:
        m = np.asarray(merges, dtype=np.int64)
        rows, cols = offsets[m[:, 0]] + m[:, 1] - 1, offsets[m[:, 2]] + m[:, 3] - 1
    else:
        rows = cols = np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    # consecutive ids in order of first appearance (block order), 1-based
    _, first = np.unique(component, return_index=True)
    order = np.empty(first.size, np.int64)
    order[np.argsort(first)] = np.arange(1, first.size + 1)
    final = order[component] if total else np.zeros(0, np.int64)
    return [np.concatenate([[0], final[offsets[k]:offsets[k + 1]]]).astype(np.uint32)
            for k in range(len(counts))]


class _Runner:
    """Runs one function over many arguments: in this process, or on a dask cluster."""

    def __init__(self, client=None):
        self.client = client
        self._shared = None  # (job, its future on the cluster): the network goes over once

    def _scatter(self, job):
        if self._shared is None or self._shared[0] is not job:
            self._shared = (job, self.client.scatter(job, broadcast=True))
        return self._shared[1]

    def map(self, func, job, items, progress=None, cancel=None, label=""):
        results = []
        if self.client is None:
            for done, item in enumerate(items, start=1):
                if cancel is not None and cancel():
                    raise _cancelled(label, done - 1, len(items))
                results.append(func(job, *item))
                if progress is not None and progress(label, done, len(items)) is False:
                    raise _cancelled(label, done, len(items))
            return results
        from distributed import as_completed

        shared = self._scatter(job)
        futures = [self.client.submit(func, shared, *item, pure=False) for item in items]
        by_key = {f.key: k for k, f in enumerate(futures)}
        results = [None] * len(futures)
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                results[by_key[future.key]] = future.result()
                if cancel is not None and cancel() or (
                        progress is not None and progress(label, done, len(items)) is False):
                    raise _cancelled(label, done, len(items))
        finally:
            self.client.cancel(futures)
        return results


def _cancelled(label, done, total):
    from .prediction import PredictionCancelled

    return PredictionCancelled(f"Blockwise {label} cancelled after {done}/{total} blocks.")


@contextlib.contextmanager
def dask_runner(scheduler: str | None = None, n_workers: int = 2,
                memory_limit: str | None = None):
    """A runner for :func:`segment_blockwise`.

    Parameters
    ----------
    scheduler : str or None
        None or ``"local"``: a ``distributed.LocalCluster`` of ``n_workers`` single-threaded
        worker processes, closed afterwards; ``"synchronous"``: every block in this process,
        one after the other; anything else: the address of a running dask scheduler
        (``tcp://host:8786``), whose workers must see the input and output paths.
    """
    if scheduler == "synchronous":
        yield _Runner()
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise SpocoInputError(
            "Blockwise processing on a cluster needs dask.distributed: pip install "
            "'napari-spoco[dask]', or use scheduler 'synchronous'.") from err
    if scheduler in (None, "local"):
        if int(n_workers) < 1:
            raise SpocoInputError(f"The number of workers must be at least 1, got {n_workers}.")
        with LocalCluster(n_workers=int(n_workers), threads_per_worker=1, processes=True,
                          memory_limit=memory_limit or "auto", dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield _Runner(client)
        return
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as err:
        raise SpocoInputError(
            f"Cannot reach the dask scheduler {scheduler!r} ({err}); start one (dask "
            "scheduler) and give its address, or leave --scheduler out for a local cluster."
        ) from err
    with client:
        yield _Runner(client)


def create_block_store(path, shape, chunks, dtype):
    """An empty zarr array at ``path`` whose chunks never straddle two blocks."""
    import zarr

    return zarr.create_array(str(path), shape=tuple(shape), chunks=tuple(chunks), dtype=dtype,
                             fill_value=0, overwrite=True)


def segment_blockwise(network, image, normalization=None, *, settings=None,
                      channel_axis: int | None = None, block_shape=None, halo=None,
                      labels_out=None, embeddings_out=None, foreground_out=None,
                      runner: _Runner | None = None, device: str = "cpu",
                      torch_threads: int | None = None,
                      progress: Callable | None = None, cancel: Callable | None = None,
                      scratch_dir=None, cluster: Callable | None = None) -> dict:
    """Predict (and segment) a volume block by block; outputs are written block by block.

    Parameters
    ----------
    network : torch.nn.Module
        The embedding network; group norm is frozen to volume-wide statistics first.
    image : array-like or path
        ``(C,) [Z,] Y, X``, sliced lazily; a path is opened by each worker itself.
    normalization : Normalization, optional
        The checkpoint's input statistics.
    settings : SegmentationSettings, optional
        How to segment each block (``segmentation.settings_for``); None only predicts.
    channel_axis : int, optional
    block_shape, halo : int or sequence of int, optional
        See :func:`plan_blocks` (default halo: from the network's receptive field).
    labels_out : path, optional
        Where the uint32 labels go (a zarr array is created there); required with
        ``settings``.
    embeddings_out, foreground_out : path, optional
        Zarr arrays for the embeddings ``(E, *spatial)`` and the foreground probability.
    runner : optional
        From :func:`dask_runner`; default: every block in this process.
    device : str
        Device the blocks run on (each worker's own).
    torch_threads : int, optional
        ``torch.set_num_threads`` in each block (1 on a cluster of single-threaded workers).
    progress : callable, optional
        ``progress(stage, done, total)`` after each block; returning False cancels.
    cancel : callable, optional
        Checked between blocks; when true, ``PredictionCancelled`` is raised.
    scratch_dir : path, optional
        Folder for the stitching slabs (default: next to ``labels_out``, so that remote
        workers that see the output see it too); removed at the end.
    cluster : callable, optional
        ``segmentation.segment_output``'s ``cluster`` for every block (the dock clusters in
        its helper process, so a block's mutex watershed never stalls napari).

    Returns
    -------
    dict
        ``grid`` (the :class:`BlockGrid`), ``segments`` (number of objects), ``seconds``
        (``predict_segment`` and ``stitch``).

    Examples
    --------
    >>> import tempfile, zarr
    >>> from napari_spoco.core.model.unet import UNet
    >>> from napari_spoco.core.inference.segmentation import segmentation_settings
    >>> model = UNet(in_channels=1, out_channels=4, ndim=2, features=(4, 8), num_groups=2)
    >>> image = np.random.default_rng(0).random((40, 70), dtype=np.float32)
    >>> out = tempfile.mkdtemp() + "/labels.zarr"
    >>> result = segment_blockwise(model, image, settings=segmentation_settings(),
    ...                            block_shape=32, labels_out=out)
    >>> result["grid"].grid_shape, zarr.open_array(out).shape
    ((2, 3), (40, 70))
    """
    from ..model.input_scale import input_scale_of
    from .prediction import _check_layout, frozen_network, model_ndim, network_context

    opened = _open(image)
    shape = tuple(int(s) for s in opened.shape)
    ndim = model_ndim(network, len(shape), channel_axis)
    channel_axis = _check_layout(shape, ndim, channel_axis)
    spatial = tuple(s for a, s in enumerate(shape) if a != channel_axis)
    # the context is in the network's pixels; a block's halo is in the image's
    scale = input_scale_of(network)
    context = tuple(int(np.ceil(c / scale)) for c in network_context(network, ndim))
    multiple = getattr(network, "required_multiple", None)
    if multiple is not None and scale != 1.0:  # the pooling grid, seen from the image's grid
        multiple = tuple(int(np.ceil(m / scale)) for m in multiple)
    grid = plan_blocks(spatial, block_shape, halo, context=context, multiple=multiple)
    if settings is not None and labels_out is None:
        raise SpocoInputError("Blockwise segmentation writes its labels to a zarr store: give "
                              "labels_out.")
    if settings is not None and settings.method == "consistency":
        raise SpocoInputError("The consistency method needs g's embeddings of the whole "
                              "image and is not available blockwise; use mws.")
    start = time.perf_counter()
    # the same calibration batch whatever the volume's size: memory stays flat as it grows
    frozen = frozen_network(network, opened, normalization, channel_axis=channel_axis,
                            device=device, image_fraction=None).cpu()
    if labels_out is not None:
        create_block_store(labels_out, spatial, grid.block, np.uint32)
    if embeddings_out is not None:
        channels = int(getattr(network, "out_channels", 0)) or _probe_channels(frozen, ndim)
        create_block_store(embeddings_out, (channels, *spatial), (channels, *grid.block),
                           np.float32)
    if foreground_out is not None and getattr(network, "foreground", False):
        create_block_store(foreground_out, spatial, grid.block, np.float32)
    else:
        foreground_out = None
    base = Path(scratch_dir) if scratch_dir is not None else (
        Path(labels_out).parent if labels_out is not None else Path(tempfile.gettempdir()))
    scratch = base / f".spoco-blocks-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    runner = runner or _Runner()
    job = BlockJob(frozen, normalization, image, channel_axis, grid, settings, str(device),
                   None if labels_out is None else str(labels_out),
                   None if embeddings_out is None else str(embeddings_out),
                   None if foreground_out is None else str(foreground_out), str(scratch),
                   torch_threads, cluster)
    try:
        items = [(index,) for index in grid.indices()]
        blocks = runner.map(process_block, job, items, progress, cancel, "prediction")
        seconds = {"predict_segment": time.perf_counter() - start}
        segments = 0
        if settings is not None:
            start = time.perf_counter()
            segments = _stitch(job, grid, blocks, runner, progress, cancel)
            seconds["stitch"] = time.perf_counter() - start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"grid": grid, "segments": segments, "seconds": seconds}


def _probe_channels(network, ndim: int) -> int:
    import torch

    multiple = getattr(network, "required_multiple", (1,) * ndim)
    with torch.inference_mode():
        probe = torch.zeros((1, int(getattr(network, "in_channels", 1)), *multiple))
        return int(network(probe).shape[1]) - int(bool(getattr(network, "foreground", False)))


def _stitch(job, grid, blocks, runner, progress, cancel) -> int:
    order = {tuple(b["index"]): k for k, b in enumerate(blocks)}
    faces = []
    for b in blocks:
        for (axis, side), name in b["slabs"].items():
            if side < 0:
                continue
            neighbour = list(b["index"])
            neighbour[axis] += 1
            other = blocks[order[tuple(neighbour)]]
            faces.append((order[tuple(b["index"])], b["n"], name,
                          order[tuple(neighbour)], other["n"], other["slabs"][(axis, -1)]))
    pairs = runner.map(_merge_face, job,
                       [(name_a, n_a, name_b, n_b) for _, n_a, name_a, _, n_b, name_b in faces])
    merges = [(ka, int(a), kb, int(b))
              for (ka, _, _, kb, _, _), found in zip(faces, pairs) for a, b in found]
    tables = final_ids([b["n"] for b in blocks], merges)
    runner.map(relabel_block, job, [(b["index"], table) for b, table in zip(blocks, tables)],
               progress, cancel, "stitching")
    return int(max((int(t.max(initial=0)) for t in tables), default=0))
