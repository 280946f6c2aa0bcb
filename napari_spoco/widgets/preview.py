"""Live preview during training: which part of the image, when, and how it is computed.

Nothing here touches Qt or napari. The main thread describes what the user looks at in a
:class:`PreviewRequest` and posts it to a :class:`PreviewSchedule`; the training thread takes the
request between two optimizer steps when one is due, predicts it with the network it is training
(so no weights are copied or shared across threads) and yields a :class:`PreviewResult`, which the
main thread writes into the preview layers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ._logic import preview_due


@dataclass(frozen=True)
class PreviewRequest:
    """A region of one training image to preview.

    Attributes
    ----------
    image : array-like
        The image in the core's layout, ``(C,) [Z,] Y, X``.
    channel_axis : int or None
        0 when ``image`` has channels, else None.
    read : tuple of slice
        Spatial region the network sees.
    shown : tuple of slice
        Part of the prediction of ``read`` that is displayed (length-1 along hidden axes).
    offset : tuple of int
        Data coordinates of the first shown pixel.
    scale, translate : tuple of float
        Spatial scale and translate of the image layer, copied onto the preview layers.
    """

    image: object
    channel_axis: int | None
    read: tuple
    shown: tuple
    offset: tuple
    scale: tuple
    translate: tuple

    def crop(self) -> np.ndarray:
        """Read the requested region of the image (all channels)."""
        index = self.read if self.channel_axis is None else (slice(None), *self.read)
        return np.asarray(self.image[index])

    @property
    def layer_translate(self) -> tuple:
        """World translate of the preview layers: image translate plus offset × scale."""
        return tuple(t + o * s for t, o, s in zip(self.translate, self.offset, self.scale))


@dataclass
class ModelSnapshot:
    """A copy of the networks' weights, safe to use while training goes on in another thread."""

    architecture: dict
    model_state: dict
    momentum_state: dict | None
    normalization: object
    config: dict
    iteration: int
    annotations: dict = field(default_factory=dict)

    @classmethod
    def of(cls, trainer) -> ModelSnapshot:
        """Copy ``trainer``'s f and g to the CPU (call between steps, from the training thread)."""

        def cpu_copy(module):
            return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

        return cls(
            architecture=dict(trainer.model.config),
            model_state=cpu_copy(trainer.model),
            momentum_state=cpu_copy(trainer.momentum_model),
            normalization=trainer.normalization,
            config=trainer.config.to_dict(),
            iteration=int(trainer.iteration),
            annotations=trainer.annotations,
        )

    def build(self, momentum: bool = False):
        """A fresh ``UNet`` in eval mode holding f (or g with ``momentum=True``)."""
        from napari_spoco.core.model.unet import UNet

        network = UNet.from_config(dict(self.architecture))
        network.load_state_dict(self.momentum_state if momentum else self.model_state)
        network.input_scale = float(self.config.get("input_scale") or 1.0)
        return network.eval()


@dataclass
class PreviewResult:
    """What the main thread shows: PCA colours and instances of the shown region."""

    request: PreviewRequest
    pca: np.ndarray  # (*shown spatial, 3) float32 in [0, 1]
    instances: np.ndarray  # (*shown spatial) integer labels
    iteration: int
    seconds: float  # time the preview took in the training thread
    snapshot: ModelSnapshot | None = None


@dataclass
class PreviewSchedule:
    """Thread-safe mailbox between the viewer (posts requests) and the training thread.

    Previews come every ``interval`` seconds, but never closer than ``cost_ratio`` times the
    last preview's own duration, so that a slow preview (a big 3D slab on a CPU) takes at most
    about ``1 / (1 + cost_ratio)`` of the training thread's time.
    """

    interval: float = 3.0
    enabled: bool = True
    cost_ratio: float = 3.0
    last_cost: float = 0.0
    _request: PreviewRequest | None = None
    _last: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def post(self, request: PreviewRequest | None) -> None:
        """Replace the pending request (the newest view wins)."""
        with self._lock:
            self._request = request

    def take_due(self, now: float | None = None) -> PreviewRequest | None:
        """The current request if previews are on and one is due, marking it as done."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self.enabled or self._request is None:
                return None
            spacing = max(self.interval, self.cost_ratio * self.last_cost)
            if not preview_due(now, self._last, spacing):
                return None
            self._last = now
            return self._request

    @property
    def request(self) -> PreviewRequest | None:
        """The pending request (the newest view)."""
        with self._lock:
            return self._request

    def restart(self) -> None:
        """Make the next preview due at once (a new run, or the view changed a lot)."""
        with self._lock:
            self._last = None


def compute_preview(trainer, request: PreviewRequest, method: str = "mws") -> PreviewResult:
    """Predict, project and segment the requested region with the trainer's network f.

    Runs in the training thread between steps, on the trainer's device, so the weights are
    consistent and never shared with another thread.
    """
    from napari_spoco.core.inference.prediction import predict_with_foreground

    start = time.perf_counter()
    embeddings, foreground = predict_with_foreground(
        trainer.model,
        request.crop(),
        trainer.normalization,
        channel_axis=request.channel_axis,
        device=trainer.device,
    )
    shown = embeddings[(slice(None), *request.shown)]
    shown_foreground = None if foreground is None else foreground[tuple(request.shown)]
    pca, instances = project_and_segment(shown, shown_foreground, trainer, method,
                                         spacing=request.scale)
    return PreviewResult(
        request=request,
        pca=pca,
        instances=instances,
        iteration=int(trainer.iteration),
        seconds=time.perf_counter() - start,
        snapshot=ModelSnapshot.of(trainer),
    )


def segmented_spacing(spatial, spacing):
    """The voxel size of what is clustered: None once length-1 axes are squeezed away."""
    if spacing is None or any(s == 1 for s in spatial) or len(spacing) != len(spatial):
        return None
    return tuple(float(s) for s in spacing)


def project_and_segment(embeddings: np.ndarray, foreground, model_source, method: str = "mws",
                        project=True, spacing=None, **params):
    """PCA colours (None unless ``project``) and instance labels of ``(E, *spatial)`` embeddings.

    Length-1 axes (the hidden axes of a preview) are squeezed for clustering, so a 2D slice of
    a 3D stack is segmented with 2D neighbourhoods, and restored afterwards. The clustering
    settings are ``core.segmentation.settings_for(model_source)`` (a Trainer, a checkpoint or a
    snapshot) with the user's choices ``params``: the command line decides the same way.
    ``spacing`` is the image layer's scale of the spatial axes (it decides the 3D anisotropy,
    as ``--voxel-size`` does on the command line); a squeezed 2D slice needs none.
    """
    from napari_spoco.core.inference.pca import EmbeddingPCA
    from napari_spoco.core.inference.segmentation import foreground_kwargs, settings_for

    from .clustering_process import segment_off_thread

    spatial = embeddings.shape[1:]
    kept = [s for s in spatial if s > 1] or [1]
    squeezed = embeddings.reshape(embeddings.shape[0], *kept)
    pca = None
    if project:
        pca = EmbeddingPCA().fit_transform(squeezed, seed=0).reshape(*spatial, 3)
    settings = settings_for(model_source, method=method, ndim=len(kept),
                            spacing=segmented_spacing(spatial, spacing), **params)
    if foreground is not None:
        foreground = np.asarray(foreground).reshape(kept)
    kwargs = settings.segment_kwargs()
    kwargs.pop("method")
    labels = segment_off_thread(squeezed, method, **foreground_kwargs(foreground, settings),
                                **kwargs)
    return pca, np.asarray(labels).reshape(spatial)
