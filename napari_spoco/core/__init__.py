"""The SPOCO method as plain functions and classes over arrays.

Nothing below this package may import Qt, napari or magicgui: the core runs headless
(command line, scripts, clusters) and is what the widgets call in worker threads.

Subpackages follow the data path: ``model`` (network, checkpoints, bioimage.io),
``training`` (configuration, data, sampling, augmentation, the trainer), ``loss``,
``inference`` (tiled and blockwise prediction, PCA, segmentation settings), ``clustering``,
``evaluation`` (metrics) and ``synthetic`` (images with ground truth). Shared pieces stay at this
level: ``errors``, ``devices``, ``io``, ``ome_zarr``, ``validation`` and ``run_defaults``.

The flat module names of release 0.x (``napari_spoco.core.prediction``, ``...core.unet``...)
still import, as the same module objects, for one more release: :data:`MOVED` maps them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: Old flat module (under napari_spoco.core) -> its place now.
MOVED = {
    "unet": "model.unet", "frozen_norm": "model.frozen_norm", "momentum": "model.momentum",
    "checkpoint": "model.checkpoint", "normalization": "model.normalization",
    "bioimageio_export": "model.bioimageio_export",
    "bioimageio_import": "model.bioimageio_import",
    "training_config": "training.config", "data": "training.data",
    "sampling": "training.sampling", "augment": "training.augment",
    "adversarial": "training.adversarial", "distributed": "training.distributed",
    "loss_kernels": "loss.kernels", "loss_terms": "loss.terms", "crac_loss": "loss.crac",
    "foreground": "loss.foreground",
    "prediction": "inference.prediction", "tiling": "inference.tiling",
    "pca": "inference.pca", "blockwise": "inference.blockwise",
    "crac_segmentation": "inference.crac_segmentation",
    "segmentation": "inference.segmentation", "uncertainty": "inference.uncertainty",
    "metrics": "evaluation.metrics", "synthetic_fields": "synthetic.fields",
    "synthetic_nuclei": "synthetic.nuclei", "synthetic_tissue": "synthetic.tissue",
    "clustering.sampling": "clustering.pixel_sampling",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import an old module name as the module at its new place (imported lazily)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix = __name__ + "."
        if fullname.startswith(prefix) and fullname[len(prefix):] in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(f"{__name__}.{MOVED[spec.name[len(__name__) + 1:]]}")
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module):
        pass  # the module at its new place is already executed


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
