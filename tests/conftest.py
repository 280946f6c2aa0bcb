"""Settings shared by the whole test suite."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run every test with one intra-op torch thread.

    The networks in tests are tiny: extra threads gain nothing, and on a busy 2-core machine
    OpenMP's spin-waiting threads made tests up to 5x slower (174 s vs 33 s measured for the
    real-data training test).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def private_autosave_folder(tmp_path, monkeypatch):
    """Keep the dock's automatic annotation stores out of the real user data folder."""
    monkeypatch.setenv("NAPARI_SPOCO_DATA_DIR", str(tmp_path / "napari-spoco-data"))


@pytest.fixture(autouse=True)
def private_dock_settings(tmp_path, monkeypatch):
    """Keep the settings the dock remembers between sessions out of the real user config."""
    monkeypatch.setenv("NAPARI_SPOCO_CONFIG_DIR", str(tmp_path / "napari-spoco-config"))
