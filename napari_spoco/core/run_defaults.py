"""Defaults of a training run that depend on the images, the device and the source model.

The Train tab, ``napari-spoco train`` and ``napari-spoco demo`` all take their learning rate,
run length, patch, batch size and 3D anisotropy from these functions, so one checkpoint and one
image get the same settings wherever training starts. Settings given explicitly (an option, a
spin box the user changed) always win; these only fill what was left open.

The CPU thread count of torch is decided here too (:func:`default_torch_threads`), and set by
:func:`apply_torch_threads` where the command line and the Train tab start their work.

Everything here is a pure function of numbers, except :func:`apply_torch_threads`, which
imports torch when called: no Qt or napari.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Adam learning rate from scratch (paper and specification).
DEFAULT_LR = 2e-4
#: Fine-tuning divides the source network's learning rate by this (paper, Sec. 4).
FINE_TUNE_LR_DIVISOR = 10.0

#: Measured CPU wall time of one training step per patch voxel (batch × patch voxels) with the
#: default U-Net: 2D about 0.3 s for 4 × 128², 3D about 7 s for 4 × 32 × 64².
CPU_SECONDS_PER_VOXEL = {2: 0.3 / (4 * 128 * 128), 3: 7.0 / (4 * 32 * 64 * 64)}
#: A default CPU run aims at this many seconds of training steps: 1500 steps of a 2D image,
#: where the nuclei benchmark's sparse runs still gained over 800 (docs/results.md) ...
CPU_BUDGET_SECONDS = 450.0
#: ... the demo at this many: 600 steps, which its smaller network (16, 32, 64) runs in about
#: 2 min on a 2-core CPU, whole demo included (its SBD plateaus there, docs/results.md) ...
DEMO_BUDGET_SECONDS = 180.0
#: ... but does at least this many steps (fewer rarely separate the objects) ...
CPU_MIN_ITERATIONS = 300
#: ... and at most this many (tiny images: the per-step overhead is no longer proportional).
CPU_MAX_ITERATIONS = 2000
#: Default run length on a GPU (cuda, mps), by spatial dimensionality.
ACCELERATED_ITERATIONS = {2: 5000, 3: 2000}
#: Default run lengths are rounded to a multiple of this.
ITERATION_STEP = 50


def default_learning_rate(fine_tuning: bool = False, source_lr: float | None = None) -> float:
    """The Adam learning rate of a run: 2e-4 from scratch, the source's lr / 10 when fine-tuning.

    The specification (and the paper) fine-tune with a tenth of the *source's* learning rate.
    The command line always did that; the Train tab used a fixed 2e-5 (a tenth of 2e-4), which
    is the same only for sources trained at 2e-4. The shipped models were trained at 1e-3, so
    the two front ends fine-tuned them at 1e-4 and 2e-5. Both now use ``source_lr / 10``.

    Parameters
    ----------
    fine_tuning : bool
        Whether the run starts from a source checkpoint.
    source_lr : float, optional
        The learning rate the source was trained with (its ``config["lr"]``); when unknown
        (an old or foreign checkpoint) the from-scratch rate is assumed.

    Returns
    -------
    float

    Examples
    --------
    >>> default_learning_rate()
    0.0002
    >>> default_learning_rate(fine_tuning=True, source_lr=1e-3)
    0.0001
    >>> default_learning_rate(fine_tuning=True)  # source of unknown lr: a tenth of 2e-4
    2e-05
    """
    if not fine_tuning:
        return DEFAULT_LR
    base = DEFAULT_LR if not source_lr else float(source_lr)
    return base / FINE_TUNE_LR_DIVISOR


#: Weight of the consistency term u_con from scratch (paper and specification) ...
DEFAULT_CONSISTENCY_WEIGHT = 1.0
#: ... and when fine-tuning a source on sparse labels (measured on the transfer pair,
#: docs/method.md "Fine-tuning keeps what the source knew").
FINE_TUNE_CONSISTENCY_WEIGHT = 10.0


def default_consistency_weight(fine_tuning: bool = False, mode: str = "sparse") -> float:
    """The weight of the consistency term u_con: 1 from scratch, 10 when fine-tuning sparsely.

    When a source is fine-tuned on a few painted objects, the pull and push terms only see
    those objects, and nothing in the labels separates two unlabeled neighbours. u_con is the
    one term that does: it asks f to group the unlabeled pixels as the momentum network g,
    which starts as the source, groups them. At the paper's weight 1 the labeled terms won
    and unlabeled neighbouring cells merged (transfer pair, 5 % scattered, 200 steps, three
    seeds: adapted Rand error 0.205 for the source → 0.261); at 10 the source's boundaries
    stay while the painted cells are learned (0.171, docs/results.md). Dense labels leave no
    unlabeled cell, so dense runs keep the paper's weight.

    Parameters
    ----------
    fine_tuning : bool
        Whether the run starts from a source checkpoint.
    mode : {"sparse", "dense"}
        The label convention of the run.

    Returns
    -------
    float

    Examples
    --------
    >>> default_consistency_weight()
    1.0
    >>> default_consistency_weight(fine_tuning=True)
    10.0
    >>> default_consistency_weight(fine_tuning=True, mode="dense")
    1.0
    """
    if fine_tuning and mode == "sparse":
        return FINE_TUNE_CONSISTENCY_WEIGHT
    return DEFAULT_CONSISTENCY_WEIGHT


def source_learning_rate(checkpoint: Mapping) -> float | None:
    """The learning rate a checkpoint (its loaded payload) was trained with, or None.

    Examples
    --------
    >>> source_learning_rate({"config": {"lr": 1e-3}})
    0.001
    >>> source_learning_rate({"architecture": {}}) is None
    True
    """
    lr = dict(checkpoint.get("config") or {}).get("lr")
    return float(lr) if lr else None


#: Fewest painted objects whose median size is trusted to rescale the images.
SCALE_MIN_OBJECTS = 3
#: Size ratios (linear) closer to 1 than this leave the images as they are: the median of a few
#: painted objects is not more precise, and resampling blurs a little.
SCALE_TOLERANCE = 1.25
#: The most an image is shrunk or enlarged for the network.
SCALE_LIMITS = (0.25, 4.0)


def source_object_size(checkpoint: Mapping) -> float:
    """Median object size (voxels, on the network's grid) a checkpoint was trained on; 0 if unknown.

    ``config["object_size"]`` where recorded (every run since input scales exist, and the
    shipped models); else the annotation summary's median on the network's grid.

    Examples
    --------
    >>> source_object_size({"config": {"object_size": 335.0}})
    335.0
    >>> source_object_size({"config": {"input_scale": 0.5, "ndim": 2},
    ...                     "annotations": {"median_object_size": 400.0}})
    100.0
    >>> source_object_size({"config": {}})
    0.0
    """
    config = dict(checkpoint.get("config") or {})
    if config.get("object_size"):
        return float(config["object_size"])
    median = float(dict(checkpoint.get("annotations") or {}).get("median_object_size") or 0)
    scale = float(config.get("input_scale") or 1.0)
    ndim = int(config.get("ndim") or 2)
    return median * scale ** ndim


def default_input_scale(source_size: float, painted_size: float, n_objects: int,
                        ndim: int) -> float:
    """The resampling factor that gives the painted objects the size the source was trained on.

    ``(source_size / painted_size) ** (1 / ndim)``, the same on every axis, clipped to
    :data:`SCALE_LIMITS` and rounded to two decimals; 1.0 (no resampling) without a source size,
    with fewer than :data:`SCALE_MIN_OBJECTS` painted objects, or within
    :data:`SCALE_TOLERANCE` of 1.

    Parameters
    ----------
    source_size : float
        :func:`source_object_size` of the source checkpoint (0: unknown, training from scratch).
    painted_size : float
        Median size in voxels of the painted objects, on the images' own grid.
    n_objects : int
        How many objects are painted.
    ndim : int
        Spatial dimensions.

    Examples
    --------
    Stem cells (median 869 px) painted for an ovules model trained on cells of 335 px:

    >>> default_input_scale(335.0, 869.0, 15, 2)
    0.62
    >>> default_input_scale(335.0, 400.0, 15, 2)  # close enough: left as it is
    1.0
    >>> default_input_scale(0.0, 869.0, 15, 2)  # from scratch
    1.0
    """
    if not source_size > 0 or not painted_size > 0 or int(n_objects) < SCALE_MIN_OBJECTS:
        return 1.0
    scale = (float(source_size) / float(painted_size)) ** (1.0 / int(ndim))
    if 1.0 / SCALE_TOLERANCE < scale < SCALE_TOLERANCE:
        return 1.0
    return round(min(max(scale, SCALE_LIMITS[0]), SCALE_LIMITS[1]), 2)


def smallest_shape(shapes: Iterable[Sequence[int]]) -> tuple[int, ...]:
    """Per axis, the smallest size over the spatial shapes of the training images.

    A default patch must fit every image, so defaults are computed from this shape.

    Examples
    --------
    >>> smallest_shape([(512, 300), (200, 400)])
    (200, 300)
    """
    shapes = [tuple(int(s) for s in shape) for shape in shapes]
    if not shapes:
        raise ValueError("smallest_shape needs at least one shape")
    return tuple(min(sizes) for sizes in zip(*shapes))


def fit_patch_side(wanted: int, available: int, multiple: int) -> int:
    """``wanted`` clipped to ``available`` and rounded down to ``multiple`` where possible.

    Examples
    --------
    >>> fit_patch_side(128, 100, 8)
    96
    >>> fit_patch_side(16, 5, 8)  # too thin for a multiple of 8: kept whole
    5
    """
    side = min(int(wanted), int(available))
    if side >= multiple:
        side -= side % multiple
    return max(side, 1)


def default_patch_and_batch(
    shape: Sequence[int], device_kind: str, multiple: int = 8
) -> tuple[tuple[int, ...], int]:
    """Patch shape and batch size that fit the image and the device.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the smallest training image, ``[Z,] Y, X``.
    device_kind : str
        ``"cpu"``, ``"cuda"`` or ``"mps"`` (a device index such as ``"cuda:1"`` is allowed).
    multiple : int
        Patch sides are rounded down to a multiple of this (2 ** poolings) when the image allows.

    Returns
    -------
    patch_shape : tuple of int
        2D: 128² (CPU) or 256² (GPU); 3D: 16 × 64² (CPU) or 32 × 128² (GPU), z kept shallow
        because stacks are usually thin; clipped to the image.
    batch_size : int
        2D: 4 (CPU) or 8 (GPU); 3D: 1 (CPU) or 2 (GPU).

    Examples
    --------
    >>> default_patch_and_batch((512, 512), "cpu")
    ((128, 128), 4)
    >>> default_patch_and_batch((48, 192, 192), "cuda")
    ((32, 128, 128), 2)
    >>> default_patch_and_batch((100, 90), "cpu")  # clipped, rounded down to 8
    ((96, 88), 4)
    """
    accelerated = _kind(device_kind) != "cpu"
    if len(shape) == 2:
        wanted, batch = ((256, 256), 8) if accelerated else ((128, 128), 4)
    else:
        wanted, batch = ((32, 128, 128), 2) if accelerated else ((16, 64, 64), 1)
    patch = tuple(fit_patch_side(w, s, multiple) for w, s in zip(wanted, shape))
    return patch, batch


def estimated_cpu_seconds_per_step(patch_shape: Sequence[int], batch_size: int) -> float:
    """Wall time of one CPU training step, from the measured cost per patch voxel.

    Examples
    --------
    >>> round(estimated_cpu_seconds_per_step((128, 128), 4), 2)
    0.3
    >>> round(estimated_cpu_seconds_per_step((16, 64, 64), 1), 2)
    0.88
    """
    voxels = int(batch_size)
    for side in patch_shape:
        voxels *= int(side)
    return voxels * CPU_SECONDS_PER_VOXEL[3 if len(patch_shape) >= 3 else 2]


def default_iterations(shape: Sequence[int], device_kind: str,
                       budget_seconds: float = CPU_BUDGET_SECONDS) -> int:
    """Default number of optimizer steps for images of spatial ``shape`` on ``device_kind``.

    On a CPU the run is sized by time: as many steps of the default patch and batch
    (:func:`default_patch_and_batch`) as fit in about ``budget_seconds``, at least
    :data:`CPU_MIN_ITERATIONS` and at most :data:`CPU_MAX_ITERATIONS`, rounded to 50. With the
    default budget that is 1500 steps (about 8 min) for a 2D image of 128² or more and 500
    steps (about 7-8 min) for a 3D stack; more for images smaller than the patch. On a GPU the
    steps are cheap and the run is fixed: 5000 steps in 2D, 2000 in 3D.

    These replace three constants that disagreed: the Train tab's 1000, the command line's
    10000 (hours on a CPU: 3D steps take seconds there) and the demo's 300. The demo passes
    :data:`DEMO_BUDGET_SECONDS`. A longer run is one option away (``--iterations``, the
    iterations box), and a finished run can be resumed or fine-tuned.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the smallest training image (:func:`smallest_shape`).
    device_kind : str
        ``"cpu"``, ``"cuda"`` or ``"mps"``.
    budget_seconds : float
        Wall time of the training steps aimed at on a CPU.

    Returns
    -------
    int

    Examples
    --------
    >>> default_iterations((512, 512), "cpu")
    1500
    >>> default_iterations((48, 192, 192), "cpu")
    500
    >>> default_iterations((96, 96), "cpu")  # smaller patch, cheaper steps
    2000
    >>> default_iterations((512, 512), "cpu", budget_seconds=DEMO_BUDGET_SECONDS)
    600
    >>> default_iterations((512, 512), "cuda"), default_iterations((48, 192, 192), "cuda")
    (5000, 2000)
    """
    ndim = 3 if len(shape) >= 3 else 2
    if _kind(device_kind) != "cpu":
        return ACCELERATED_ITERATIONS[ndim]
    patch, batch = default_patch_and_batch(shape, "cpu")
    steps = float(budget_seconds) / estimated_cpu_seconds_per_step(patch, batch)
    steps = int(round(steps / ITERATION_STEP)) * ITERATION_STEP
    return int(min(max(steps, CPU_MIN_ITERATIONS), CPU_MAX_ITERATIONS))


#: A stack whose z step is at least this many times its finest in-plane pixel is anisotropic.
ANISOTROPY_RATIO = 2.0


def known_spacing(spacing) -> tuple[float, ...] | None:
    """``spacing`` as floats, or None when unknown: missing, not positive, or all ones.

    All ones is napari's default layer scale and what uncalibrated files say, so it carries
    no information; treating it as unknown keeps the Train tab (``layer.scale``) and the
    command line (file metadata) deciding alike for the same data.

    Examples
    --------
    >>> known_spacing((2, 0.5, 0.5)), known_spacing((1, 1, 1)), known_spacing(None)
    ((2.0, 0.5, 0.5), None, None)
    """
    if spacing is None:
        return None
    values = tuple(float(v) for v in spacing)
    if not values or min(values) <= 0 or all(v == 1.0 for v in values):
        return None
    return values


def default_anisotropic(shapes: Iterable[Sequence[int]], spacings=None) -> bool:
    """Whether 3D training treats z as thin: rotations and scaling stay in-plane.

    True when every training stack is 3D and thin: with a known voxel size (``spacings``,
    ``(Z, Y, X)`` per stack; see :func:`known_spacing`) its z step is at least
    :data:`ANISOTROPY_RATIO` times its finest in-plane pixel; without one, ``Z ≤ min(Y, X) / 2``
    (few slices: in microscopy that comes with a coarse z step).

    Examples
    --------
    >>> default_anisotropic([(12, 64, 64)])
    True
    >>> default_anisotropic([(48, 64, 64)])
    False
    >>> default_anisotropic([(48, 64, 64)], spacings=[(2.0, 0.5, 0.5)])  # coarse z step
    True
    >>> default_anisotropic([(12, 64, 64)], spacings=[(0.5, 0.5, 0.5)])  # isotropic voxels
    False
    >>> default_anisotropic([(512, 512)])  # 2D
    False
    """
    shapes = [tuple(shape) for shape in shapes]
    spacings = [None] * len(shapes) if spacings is None else list(spacings)
    if len(spacings) != len(shapes):
        raise ValueError(f"{len(spacings)} spacings for {len(shapes)} shapes")

    def thin(shape, spacing):
        if len(shape) != 3:
            return False
        spacing = known_spacing(spacing)
        if spacing is not None and len(spacing) == 3:
            return spacing[0] >= ANISOTROPY_RATIO * min(spacing[1:])
        return shape[0] * 2 <= min(shape[1:])

    return bool(shapes) and all(thin(s, v) for s, v in zip(shapes, spacings))


@dataclass(frozen=True)
class RunSettings:
    """The data- and device-dependent settings of a run, all decided."""

    lr: float
    iterations: int
    patch_shape: tuple[int, ...]
    batch_size: int
    anisotropic: bool

    def as_dict(self) -> dict:
        """Keyword arguments of ``TrainingConfig``."""
        return {"lr": self.lr, "iterations": self.iterations, "patch_shape": self.patch_shape,
                "batch_size": self.batch_size, "anisotropic": self.anisotropic}


def resolve_run_settings(
    shapes: Iterable[Sequence[int]],
    device_kind: str,
    *,
    fine_tuning: bool = False,
    source_lr: float | None = None,
    lr: float | None = None,
    iterations: int | None = None,
    patch_shape: Sequence[int] | None = None,
    batch_size: int | None = None,
    anisotropic: bool | None = None,
    spacings=None,
) -> RunSettings:
    """The given settings, with every one left as None decided by the rules of this module.

    Each default depends only on the images, the device and the source, never on another
    setting given, so the order in which front ends fill them cannot matter.

    Parameters
    ----------
    shapes : iterable of sequence of int
        Spatial shapes of the training images (channel axis removed).
    device_kind : str
        ``"cpu"``, ``"cuda"`` or ``"mps"``.
    fine_tuning, source_lr
        As for :func:`default_learning_rate`.
    lr, iterations, patch_shape, batch_size, anisotropic
        Settings given explicitly (None: use the default).
    spacings : list, optional
        Voxel size per image (None where unknown), for :func:`default_anisotropic`.

    Examples
    --------
    >>> resolve_run_settings([(512, 512)], "cpu", fine_tuning=True, source_lr=1e-3)
    RunSettings(lr=0.0001, iterations=1500, patch_shape=(128, 128), batch_size=4, anisotropic=False)
    >>> resolve_run_settings([(12, 64, 64)], "cpu", iterations=20).iterations
    20
    """
    shapes = [tuple(int(s) for s in shape) for shape in shapes]
    shape = smallest_shape(shapes)
    patch, batch = default_patch_and_batch(shape, device_kind)
    return RunSettings(
        lr=float(lr) if lr is not None else default_learning_rate(fine_tuning, source_lr),
        iterations=int(iterations) if iterations is not None
        else default_iterations(shape, device_kind),
        patch_shape=tuple(int(p) for p in patch_shape) if patch_shape is not None else patch,
        batch_size=int(batch_size) if batch_size is not None else batch,
        anisotropic=bool(anisotropic) if anisotropic is not None
        else default_anisotropic(shapes, spacings),
    )


#: A core counts as free for a torch thread when at most this share of it is taken by other
#: work (the load average). A thread on a busy core stalls every parallel region of the step
#: (its barrier waits for the slowest thread), so two threads on a 2-core machine with one core
#: busy were 1.3-1.7x slower than one thread (project issue 13).
BUSY_CORE_SHARE = 0.5
#: The environment variables that pin torch's CPU thread count (torch reads them at start;
#: ``MKL_NUM_THREADS`` wins when both are set, as in torch).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where known, else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on macOS and Windows
        return max(1, os.cpu_count() or 1)


def one_minute_load() -> float | None:
    """The 1-minute load average (runnable tasks, this process included), or None (Windows)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def explicit_torch_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """The thread count the user pinned with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, or None.

    A value that is not a positive integer (torch ignores it too) counts as not set; of a
    list such as ``"4,2"`` (nested OpenMP levels) the first level counts.

    Examples
    --------
    >>> explicit_torch_threads({"OMP_NUM_THREADS": "3"})
    3
    >>> explicit_torch_threads({"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "2"})
    2
    >>> explicit_torch_threads({"OMP_NUM_THREADS": ""}) is None
    True
    """
    environ = os.environ if environ is None else environ
    count = None
    for name in THREAD_VARIABLES:
        try:
            value = int(str(environ.get(name, "")).split(",")[0].strip())
        except ValueError:
            continue
        if value > 0:
            count = value
    return count


def default_torch_threads(cpu_count: int | None = None, load: float | None = None,
                          environ: Mapping[str, str] | None = None) -> int:
    """The number of CPU threads a run gives torch: all cores when idle, fewer when busy.

    The rule, in this order:

    1. ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` set by the user (a positive integer) is
       used as it is: what the user pinned is never overridden.
    2. Without a load reading (Windows has no load average): all cores.
    3. Otherwise one thread per free core, where the cores not taken by the load count as
       free when at most :data:`BUSY_CORE_SHARE` of a core is busy:
       ``floor(cores - load + BUSY_CORE_SHARE)``, between 1 and the number of cores. So a
       2-core machine gets 2 threads below a load of 0.5 and 1 thread above it.

    The load counts every runnable task, the caller's own included: decide before the work
    starts. A thread count set with ``torch.set_num_threads`` is looked after by
    :func:`apply_torch_threads`, not here.

    Parameters
    ----------
    cpu_count : int, optional
        Cores available; default :func:`available_cores` (the affinity mask,
        ``os.sched_getaffinity(0)``, else ``os.cpu_count()``).
    load : float, optional
        Runnable tasks on the machine; default the 1-minute load average
        (``os.getloadavg()``), None where there is none.
    environ : mapping, optional
        The environment (default ``os.environ``); see :func:`explicit_torch_threads`.

    Returns
    -------
    int
        At least 1 and, without an explicit variable, at most ``cpu_count``.

    Examples
    --------
    >>> default_torch_threads(cpu_count=2, load=0.1, environ={})  # idle: all cores
    2
    >>> default_torch_threads(cpu_count=2, load=1.2, environ={})  # one core busy
    1
    >>> default_torch_threads(cpu_count=2, load=6.0, environ={})  # never fewer than 1
    1
    >>> default_torch_threads(cpu_count=16, load=4.3, environ={})
    12
    >>> default_torch_threads(cpu_count=2, load=6.0, environ={"OMP_NUM_THREADS": "2"})
    2
    """
    explicit = explicit_torch_threads(environ)
    if explicit is not None:
        return explicit
    cores = max(1, int(cpu_count if cpu_count is not None else available_cores()))
    if load is None:
        load = one_minute_load()
    if load is None:
        return cores
    free = math.floor(cores - max(float(load), 0.0) + BUSY_CORE_SHARE)
    return int(min(max(free, 1), cores))


#: What :func:`apply_torch_threads` decided in this process: the count torch had before
#: (``"before"``) and the one chosen (``"threads"``); empty until its first call.
_APPLIED: dict = {}


def apply_torch_threads(environ: Mapping[str, str] | None = None) -> int:
    """Set torch's CPU threads to :func:`default_torch_threads` unless the user set them.

    The count is decided once per process, at the first call, from the load at that moment.
    torch is left as it is when ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set, and when
    the calling thread's count was changed (``torch.set_num_threads``) after that first call
    to something other than what this function chose: both are the user's. (A
    ``torch.set_num_threads`` made before the first call cannot be told from torch's own
    default; pin the count with ``OMP_NUM_THREADS`` instead.)

    With torch's OpenMP backend a thread that already ran torch work keeps its own count, so
    this is called in the thread that does the work; later calls there apply the same count.

    Parameters
    ----------
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    int
        The number of threads torch now uses in the calling thread.

    Examples
    --------
    >>> import torch
    >>> apply_torch_threads({"OMP_NUM_THREADS": "1"}) == torch.get_num_threads()  # untouched
    True
    """
    import torch

    current = torch.get_num_threads()
    if explicit_torch_threads(environ) is not None:
        return current
    if not _APPLIED:
        _APPLIED.update(before=current, threads=default_torch_threads(environ={}))
    chosen = _APPLIED["threads"]
    if current not in (chosen, _APPLIED["before"]):
        return current  # the user's torch.set_num_threads since the first call
    if current != chosen:
        torch.set_num_threads(chosen)
    return chosen


def _kind(device_kind: str) -> str:
    return str(device_kind).split(":")[0]
