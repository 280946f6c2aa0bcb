"""Packaging: what is imported is declared, what is declared is used, the hub metadata is there,
and the headless command line works without napari or Qt installed."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from packaging.requirements import Requirement

import napari_spoco

PACKAGE = Path(napari_spoco.__file__).parent
ROOT = PACKAGE.parent
# Imported only inside try/except with a fallback: the conda-forge mutex watershed.
OPTIONAL_WITH_FALLBACK = {"affogato"}
# The front ends that need the `gui` extra; everything else must work with the base install.
GUI_PARTS = ("widgets", "_reader.py", "_sample_data.py")


def _requirements():
    """{extra or "": {normalised distribution names}} of the installed package."""
    declared: dict[str, set[str]] = {}
    for line in metadata.requires("napari-spoco") or []:
        req = Requirement(line)
        extra = ""
        if req.marker is not None:
            found = re.search(r'extra == "([^"]+)"', str(req.marker))
            extra = found.group(1) if found else ""
        declared.setdefault(extra, set()).add(_norm(req.name))
    return declared


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports():
    """{top-level module: set of files importing it} over the package's sources."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "napari_spoco":
                    found.setdefault(top, set()).add(str(path.relative_to(PACKAGE)))
    return found


def _distributions_of(module: str) -> set[str]:
    return {_norm(d) for d in metadata.packages_distributions().get(module, [])}


def test_every_import_is_declared_and_headless_parts_need_only_the_base_install():
    declared = _requirements()
    everything = set().union(*declared.values())
    base = declared[""]
    for module, files in _third_party_imports().items():
        if module in OPTIONAL_WITH_FALLBACK:
            continue
        dists = _distributions_of(module)
        assert dists & everything, f"{module} (imported by {sorted(files)}) is not declared"
        headless = [f for f in files if not f.startswith(GUI_PARTS)]
        if headless and not dists & base:
            extras = [e for e, names in declared.items() if dists & names]
            # an extra-only import in the core must be a lazy one inside a function
            for name in headless:
                tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
                top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
                names = {(a.name if isinstance(n, ast.Import) else n.module).split(".")[0]
                         for n in top_level for a in n.names}
                assert module not in names, (
                    f"{name} imports {module} (extra {extras}) at module level: import it "
                    "inside the function that needs it")


def test_every_base_dependency_is_imported():
    imported = set()
    for module in _third_party_imports():
        imported |= _distributions_of(module)
    unused = _requirements()[""] - imported
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_version_has_one_source_and_the_hub_metadata_is_complete():
    meta = metadata.metadata("napari-spoco")
    assert meta["Version"] == napari_spoco.__version__
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Source", "Issues", "Documentation"} <= set(urls)
    classifiers = meta.get_all("Classifier")
    assert "Framework :: napari" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.1") for c in classifiers)
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(PACKAGE / "napari.yaml")
    assert {"Segmentation", "Annotation"} <= {str(c) for c in manifest.categories}


def test_readme_renders_on_pypi_without_relative_links():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets, "the README links nothing"
    relative = [t for t in targets if not re.match(r"https?://|#", t)]
    assert not relative, f"relative links break on PyPI and the napari hub: {relative}"


BLOCK_GUI = (
    "import sys\n"
    "for name in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'superqt',\n"
    "             'psygnal', 'npe2', 'magicgui', 'vispy'):\n"
    "    sys.modules[name] = None  # any import of them now fails\n"
    "from napari_spoco.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.slow
def test_headless_command_line_trains_and_segments_without_napari_or_qt(tmp_path):
    from napari_spoco.core.synthetic import make_nuclei

    image, labels = make_nuclei((96, 96), seed=0)
    tifffile.imwrite(tmp_path / "img.tif", image.astype(np.float32))
    tifffile.imwrite(tmp_path / "gt.tif", labels.astype(np.uint16))

    def cli(*args):
        return subprocess.run([sys.executable, "-c", BLOCK_GUI, *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    train = cli("train", "--image", "img.tif", "--labels", "gt.tif", "--out", "m.pt",
                "--iterations", "3", "--features", "8", "16", "--patch-shape", "64", "64",
                "--batch-size", "1", "--mode", "dense")
    assert train.returncode == 0, train.stderr
    seg = cli("segment", "--checkpoint", "m.pt", "--image", "img.tif", "--out", "seg.tif")
    assert seg.returncode == 0, seg.stderr
    assert tifffile.imread(tmp_path / "seg.tif").shape == (96, 96)
    demo = cli("demo", "--help")
    assert demo.returncode == 0, demo.stderr
