"""Export a napari-spoco checkpoint as a bioimage.io model package (format 0.5).

The package holds the network twice: ``pytorch_state_dict`` weights with the architecture as a
*file* (a self-contained copy of ``core/model/unet.py``, so other tools need no napari-spoco to
build the network) and TorchScript weights, plus the fixed input normalisation, test tensors
computed by the model, a PCA cover image, a README and, under ``config["napari_spoco"]``,
everything an import needs to restore the checkpoint exactly (see
:mod:`~napari_spoco.core.model.bioimageio_import`).

``bioimageio.spec`` is imported only inside :func:`export_bioimageio`: the rest of napari-spoco
never needs it (it is the optional extra ``napari-spoco[bioimageio]``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import SpocoInputError
from .frozen_norm import statistics_tile

#: Key of ``config`` in the package that holds the napari-spoco specifics.
CONFIG_KEY = "napari_spoco"
ARCHITECTURE_FILE = "spoco_unet.py"
STATE_FILE = "weights.pt"
TORCHSCRIPT_FILE = "weights_torchscript.pt"
MOMENTUM_FILE = "momentum_weights.pt"
CITATION = {
    "text": "Wolny, A. et al. Sparse Object-level Supervision for Instance Segmentation with "
            "Pixel Embeddings. CVPR 2022.",
    "doi": "10.48550/arXiv.2103.14572",
}
#: Spatial extent of the test tensors: small, so bioimageio's test run takes seconds.
TEST_SHAPE = {2: (64, 64), 3: (16, 32, 32)}


def standalone_unet_source() -> str:
    """The text of ``core/model/unet.py`` with its one package import replaced, runnable on its own.

    ``unet.py`` imports only ``SpocoInputError`` from the package; a local ``ValueError``
    subclass of that name keeps every message and check while the file needs only torch.

    Examples
    --------
    >>> namespace = {}
    >>> exec(compile(standalone_unet_source(), "spoco_unet.py", "exec"), namespace)
    >>> namespace["UNet"](features=(4, 8), num_groups=2).output_channels
    16
    """
    text = (Path(__file__).parent / "unet.py").read_text(encoding="utf-8")
    relative = "from ..errors import SpocoInputError"
    if text.count(relative) != 1 or "from ." in text.replace(relative, ""):
        raise RuntimeError("core/model/unet.py gained package imports; update "
                           "standalone_unet_source")
    return text.replace(relative, "class SpocoInputError(ValueError):\n"
                                  "    \"\"\"Bad input (napari-spoco's error type).\"\"\"")


def tile_sizes(model) -> dict[str, int]:
    """Minimum and step of each spatial axis (``{"y": 4, ...}``): the poolings' multiple.

    Examples
    --------
    >>> from napari_spoco.core.model.unet import UNet
    >>> tile_sizes(UNet(ndim=3, features=(4, 8, 16), num_groups=2, anisotropic_levels=1))
    {'z': 2, 'y': 4, 'x': 4}
    """
    names = ("z", "y", "x")[-model.ndim:]
    return dict(zip(names, model.required_multiple))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _test_image(normalization, ndim: int, in_channels: int, seed: int = 0) -> np.ndarray:
    """A smooth random image ``(C, *TEST_SHAPE)`` with the training statistics' mean and std."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((in_channels, *TEST_SHAPE[ndim]))
    smooth = np.stack([ndimage.gaussian_filter(c, 2.0) for c in noise])
    smooth /= smooth.std() or 1.0
    mean = np.asarray(normalization.mean, np.float64).reshape(-1, *[1] * ndim)
    std = np.asarray(normalization.std, np.float64).reshape(-1, *[1] * ndim)
    return (mean + std * smooth).astype(np.float32)


def _network_output(model, normalization, image: np.ndarray) -> np.ndarray:
    """What bioimageio computes: the normalised image through the network, ``(1, C, ...)``."""
    x = torch.from_numpy(normalization.apply(image, channel_axis=0)[None])
    with torch.no_grad():
        return model.cpu().eval()(x).numpy().astype(np.float32)


def _cover(output: np.ndarray, embeddings: int, path: Path) -> Path:
    import imageio.v3 as iio

    from ..inference.pca import pca_rgb

    emb = output[0, :embeddings]
    if emb.ndim == 4:  # 3D: the middle slice
        emb = emb[:, emb.shape[1] // 2]
    rgb = (np.clip(pca_rgb(emb), 0, 1) * 255).astype(np.uint8)
    # Covers should be at least 256 pixels wide to look sharp on bioimage.io.
    factor = max(1, 256 // rgb.shape[1])
    rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    iio.imwrite(path, rgb)
    return path


def _readme(name: str, checkpoint: dict, channels: list[str], multiple: dict,
            field: tuple) -> str:
    arch = checkpoint["architecture"]
    annotations = checkpoint.get("annotations") or {}
    fg = ("The last output channel is the foreground logit (object vs background; apply a "
          "sigmoid for a probability)." if arch.get("foreground") else
          "The network has no foreground head: every output channel is an embedding.")
    training = checkpoint.get("config") or {}
    patch = training.get("patch_shape")
    patch_note = f"training patches of {tuple(patch)}" if patch else "its training patches"
    statistics_note = (str(statistics_tile(patch)) if patch
                       else "a few times the training patch")
    return f"""# {name}

A SPOCO pixel-embedding network trained with napari-spoco (a napari plugin) from sparse
(object-level) annotations. It maps an image to {arch['out_channels']} embedding channels per
pixel; pixels of the same object get nearby embeddings, so instances come from clustering
them (napari-spoco uses a mutex watershed on embedding distances). {fg}

Output channels: {', '.join(channels)}.

## Input
{arch['in_channels']} channel(s), {arch['ndim']}D, normalised with the fixed mean/std of the
training images (the preprocessing of this package). Spatial sizes must be multiples of
{multiple} (the U-Net's poolings). One output pixel sees at most {field} input pixels per axis
(the receptive field): tiles should be several times larger, or overlap by about that much,
for embeddings that do not change near tile borders.
Group norm normalises each input with its own statistics, and the network learned with those of
{patch_note}: napari-spoco predicts with statistics pooled over tiles of {statistics_note} spread
over the image. Run on a whole image much larger than that, the network gives different
embeddings (on membranes, more segments); tiles of about that size keep its training regime.

## Training data
Images and sparse labels painted by the user in napari-spoco: {annotations.get('n_objects',
'an unknown number of')} labelled objects (median object size
{annotations.get('median_object_size', 'unknown')} pixels), labels mode
{training.get('mode', 'unknown')!r}, {checkpoint.get('iteration', 0)} training iterations.
The training images are not part of this package.

## Use
- napari-spoco: `napari-spoco segment --checkpoint this.zip --image ...`, or drop the zip on
  napari; `napari-spoco train --source this.zip ...` fine-tunes it.
- other bioimage.io tools run it and give the embeddings; clustering them into instances
  needs a SPOCO-aware post-processing (e.g. napari-spoco's).

## Validation
Exported by napari-spoco, which checks the package with bioimageio.spec and runs
bioimageio.core's test (both weight formats reproduce the test output) in its test suite.
The embeddings are validated by the segmentations they give on the user's images.

## Citation
{CITATION['text']} arXiv:2103.14572.
"""


def export_bioimageio(
    checkpoint_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str | None = None,
    authors: tuple[str, ...] = ("napari-spoco user",),
    license: str = "CC-BY-4.0",
    sample_image: np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the checkpoint at ``checkpoint_path`` as a bioimage.io model package ``out``.

    Parameters
    ----------
    checkpoint_path : str or PathLike
        A napari-spoco checkpoint (``.pt``).
    out : str or PathLike
        The package to write (``.zip``); written atomically, never over an input.
    name, authors, license : str, tuple of str, str
        Metadata of the package (the name defaults to "napari-spoco <checkpoint stem>").
    sample_image : ndarray, optional
        ``(C, [Z,] Y, X)`` raw image for the test tensors (cropped to a small tile); a smooth
        random image with the training statistics is used if not given.
    overwrite : bool
        Whether an existing ``out`` may be replaced.

    Returns
    -------
    pathlib.Path
        The written package.

    Raises
    ------
    SpocoInputError
        Bad output path, or ``bioimageio.spec`` is not installed.
    CheckpointError
        The checkpoint cannot be read.
    """
    from ..io import check_output
    from .checkpoint import load_checkpoint, load_model

    out = check_output(out, {"--checkpoint": checkpoint_path}, overwrite=overwrite,
                       suffixes=(".zip",))
    try:
        from bioimageio.spec import save_bioimageio_package
    except ImportError as err:
        raise SpocoInputError(
            "Exporting for bioimage.io needs bioimageio.spec; install it with "
            "`pip install napari-spoco[bioimageio]`."
        ) from err
    checkpoint = load_checkpoint(checkpoint_path)
    loaded = load_model(checkpoint_path, device="cpu")
    if loaded.model.input_scale != 1.0:
        # bioimage.io 0.5 has no preprocessing step that resizes an input and its outputs back
        raise SpocoInputError(
            f"{Path(checkpoint_path).name} was trained on images resampled by "
            f"{loaded.model.input_scale:g} (its input scale, from the painted objects' size); a "
            "bioimage.io package cannot resample, so it would see cells of the wrong size. "
            "Export a model trained at input scale 1 (TrainingConfig(input_scale=1.0))."
        )
    name = name or f"napari-spoco {Path(checkpoint_path).stem}"
    with tempfile.TemporaryDirectory(prefix="napari-spoco-bioimageio-") as tmp:
        try:
            descr = _describe(Path(tmp), checkpoint, loaded, name, authors, license,
                              sample_image)
        except ValueError as err:  # pydantic's ValidationError: the metadata given is invalid
            if isinstance(err, SpocoInputError):
                raise
            raise SpocoInputError(
                f"The bioimage.io description is invalid; fix the name, authors or license "
                f"(names need 5 to 128 characters, licenses are SPDX ids such as "
                f"'CC-BY-4.0'): {err}") from err
        # the zip goes next to ``out`` first and is renamed into place: never half-written
        fd, tmp_zip = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".zip", dir=out.parent)
        os.close(fd)
        try:
            save_bioimageio_package(descr, output_path=Path(tmp_zip))
            os.replace(tmp_zip, out)
        finally:
            if os.path.exists(tmp_zip):
                os.unlink(tmp_zip)
    return out


def _describe(tmp: Path, checkpoint, loaded, name, authors, license, sample_image):
    """Write the package's files into ``tmp`` and return its ``ModelDescr``."""
    from bioimageio.spec.model import v0_5 as spec

    from .normalization import STD_FLOOR

    model, arch = loaded.model, loaded.architecture
    ndim, embeddings = int(arch["ndim"]), int(arch["out_channels"])
    image = (_test_image(loaded.normalization, ndim, int(arch["in_channels"]))
             if sample_image is None else _crop(np.asarray(sample_image), ndim,
                                                model.required_multiple))
    output = _network_output(model, loaded.normalization, image)
    np.save(tmp / "test_input.npy", image[None])
    np.save(tmp / "test_output.npy", output)
    cover = _cover(output, embeddings, tmp / "cover.png")
    source = tmp / ARCHITECTURE_FILE
    source.write_text(standalone_unet_source(), encoding="utf-8")
    torch.save(model.state_dict(), tmp / STATE_FILE)
    attachments = []
    if loaded.momentum_model is not None:
        # g, the momentum network: an import restores both, for consistency clustering
        torch.save(loaded.momentum_model.state_dict(), tmp / MOMENTUM_FILE)
        attachments.append(spec.FileDescr(source=tmp / MOMENTUM_FILE))
    with warnings.catch_warnings():
        # The traced shape checks and padding are constants; valid because every allowed
        # size (a multiple of the poolings, see tile_sizes) needs no padding.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, torch.from_numpy(
            loaded.normalization.apply(image, 0)[None]))
    traced.save(str(tmp / TORCHSCRIPT_FILE))
    channels = [f"embedding_{i}" for i in range(embeddings)]
    if arch.get("foreground"):
        channels.append("foreground_logit")
    # further heads (e.g. affinities) come after these; name them by what the network returns
    channels += [f"extra_{i}" for i in range(output.shape[1] - len(channels))]
    multiple = tile_sizes(model)
    (tmp / "README.md").write_text(_readme(name, checkpoint, channels, multiple,
                                                      model.receptive_field), "utf-8")

    spatial_in = [spec.SpaceInputAxis(id=spec.AxisId(axis),
                                      size=spec.ParameterizedSize(min=step, step=step))
                  for axis, step in multiple.items()]
    spatial_out = [spec.SpaceOutputAxis(id=spec.AxisId(axis), size=spec.SizeReference(
        tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId(axis))) for axis in multiple]
    std = [max(float(s), STD_FLOOR) for s in loaded.normalization.std]
    mean = [float(m) for m in loaded.normalization.mean]
    norm_kwargs = (spec.FixedZeroMeanUnitVarianceKwargs(mean=mean[0], std=std[0])
                   if len(mean) == 1 else spec.FixedZeroMeanUnitVarianceAlongAxisKwargs(
                       mean=mean, std=std, axis=spec.AxisId("channel")))
    inputs = [spec.InputTensorDescr(
        id=spec.TensorId("raw"),
        description="raw image intensities (normalised by the preprocessing)",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[
            spec.Identifier(f"channel_{i}") for i in range(int(arch["in_channels"]))]),
            *spatial_in],
        test_tensor=spec.FileDescr(source=tmp / "test_input.npy"),
        preprocessing=[spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
                       spec.FixedZeroMeanUnitVarianceDescr(kwargs=norm_kwargs)],
    )]
    outputs = [spec.OutputTensorDescr(
        id=spec.TensorId("embeddings"),
        description=("SPOCO pixel embeddings" + (" followed by the foreground logit"
                                                 if arch.get("foreground") else "")),
        axes=[spec.BatchAxis(), spec.ChannelAxis(
            channel_names=[spec.Identifier(c) for c in channels]), *spatial_out],
        test_tensor=spec.FileDescr(source=tmp / "test_output.npy"),
    )]
    from napari_spoco import __version__

    torch_version = spec.Version(torch.__version__.split("+")[0])
    weights = spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
            source=tmp / STATE_FILE,
            architecture=spec.ArchitectureFromFileDescr(
                source=source, sha256=_sha256(source), callable="UNet", kwargs=dict(arch)),
            pytorch_version=torch_version),
        torchscript=spec.TorchscriptWeightsDescr(
            source=tmp / TORCHSCRIPT_FILE, pytorch_version=torch_version,
            parent="pytorch_state_dict"),
    )
    return spec.ModelDescr(
        name=name,
        description=("SPOCO pixel embeddings for instance segmentation, trained from sparse "
                     "annotations with napari-spoco"),
        authors=[spec.Author(name=a) for a in authors],
        cite=[spec.CiteEntry(text=CITATION["text"], doi=spec.Doi(CITATION["doi"]))],
        license=license,
        documentation=spec.FileDescr(source=tmp / "README.md"),
        covers=[spec.FileDescr(source=cover)],
        tags=["napari-spoco", "spoco", "instance-segmentation", "pixel-embeddings",
              f"{ndim}d", "pytorch"],
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        attachments=attachments,
        config={CONFIG_KEY: {
            "napari_spoco_version": __version__,
            "architecture": dict(arch),
            "normalization": loaded.normalization.to_dict(),
            "annotations": _jsonable(checkpoint.get("annotations") or {}),
            "training_config": _jsonable(checkpoint.get("config") or {}),
            "iteration": int(checkpoint.get("iteration", 0)),
            "has_momentum": "momentum_state" in checkpoint,
        }},
    )


def _crop(image: np.ndarray, ndim: int, multiple) -> np.ndarray:
    """A central crop of ``(C, ...)`` ``image``, at most ``TEST_SHAPE``, sized to ``multiple``."""
    if image.ndim == ndim:
        image = image[None]
    slices = [slice(None)]
    for size, want, step in zip(image.shape[1:], TEST_SHAPE[ndim], multiple):
        want = min(size, want) // step * step
        if want < step:
            raise SpocoInputError(
                f"The sample image {image.shape[1:]} is smaller than one tile {tuple(multiple)};"
                " give a larger image or none.")
        start = (size - want) // 2
        slices.append(slice(start, start + want))
    return np.ascontiguousarray(image[tuple(slices)], dtype=np.float32)


def _jsonable(value):
    """Plain JSON/YAML values: tuples to lists, tensors and numpy values to lists/scalars."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
