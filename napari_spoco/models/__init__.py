"""The pretrained source models that ship with napari-spoco.

This registry is the one place to ask which models exist: it reads ``models.json`` beside the
checkpoints (written by ``benchmarks/train_source_models.py``, which reproduces every model) and
lists only entries whose ``.pt`` file is installed. Load a model with the ordinary checkpoint
code::

    from napari_spoco.core.model.checkpoint import load_model
    from napari_spoco.models import available_models, model_path

    [info.name for info in available_models()]     # ['ovules_2d', 'ovules_3d']
    loaded = load_model(model_path("ovules_3d"), device="cpu")

Where a user may name a checkpoint (``napari-spoco train --source``, ``segment --checkpoint``,
``predict --checkpoint``), :func:`resolve_checkpoint` accepts a file path or a shipped model's
name; ``napari-spoco models`` lists the names.

How each model was trained and how well it does is in ``docs/models.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from napari_spoco.core.errors import SpocoInputError

MODELS_DIR = Path(__file__).resolve().parent
MANIFEST = MODELS_DIR / "models.json"

__all__ = ["ModelInfo", "available_models", "model_info", "model_path", "resolve_checkpoint"]


@dataclass(frozen=True)
class ModelInfo:
    """A shipped checkpoint and what it was trained for.

    Attributes
    ----------
    name : str
        Short identifier, e.g. ``"ovules_3d"``.
    path : pathlib.Path
        The installed checkpoint file.
    description : str
        One line for a model chooser.
    ndim : int
        2 or 3: the image dimensionality the network takes.
    modality : str
        What the images show, e.g. ``"membranes"``.
    preset : str
        Synthetic tissue preset of the training data (``make_tissue(..., preset=...)``).
    mode : str
        Label convention it was trained with (``"dense"``: every cell is an object).
    extra : dict
        The remaining manifest fields (patch shape, features, iterations, validation figures).
    """

    name: str
    path: Path
    description: str
    ndim: int
    modality: str = ""
    preset: str = ""
    mode: str = ""
    extra: dict = field(default_factory=dict, compare=False)


def _read_manifest() -> list[dict]:
    if not MANIFEST.exists():
        return []
    return list(json.loads(MANIFEST.read_text(encoding="utf-8")).get("models", []))


def available_models(ndim: int | None = None) -> list[ModelInfo]:
    """The shipped models whose checkpoint file is installed, sorted by name.

    Parameters
    ----------
    ndim : int, optional
        Only models for 2D or for 3D images.

    Returns
    -------
    list of ModelInfo
    """
    models = []
    for entry in _read_manifest():
        path = MODELS_DIR / entry["file"]
        if not path.is_file() or (ndim is not None and int(entry["ndim"]) != ndim):
            continue
        known = {"name", "file", "description", "ndim", "modality", "preset", "mode"}
        models.append(ModelInfo(
            name=entry["name"], path=path, description=entry.get("description", ""),
            ndim=int(entry["ndim"]), modality=entry.get("modality", ""),
            preset=entry.get("preset", ""), mode=entry.get("mode", ""),
            extra={k: v for k, v in entry.items() if k not in known},
        ))
    return sorted(models, key=lambda info: info.name)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a shipped model; ``SpocoInputError`` naming the choices."""
    for info in available_models():
        if info.name == name:
            return info
    names = [info.name for info in available_models()]
    raise SpocoInputError(
        f"No shipped model named {name!r}; available: {names or 'none installed'}. Pick one of "
        "those, or give the path of a checkpoint file."
    )


def model_path(name: str) -> Path:
    """Path of the checkpoint of the shipped model ``name`` (see :func:`available_models`)."""
    return model_info(name).path


def resolve_checkpoint(value) -> Path:
    """The checkpoint file meant by ``value``: a file path, or the name of a shipped model.

    An existing file is returned as given (``~`` expanded), even if a shipped model has the
    same name: a file called ``ovules_2d`` in the working folder wins over the shipped
    ``ovules_2d``. Otherwise the name of a shipped model (see :func:`available_models`) gives
    its installed file.

    Parameters
    ----------
    value : str or os.PathLike
        What the user wrote: a path such as ``model.pt``, or a name such as ``ovules_2d``.

    Returns
    -------
    pathlib.Path
        The checkpoint file to load.

    Raises
    ------
    SpocoInputError
        If ``value`` is neither an existing file nor a shipped model's name; the message names
        the installed models and says that a file path works too.

    Examples
    --------
    >>> resolve_checkpoint("ovules_2d").name
    'ovules_2d.pt'
    """
    from napari_spoco.core.model.bioimageio_import import is_bioimageio_package

    path = Path(value).expanduser()
    if path.is_file() or (path.is_dir() and is_bioimageio_package(path)):
        return path
    text = str(value)
    for info in available_models():
        if info.name == text:
            return info.path
    names = ", ".join(info.name for info in available_models()) or "none installed"
    what = "is a folder, not a checkpoint file," if path.is_dir() else "does not exist"
    raise SpocoInputError(
        f"Checkpoint {text!r} {what} and is not the name of a shipped model (available: "
        f"{names}; 'napari-spoco models' describes them). Give a shipped model's name or the "
        "path of a checkpoint file (.pt)."
    )
