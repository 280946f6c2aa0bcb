"""The npe2 manifest is valid, and every command it names imports and is callable."""

import importlib
from pathlib import Path

import pytest
from npe2 import PluginManifest

import napari_spoco

MANIFEST = Path(napari_spoco.__file__).parent / "napari.yaml"


@pytest.fixture(scope="module")
def manifest():
    return PluginManifest.from_file(MANIFEST)


def test_manifest_validates_and_is_the_installed_one(manifest):
    assert manifest.name == "napari-spoco"
    # The entry point of the installed package must point at the same manifest.
    installed = PluginManifest.from_distribution("napari-spoco")
    assert installed.model_dump() == manifest.model_dump()
    # The repository-root napari.yaml is a link to the packaged one, not a stale copy.
    root = Path(napari_spoco.__file__).parent.parent / "napari.yaml"
    if root.exists():
        assert root.resolve() == MANIFEST.resolve()


def test_every_command_imports_and_is_callable(manifest):
    commands = manifest.contributions.commands
    assert commands, "the manifest declares no command"
    for command in commands:
        module_name, _, attribute = command.python_name.partition(":")
        target = getattr(importlib.import_module(module_name), attribute)
        assert callable(target), command.python_name


def test_contributions_reference_declared_commands(manifest):
    declared = {c.id for c in manifest.contributions.commands}
    contributions = manifest.contributions
    used = [w.command for w in contributions.widgets or []]
    used += [r.command for r in contributions.readers or []]
    used += [s.command for s in contributions.sample_data or []]
    assert set(used) <= declared
    assert {"napari-spoco.make_spoco_widget", "napari-spoco.get_reader"} <= set(used)
    assert len(contributions.sample_data) >= 2


def test_reader_claims_only_checkpoints(tmp_path):
    from napari_spoco._reader import get_reader, read_checkpoint

    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    assert get_reader(str(checkpoint)) is read_checkpoint
    assert get_reader([str(checkpoint)]) is read_checkpoint
    assert get_reader(str(tmp_path / "image.tif")) is None
    assert get_reader(str(tmp_path / "missing.pt")) is None
    assert get_reader([str(checkpoint), str(checkpoint)]) is None
