"""Checkpoint files: one atomic file per model, read back without executing any code.

A checkpoint is a ``torch.save`` archive of a dictionary holding only plain Python values and
tensors, so that ``torch.load(..., weights_only=True)`` reads it. Reading never falls back to
full unpickling: a file that needs it is refused, which keeps a malicious download from running
code on the user's machine.

Keys written by :class:`~napari_spoco.core.training.Trainer` (``save_checkpoint`` itself only
adds the first three):

``format``, ``format_version``, ``versions``
    The marker ``"napari-spoco-checkpoint"``, the layout version, and the napari-spoco, torch and
    numpy versions that wrote the file.
``architecture``
    ``UNet.config`` of f (and of g, which has the same architecture).
``model_state``, ``momentum_state``
    ``state_dict`` of f and of its momentum copy g.
``normalization``
    ``Normalization.to_dict()`` of the statistics the network was trained with.
``config``
    ``TrainingConfig.to_dict()``: loss parameters, label mode, patch shape, lr, seed...
``iteration``, ``optimizer_state``, ``scheduler_state``, ``rng_state``
    What a resumed training needs to continue where it stopped.
"""

from __future__ import annotations

import errno
import os
import pickle
import pickletools
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

FORMAT = "napari-spoco-checkpoint"
FORMAT_VERSION = 1
_PLAIN_SCALARS = (bool, str, int, float)


def _versions() -> dict[str, str]:
    from napari_spoco import __version__

    return {"napari_spoco": __version__, "torch": str(torch.__version__), "numpy": np.__version__}


def _to_plain(value: Any, where: str = "payload") -> Any:
    """Return ``value`` with numpy values, paths and CUDA tensors turned into loadable types.

    ``weights_only`` loading accepts dicts, lists, tuples, plain scalars and tensors only, so
    anything else must be converted here or refused now, not discovered when reading back.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if value is None:
        return value
    for plain in _PLAIN_SCALARS:
        # Exact types only: subclasses such as torch's TorchVersion (a str) are refused by
        # weights_only loading, so they are converted to their plain base type.
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use str or int")
            out[key] = _to_plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        items = [_to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoints hold only plain values and tensors"
    )


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically, adding the format marker and package versions.

    The archive is written to a temporary file in the same directory, flushed and fsynced, and
    renamed over ``path``; a crash or Ctrl-C mid-write leaves the previous file intact.

    Parameters
    ----------
    path : str or PathLike
        Destination file (conventionally ``*.pt``). Parent directories are created.
    payload : dict
        Plain values (str, int, float, bool, None, lists, tuples, dicts) and tensors; numpy
        arrays and scalars are converted. Tensors are moved to the CPU.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    TypeError
        If the payload holds an object that ``weights_only`` loading would refuse.
    CheckpointError
        If the file cannot be written (full disk, read-only folder); a previous file at
        ``path`` is then left as it was.

    Examples
    --------
    >>> from napari_spoco.core.model.unet import UNet
    >>> model = UNet(features=(4, 8), num_groups=2)
    >>> payload = {"architecture": model.config, "model_state": model.state_dict(), "iteration": 3}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_checkpoint(os.path.join(tmp, "model.pt"), payload)
    ...     content = load_checkpoint(path)
    >>> path.name, content["iteration"], content["format"]
    ('model.pt', 3, 'napari-spoco-checkpoint')
    >>> sorted(content["versions"])
    ['napari_spoco', 'numpy', 'torch']
    """
    path = Path(path)
    content = _to_plain(dict(payload))
    content.update(format=FORMAT, format_version=FORMAT_VERSION, versions=_versions())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, content)
    except OSError as err:  # a full disk, a read-only or vanished folder
        raise _save_failed(path, err) from err
    _fsync_directory(path.parent)
    return path


def _write_atomically(path: Path, content: dict) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(content, fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give the checkpoint the permissions of a normal file
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def _save_failed(path: Path, err: OSError) -> CheckpointError:
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        reason = "the disk is full"
    kept = (f"the previous checkpoint {str(path)!r} was kept unchanged" if path.is_file()
            else "no checkpoint was written")
    return CheckpointError(
        f"Could not save the checkpoint {str(path)!r}: {reason}; {kept}. Free some space or "
        "choose another output in a writable folder, then train again (or --resume from the "
        "kept checkpoint)."
    )


def _current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it and restore it
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a napari-spoco checkpoint with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    path : str or PathLike
        The checkpoint file, or a bioimage.io model package (``.zip`` or a folder with
        ``rdf.yaml``; see :func:`~napari_spoco.core.model.bioimageio_import.package_checkpoint`).
    map_location : str, torch.device or callable
        Where tensors are placed; the CPU by default.

    Returns
    -------
    dict
        The payload (see the module docstring for its keys).

    Raises
    ------
    CheckpointError
        If the file is missing, truncated or corrupt, not a napari-spoco checkpoint, carries
        pickled objects that safe loading refuses (they are never executed), was written by
        a newer napari-spoco, holds values of the wrong type (e.g. a list as ``model_state``,
        a non-integer ``iteration``) or NaN/infinite weights.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not exist; check the path or train a model first."
        )
    from .bioimageio_import import is_bioimageio_package, package_checkpoint

    if is_bioimageio_package(path):  # a bioimage.io .zip or rdf.yaml folder
        content = package_checkpoint(path)
        _check_payload_types(content, str(path))
        _check_finite_weights(content, str(path))
        return content
    if path.is_dir():
        raise CheckpointError(f"Checkpoint {str(path)!r} is a directory; give the .pt file.")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it then refuses; the refusal's
            # own message says everything
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
            content = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower() and not _pickle_holds_code(path):
            # The unpickler met bytes that are no pickle at all: damage, not a payload.
            raise _corrupt(path, err) from err
        raise CheckpointError(
            f"Refused to load {str(path)!r} because it holds code (Python objects that safe "
            f"loading, weights_only=True, does not allow). Nothing in it was executed. It is "
            f"not a napari-spoco checkpoint; only load checkpoints written by napari-spoco. "
            f"(torch said: {_first_line(err)})"
        ) from err
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, zipfile.BadZipFile,
            OSError) as err:  # torch.load raises IndexError on some arbitrary bytes
        raise _corrupt(path, err) from err
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is a PyTorch file but not a napari-spoco checkpoint (no "
            f"{FORMAT!r} marker; a bare state_dict or another tool's checkpoint cannot be "
            "used). Train with napari-spoco or load a checkpoint it wrote."
        )
    version = content.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        writer = content.get("versions", {}).get("napari_spoco", "unknown")
        raise CheckpointError(
            f"Checkpoint {str(path)!r} has format version {version!r}, written by napari-spoco "
            f"{writer}; this napari-spoco reads up to version {FORMAT_VERSION}. "
            "Update napari-spoco to load it."
        )
    missing = [key for key in ("architecture", "model_state") if key not in content]
    if missing:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} lacks {missing}; the file is incomplete. "
            "Use another checkpoint or train again."
        )
    _check_payload_types(content, str(path))
    _check_finite_weights(content, str(path))
    return content


#: Opcodes that make the unpickler import or call something: code, not data.
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}


def _pickle_holds_code(path: Path, limit: int = 1 << 26) -> bool:
    """Whether ``path`` is a plain pickle that imports or calls something.

    ``pickletools.genops`` only parses the opcodes, it executes nothing. torch reports a plain
    (not zipped) pickle of protocol 4 as an unsupported operand, which says nothing of the
    code it carries.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
        if data.startswith(b"PK"):
            return False  # a zip archive: read as opcodes, its bytes would mean anything
        return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(data))
    except (ValueError, OSError, EOFError):
        # genops stops with ValueError where the bytes end or stop being a pickle
        return False


#: Keys whose value must be a dict, when present (``architecture`` and ``model_state`` are
#: always present after the check above).
_DICT_KEYS = ("architecture", "model_state", "momentum_state", "normalization", "config")


def _check_payload_types(content: dict, path: str) -> None:
    """Refuse values of the wrong type before anything is built from them."""
    for key in _DICT_KEYS:
        if key in content and not isinstance(content[key], dict):
            raise _malformed(path, key, f"a dict, got a {type(content[key]).__name__}")
    for key in ("model_state", "momentum_state"):
        state = content.get(key, {})
        wrong = [name for name, value in state.items() if not isinstance(value, torch.Tensor)]
        if wrong:
            raise _malformed(path, key, f"tensors, but {wrong[0]!r} is not one")
    iteration = content.get("iteration", 0)
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise _malformed(path, "iteration", f"a whole number >= 0, got {iteration!r}")


def _malformed(path: str, key: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint {path!r} is malformed: {key!r} must be {what}. The file was not written "
        "by napari-spoco or was edited; use a checkpoint napari-spoco wrote, or train again."
    )


def _check_finite_weights(content: dict, path: str) -> None:
    """Refuse NaN or infinite weights: the network would predict NaN everywhere."""
    for key in ("model_state", "momentum_state"):
        for name, tensor in content.get(key, {}).items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"Checkpoint {path!r} holds NaN or infinite weights ({key} {name!r}), "
                    "probably from a training run that diverged. Use an earlier checkpoint "
                    "(e.g. a previous autosave), or train again with a lower learning rate."
                )


def _corrupt(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"Cannot read checkpoint {str(path)!r}: the file is truncated or corrupt "
        f"({type(err).__name__}: {_first_line(err) or 'unexpected end of data'}). "
        "Use an intact copy, e.g. the last autosave, or train again."
    )


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    # torch's weights_only message buries the useful line ("Unsupported global ...") below
    # advice to set weights_only=False, which napari-spoco never does.
    for line in lines:
        if "global" in line.lower() or "unsupported" in line.lower():
            return line.strip()
    return lines[0].strip() if lines else ""


def check_architecture(checkpoint: dict, architecture: dict, path: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` unless the checkpoint's architecture equals ``architecture``.

    Parameters
    ----------
    checkpoint : dict
        A payload from :func:`load_checkpoint`.
    architecture : dict
        The ``UNet.config`` the caller wants to load the weights into.
    path : str
        Shown in the message.
    """
    from .unet import complete_architecture

    saved = complete_architecture(checkpoint["architecture"])
    wanted = complete_architecture(architecture)
    differences = [
        f"{key}: checkpoint {_plain(saved.get(key))!r} vs wanted {_plain(wanted.get(key))!r}"
        for key in sorted(set(saved) | set(wanted))
        if _plain(saved.get(key)) != _plain(wanted.get(key))
    ]
    if differences:
        raise CheckpointError(
            f"The network in {path!r} has another architecture ({'; '.join(differences)}). "
            "Load it without overriding the architecture, or train a new model."
        )


def _plain(value: Any) -> Any:
    # Tuples come back as tuples and lists as lists; compare them as the same sequence.
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def load_state(model: torch.nn.Module, state: dict, path: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` strictly, turning mismatches into ``CheckpointError``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"The weights in {path!r} do not fit the network ({_first_line(err)}); the "
            "checkpoint was made for another architecture or is damaged."
        ) from err


def load_source_state(model: torch.nn.Module, state: dict, path: str = "checkpoint") -> None:
    """Load a source network's weights for fine-tuning; only the optional heads may differ.

    A source trained without the foreground head leaves ``model``'s new head as initialised; a
    source with one, loaded into a network without it, drops that head's weights. Any other
    mismatch raises ``CheckpointError`` as in :func:`load_state`.
    """
    heads = ("foreground_head.", "affinity_head.")  # optional heads (CRAC: affinity_head)
    own = model.state_dict()
    state = {key: value for key, value in dict(state).items()
             if key in own or not key.startswith(heads)}
    for key, value in own.items():
        if key.startswith(heads):
            state.setdefault(key, value)
    load_state(model, state, path)


@dataclass
class LoadedModel:
    """A trained network ready for prediction.

    Attributes
    ----------
    model : torch.nn.Module
        f, in eval mode, on the requested device.
    momentum_model : torch.nn.Module or None
        g (the exponential moving average of f), in eval mode; ``None`` if the file has none.
    normalization : Normalization
        The input statistics f was trained with.
    config : dict
        ``TrainingConfig.to_dict()`` of the training run (loss parameters, label mode, ...).
    architecture : dict
        ``UNet.config``.
    iteration : int
        Optimizer steps done when the file was written.
    path : pathlib.Path
        The file it came from.
    annotations : dict
        What the training labels looked like (``segmentation.summarize_annotations``); empty
        for checkpoints written before it was recorded.
    """

    model: torch.nn.Module
    momentum_model: torch.nn.Module | None
    normalization: Any
    config: dict
    architecture: dict
    iteration: int
    path: Path
    annotations: dict = field(default_factory=dict)


def build_network(checkpoint: dict, state_key: str, path: str, device) -> torch.nn.Module:
    """Build a ``UNet`` from the checkpoint's architecture and load ``checkpoint[state_key]``."""
    from .frozen_norm import statistics_tile
    from .unet import UNet

    try:
        network = UNet.from_config(dict(checkpoint["architecture"]))
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"The architecture stored in {path!r} cannot be built ({err}); the file was written "
            "by an incompatible napari-spoco version or is damaged."
        ) from err
    load_state(network, checkpoint[state_key], path)
    # the grid it was trained on: prediction resamples images to it (core.model.input_scale)
    config = dict(checkpoint.get("config") or {})
    network.input_scale = float(config.get("input_scale") or 1.0)
    # the tiles its group-norm statistics are taken over (frozen_norm.statistics_tile)
    if config.get("patch_shape"):
        network.statistics_tile = statistics_tile(config["patch_shape"])
    return network.to(device)


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", architecture: dict | None = None
) -> LoadedModel:
    """Load f and g from a checkpoint for prediction.

    Parameters
    ----------
    path : str or PathLike
        The checkpoint file.
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``...
    architecture : dict, optional
        If given, the ``UNet.config`` the caller expects; a checkpoint of another architecture
        raises ``CheckpointError`` instead of loading.

    Returns
    -------
    LoadedModel

    Examples
    --------
    Save a tiny trained run (``Trainer.save``) and load it for prediction:

    >>> from napari_spoco.core.training import Trainer, TrainingConfig
    >>> image = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    >>> labels = np.zeros((32, 32), np.uint32); labels[4:12, 4:12] = 1; labels[16:28, 16:28] = 2
    >>> trainer = Trainer([(image, labels)], TrainingConfig(
    ...     features=(4, 8), num_groups=2, iterations=0, device="cpu", autosave_seconds=None))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     loaded = load_model(trainer.save(os.path.join(tmp, "model.pt")), device="cpu")
    >>> type(loaded.model).__name__, loaded.iteration, loaded.architecture["features"]
    ('UNet', 0, [4, 8])
    >>> sorted(loaded.annotations)
    ['background_known', 'median_object_size', 'n_objects']
    """
    from ..devices import resolve_device
    from .normalization import Normalization
    from .unet import complete_architecture

    device = resolve_device(device)
    checkpoint = load_checkpoint(path)
    name = str(path)
    if architecture is not None:
        check_architecture(checkpoint, architecture, name)
    model = build_network(checkpoint, "model_state", name, device).eval()
    momentum = None
    if "momentum_state" in checkpoint:
        momentum = build_network(checkpoint, "momentum_state", name, device).eval()
        momentum.requires_grad_(False)
    if "normalization" not in checkpoint:
        raise CheckpointError(
            f"Checkpoint {name!r} has no normalisation statistics; it is incomplete. "
            "Use another checkpoint or train again."
        )
    return LoadedModel(
        model=model,
        momentum_model=momentum,
        normalization=Normalization.from_dict(dict(checkpoint["normalization"])),
        config=dict(checkpoint.get("config", {})),
        architecture=complete_architecture(checkpoint["architecture"]),
        iteration=int(checkpoint.get("iteration", 0)),
        path=Path(path),
        annotations=dict(checkpoint.get("annotations") or {}),
    )
