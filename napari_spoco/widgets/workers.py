"""The work the widgets run in background threads, as plain functions and generators.

Each function here runs in a worker thread and talks to the main thread only through what it
yields or returns; the widgets connect to the workers' ``yielded``/``returned``/``errored``
signals, which Qt delivers on the main thread, so layers are changed there only.

The workers are superqt's (napari's ``thread_worker`` is a thin subclass of them that also
forwards every error to napari's generic error dialog; the widgets show their own, actionable
notification instead, so they use the superqt classes directly).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from superqt.utils import create_worker

from .preview import ModelSnapshot, PreviewSchedule, compute_preview


class WorkerFailure(Exception):
    """Carries an exception out of a generator worker.

    superqt's generator worker treats a ``RuntimeError`` raised by the generator as "the worker
    was deleted": it emits neither ``errored`` nor ``finished``. torch reports most failures
    (out of memory included) as ``RuntimeError``, so they are wrapped in this instead.
    """

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


@dataclass
class TrainerReady:
    """First item a training worker yields: the trainer, for pause/stop/push from the GUI."""

    trainer: object


@dataclass
class PreviewFailed:
    """A preview raised; training goes on, previews are switched off."""

    error: BaseException


@dataclass
class TrainingFinished:
    """What a training worker returns."""

    path: Path | None
    reason: str | None
    iteration: int
    snapshot: ModelSnapshot


def training_loop(make_trainer, schedule: PreviewSchedule, save_path, preview_method="mws"):
    """:func:`_training_loop` with its ``RuntimeError`` wrapped in :class:`WorkerFailure`."""
    try:
        return (yield from _training_loop(make_trainer, schedule, save_path, preview_method))
    except RuntimeError as err:
        raise WorkerFailure(err) from err


def _training_loop(make_trainer, schedule: PreviewSchedule, save_path, preview_method="mws"):
    """Build the trainer, train, preview when due, and save the checkpoint at the end.

    Parameters
    ----------
    make_trainer : callable
        Returns a :class:`~napari_spoco.core.training.Trainer`. Called here so that reading
        the data and fitting the normalisation do not block the viewer either.
    schedule : PreviewSchedule
        Where the viewer posts what to preview.
    save_path : path or None
        Checkpoint written (atomically) when training ends, by the limit or by Stop, unless
        the trainer autosaves there already.

    Yields
    ------
    TrainerReady, then TrainingReport and PreviewResult / PreviewFailed items.

    Returns
    -------
    TrainingFinished
    """
    from napari_spoco.core.run_defaults import apply_torch_threads

    # Fewer torch threads on a busy machine (project issue 13), decided once per process and
    # applied in this thread: with torch's OpenMP backend a pooled worker thread keeps its
    # own count. A process-wide choice is fine here: napari's own drawing does not use torch,
    # and the Segment tab's predictions compete for the same cores as training does.
    apply_torch_threads()
    trainer = make_trainer()
    yield TrainerReady(trainer)
    for report in trainer.steps():
        yield report
        request = schedule.take_due()
        if request is None:
            continue
        try:
            result = compute_preview(trainer, request, preview_method)
            schedule.last_cost = result.seconds
            yield result
        except Exception as err:  # a preview must never end the training
            schedule.enabled = False
            yield PreviewFailed(err)
    # The trainer's autosave path is written by ``steps()`` itself when it ends.
    path = trainer.autosave_path
    if save_path is not None and path is None:
        path = trainer.save(save_path)
    return TrainingFinished(path, trainer.stop_reason, int(trainer.iteration),
                            ModelSnapshot.of(trainer))


def start_training_worker(make_trainer, schedule, save_path, on_yield, on_return, on_error,
                          on_finish, preview_method="mws"):
    """Start :func:`training_loop` in a generator worker with the given slots connected."""
    return create_worker(
        training_loop,
        make_trainer,
        schedule,
        save_path,
        preview_method,
        _connect={"yielded": on_yield, "returned": on_return, "errored": on_error,
                  "finished": on_finish},
    )


@dataclass
class Progress:
    """Tiles done out of total, written by the worker and read by a GUI timer."""

    done: int = 0
    total: int = 0


def predict_and_segment(load_model, image, channel_axis, device, method, params,
                        progress: Progress, cancel: threading.Event, spacing=None,
                        blockwise_store=None, block_shape=None):
    """Predict embeddings tile by tile, then project and cluster them (in a worker).

    Parameters
    ----------
    load_model : callable
        Returns ``(model, normalization, model_source)``, the last a ``LoadedModel`` or a
        ``ModelSnapshot`` (what the clustering settings are decided from); loading happens in
        the worker too.
    progress : Progress
        Updated after every batch of tiles.
    cancel : threading.Event
        Set by the Cancel button; prediction stops before its next batch.
    spacing : tuple of float, optional
        The image layer's spatial scale: decides the 3D anisotropy of the clustering.
    blockwise_store : callable, optional
        Returns a new folder; when given and ``core.blockwise.needs_blockwise`` says so (a
        lazy image, or embeddings too large for memory), the work is done by
        :func:`predict_and_segment_blockwise` into zarr stores there, in blocks of
        ``block_shape``.

    Returns
    -------
    dict with ``embeddings``, ``foreground``, ``pca``, ``instances``, ``source``, ``notes``
    (what the user should know about the clustering settings) and ``seconds``.
    """
    from napari_spoco.core.inference.blockwise import needs_blockwise
    from napari_spoco.core.inference.prediction import (
        _check_layout,
        model_ndim,
        predict_with_foreground,
    )
    from napari_spoco.core.inference.segmentation import settings_for

    from .layers import is_lazy
    from .preview import project_and_segment

    start = time.perf_counter()
    model, normalization, source = load_model()
    shape = tuple(int(s) for s in image.shape)
    axis = _check_layout(shape, model_ndim(model, len(shape), channel_axis), channel_axis)
    spatial = tuple(s for a, s in enumerate(shape) if a != axis)
    channels = int(getattr(model, "out_channels", 16))
    if blockwise_store is not None and needs_blockwise(spatial, channels, is_lazy(image)):
        return predict_and_segment_blockwise(
            (model, normalization, source), image, channel_axis, device, method, params,
            progress, cancel, blockwise_store(), spacing=spacing, start=start,
            block_shape=block_shape)

    def report(done, total):
        progress.done, progress.total = done, total

    embeddings, foreground = predict_with_foreground(
        model, image, normalization, channel_axis=channel_axis, device=device,
        progress=report, cancel=cancel,
    )
    pca, instances = project_and_segment(embeddings, foreground, source, method,
                                         spacing=spacing, **params)
    return {
        "embeddings": embeddings,
        "foreground": foreground,
        "pca": pca_to_uint8(pca),
        "instances": instances,
        "source": source,
        "notes": settings_for(source, method=method, spacing=spacing, **params).notes,
        "seconds": time.perf_counter() - start,
    }


def pca_to_uint8(rgb: np.ndarray) -> np.ndarray:
    """PCA colours in [0, 1] as the uint8 RGB an image layer shows."""
    return (np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8)


def predict_and_segment_blockwise(loaded, image, channel_axis, device, method, params,
                                  progress: Progress, cancel: threading.Event, store: Path,
                                  spacing=None, start=None, block_shape=None):
    """``predict_and_segment`` for a lazy or large image: block by block into zarr stores.

    The image is read one block (plus halo) at a time (``core.blockwise``); embeddings,
    foreground and labels are written to zarr arrays in ``store`` and returned as dask arrays
    over them, so nothing of the image's size is held in memory: the layers read what napari
    displays. The PCA colours are fitted on a strided sample and applied chunk by chunk.

    ``loaded`` is what the model loader returned: ``(model, normalization, model_source)``;
    ``block_shape`` is ``core.blockwise``'s (default ``DEFAULT_BLOCK``).

    Returns
    -------
    dict
        As ``predict_and_segment``, with dask arrays, plus ``blocks`` (how many) and ``store``.
    """
    import dask.array as da

    from napari_spoco.core.inference.blockwise import segment_blockwise
    from napari_spoco.core.inference.pca import EmbeddingPCA
    from napari_spoco.core.inference.prediction import model_ndim
    from napari_spoco.core.inference.segmentation import settings_for

    from .clustering_process import segment_off_thread

    start = time.perf_counter() if start is None else start
    model, normalization, source = loaded
    ndim = model_ndim(model, len(image.shape), channel_axis)
    settings = settings_for(source, method=method, ndim=ndim, spacing=spacing, **params)

    def report(stage, done, total):
        # prediction and stitching of every block, as one bar
        progress.done = done + (total if stage == "stitching" else 0)
        progress.total = 2 * total

    store = Path(store)
    paths = {name: store / f"{name}.zarr" for name in ("labels", "embeddings", "foreground")}
    result = segment_blockwise(
        model, image, normalization, settings=settings, channel_axis=channel_axis,
        labels_out=paths["labels"], embeddings_out=paths["embeddings"],
        foreground_out=paths["foreground"], device=device, progress=report,
        block_shape=block_shape, cluster=segment_off_thread,
        cancel=cancel.is_set, scratch_dir=store)
    embeddings = da.from_zarr(str(paths["embeddings"]))
    pca = EmbeddingPCA().fit(embeddings, seed=0)
    rgb = embeddings.map_blocks(
        lambda block: pca_to_uint8(pca.transform(block)),
        drop_axis=0, new_axis=embeddings.ndim - 1, dtype=np.uint8,
        chunks=(*embeddings.chunks[1:], (3,)))
    return {
        "embeddings": embeddings,
        "foreground": (da.from_zarr(str(paths["foreground"]))
                       if paths["foreground"].exists() else None),
        "pca": rgb,
        "instances": da.from_zarr(str(paths["labels"])),
        "source": source,
        "notes": settings.notes,
        "blocks": len(result["grid"].indices()),
        "segments": result["segments"],
        "store": store,
        "seconds": time.perf_counter() - start,
    }


def recluster(embeddings, foreground, source, method, params, spacing=None):
    """Cluster cached embeddings again with another method or parameters (in a worker)."""
    from .preview import project_and_segment

    start = time.perf_counter()
    _, instances = project_and_segment(embeddings, foreground, source, method, project=False,
                                       spacing=spacing, **params)
    return {"instances": instances, "seconds": time.perf_counter() - start}


def warm_up_imports() -> float:
    """Import what training, prediction and clustering need, and start the clustering process.

    Importing holds Python's global interpreter lock for long stretches (torch's Adam imports
    torch._dynamo on first use: seconds on a slow CPU). Done in a worker when the dock opens, it
    happens while the user paints, not as stalls of the first training run.

    Returns
    -------
    float
        Seconds it took.
    """
    start = time.perf_counter()
    import torch

    import napari_spoco.core.clustering  # noqa: F401
    import napari_spoco.core.inference.pca  # noqa: F401
    import napari_spoco.core.inference.prediction  # noqa: F401
    import napari_spoco.core.training.trainer  # noqa: F401

    from .clustering_process import warm_up

    warm_up()
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its lazy imports happen now
    return time.perf_counter() - start


def start_function_worker(func, *args, on_return, on_error, on_finish=None, **kwargs):
    """Start ``func(*args, **kwargs)`` in a worker with the given slots connected."""
    connect = {"returned": on_return, "errored": on_error}
    if on_finish is not None:
        connect["finished"] = on_finish
    return create_worker(func, *args, _connect=connect, **kwargs)
