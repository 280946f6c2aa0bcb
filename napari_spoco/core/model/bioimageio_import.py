"""Read a bioimage.io model package (``.zip`` or a folder with ``rdf.yaml``) as a checkpoint.

:func:`package_checkpoint` returns the same dictionary as
:func:`~napari_spoco.core.model.checkpoint.load_checkpoint`, so prediction, segmentation and
fine-tuning (``--source``) take a package wherever they take a ``.pt`` file. It reads the YAML
and the weights directly (``yaml.safe_load``, ``torch.load(weights_only=True)``) and never runs
the package's code, so it needs no ``bioimageio`` library.

Packages written by :func:`~napari_spoco.core.model.bioimageio_export.export_bioimageio` round-trip
exactly (f, g, normalisation, training settings, annotation summary). Other packages load when
napari-spoco can build their network: ``pytorch_state_dict`` weights of a ``UNet`` whose
arguments are napari-spoco's architecture keys, one output tensor with a channel axis and a
fixed (or no) normalisation. Anything else raises ``CheckpointError`` saying why.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path, PurePosixPath

import torch

from ..errors import CheckpointError

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


def _rdf_name(names) -> str | None:
    for name in names:
        if name in RDF_NAMES or name.endswith(".bioimageio.yaml"):
            return name
    return None


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a bioimage.io package: a zip or folder with an ``rdf.yaml``.

    Examples
    --------
    >>> is_bioimageio_package("model.pt")
    False
    """
    path = Path(path)
    if path.is_dir():
        return _rdf_name(sorted(p.name for p in path.iterdir())) is not None
    if path.is_file() and path.name.endswith(RDF_NAMES):
        return True
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return _rdf_name(archive.namelist()) is not None
        except (zipfile.BadZipFile, OSError):
            return False
    return False


class _Package:
    """Read-only access to the files of a package, zipped or not."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_file() and not path.name.endswith(RDF_NAMES):
            self.archive = zipfile.ZipFile(path)
            self.rdf = _rdf_name(self.archive.namelist())
            self.root = None
        else:
            self.archive = None
            self.root = path if path.is_dir() else path.parent
            self.rdf = path.name if path.is_file() else _rdf_name(
                sorted(p.name for p in path.iterdir()))

    def read(self, name: str) -> bytes:
        name = str(PurePosixPath(name))
        if "://" in name:
            raise CheckpointError(
                f"Package {str(self.path)!r} refers to the remote file {name!r}; napari-spoco "
                "reads local packages only. Download the full package (.zip) and load that.")
        try:
            if self.archive is not None:
                return self.archive.read(name)
            return (self.root / name).read_bytes()
        except (KeyError, OSError, zipfile.BadZipFile) as err:
            raise CheckpointError(
                f"Package {str(self.path)!r} lacks its file {name!r}; it is incomplete.") from err

    def close(self):
        if self.archive is not None:
            self.archive.close()


def _fail(path, why: str) -> CheckpointError:
    return CheckpointError(f"Cannot use the bioimage.io package {str(path)!r} as a napari-spoco "
                           f"model: {why}")


def _source(entry) -> str:
    return entry.get("source") if isinstance(entry, dict) else str(entry)


def _state(package: _Package, name: str) -> dict:
    try:
        state = torch.load(io.BytesIO(package.read(name)), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # safe loading refuses code; damage raises many kinds
        raise _fail(package.path, f"its weights {name!r} cannot be read safely "
                                  f"({type(err).__name__}: {err}).") from err
    if not isinstance(state, dict):
        raise _fail(package.path, f"{name!r} is not a state dict.")
    return state


def package_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint payload (as from ``load_checkpoint``) of the package at ``path``.

    Raises
    ------
    CheckpointError
        Not a model package, a format other than 0.5, no ``pytorch_state_dict`` weights, an
        architecture napari-spoco cannot build, an output that is not an embedding, a
        normalisation it cannot reproduce.
    """
    try:
        import yaml
    except ImportError as err:  # PyYAML comes with napari and dask; a bare core may lack it
        raise CheckpointError(
            f"Reading the bioimage.io package {str(path)!r} needs PyYAML; install it with "
            "`pip install pyyaml`.") from err

    from .checkpoint import FORMAT, FORMAT_VERSION, _versions

    path = Path(path)
    try:
        package = _Package(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise _fail(path, f"the archive is damaged ({err}).") from err
    try:
        try:
            rdf = yaml.safe_load(package.read(package.rdf))
        except yaml.YAMLError as err:
            raise _fail(path, f"its {package.rdf} is not valid YAML ({err}).") from err
        if not isinstance(rdf, dict) or rdf.get("type") != "model":
            raise _fail(path, "it does not describe a model (type is "
                              f"{rdf.get('type') if isinstance(rdf, dict) else None!r}).")
        version = str(rdf.get("format_version", ""))
        if not version.startswith("0.5"):
            raise _fail(path, f"its format version is {version!r}; napari-spoco reads 0.5.x. "
                              "Convert it with bioimageio.spec's update_format.")
        weights = rdf.get("weights") or {}
        if "pytorch_state_dict" not in weights:
            raise _fail(path, f"it has no pytorch_state_dict weights (it has "
                              f"{sorted(weights) or 'none'}); napari-spoco needs them.")
        ours = (rdf.get("config") or {}).get("napari_spoco")
        try:
            payload = (_ours(package, rdf, ours) if isinstance(ours, dict)
                       else _foreign(package, rdf))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            if isinstance(err, CheckpointError):
                raise
            raise _fail(path, f"its description is incomplete or malformed "
                              f"({type(err).__name__}: {err}).") from err
    finally:
        package.close()
    payload.update(format=FORMAT, format_version=FORMAT_VERSION, versions=_versions(),
                   bioimageio_package=str(path))
    return payload


def _ours(package: _Package, rdf: dict, ours: dict) -> dict:
    """A package napari-spoco exported: everything is in ``config.napari_spoco``."""
    from .bioimageio_export import MOMENTUM_FILE

    payload = {
        "architecture": dict(ours["architecture"]),
        "model_state": _state(package, _source(rdf["weights"]["pytorch_state_dict"])),
        "normalization": dict(ours["normalization"]),
        "config": dict(ours.get("training_config") or {}),
        "annotations": dict(ours.get("annotations") or {}),
        "iteration": int(ours.get("iteration", 0)),
    }
    attached = [_source(a) for a in rdf.get("attachments") or []]
    momentum = [name for name in attached if PurePosixPath(name).name == MOMENTUM_FILE]
    if momentum:
        payload["momentum_state"] = _state(package, momentum[0])
    return payload


def _foreign(package: _Package, rdf: dict) -> dict:
    """Another tool's package: accepted only if it is a U-Net napari-spoco can build."""
    from .unet import ARCHITECTURE_KEYS

    path = package.path
    entry = rdf["weights"]["pytorch_state_dict"]
    arch = entry.get("architecture") or {}
    kwargs = dict(arch.get("kwargs") or {})
    callable_name = arch.get("callable")
    if callable_name != "UNet" or not set(kwargs) <= set(ARCHITECTURE_KEYS):
        raise _fail(path, f"its network {callable_name!r} (from "
                          f"{arch.get('source') or arch.get('import_from')!r}) is not an "
                          "architecture napari-spoco can build; only napari-spoco's UNet is.")
    inputs, outputs = rdf.get("inputs") or [], rdf.get("outputs") or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise _fail(path, f"it has {len(inputs)} inputs and {len(outputs)} outputs; a SPOCO "
                          "embedding network has one of each.")
    if not any(a.get("type") == "channel" for a in outputs[0].get("axes", [])):
        raise _fail(path, "its output has no channel axis, so it is not a pixel embedding.")
    return {"architecture": kwargs, "model_state": _state(package, _source(entry)),
            "normalization": _normalization(path, inputs[0], int(kwargs.get("in_channels", 1))),
            "config": {}, "annotations": {}, "iteration": 0}


def _normalization(path, tensor: dict, channels: int) -> dict:
    """``Normalization.to_dict()`` of the input's preprocessing, if napari-spoco can redo it."""
    steps = [s for s in tensor.get("preprocessing") or [] if s.get("id") != "ensure_dtype"]
    if not steps:
        return {"mean": [0.0] * channels, "std": [1.0] * channels}
    if len(steps) == 1 and steps[0].get("id") == "fixed_zero_mean_unit_variance":
        kwargs = steps[0].get("kwargs") or {}
        mean, std = kwargs.get("mean"), kwargs.get("std")
        mean = mean if isinstance(mean, list) else [mean] * channels
        std = std if isinstance(std, list) else [std] * channels
        return {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    raise _fail(path, f"its preprocessing {[s.get('id') for s in steps]} is not a fixed "
                      "normalisation; napari-spoco normalises with fixed mean and std only.")
