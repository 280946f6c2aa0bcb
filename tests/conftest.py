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


# -- GUI fixtures (tests/test_widgets*.py, test_autosave_kill.py); helpers: test_widgets_support --


@pytest.fixture
def notes(monkeypatch):
    """Every notification the widgets show, as ``(level, message)`` tuples."""
    from napari_spoco.widgets import notifications

    shown = []
    for level in ("error", "warning", "info"):
        monkeypatch.setattr(notifications, f"show_{level}",
                            lambda message, level=level: shown.append((level, str(message))))
    return shown


@pytest.fixture
def spoco(request, tmp_path):
    """A viewer with the SPOCO dock; training settings made tiny; shut down after the test.

    Skips without napari or pytest-qt (their fixtures are requested only once they import).
    """
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    from test_widgets_support import tiny

    from napari_spoco.widgets import SpocoWidget

    make_napari_viewer = request.getfixturevalue("make_napari_viewer")
    qtbot = request.getfixturevalue("qtbot")
    viewer = make_napari_viewer()
    widget = SpocoWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SPOCO")
    tiny(widget, tmp_path / "model.pt")
    yield viewer, widget
    widget.shutdown()
    widget.segment.worker is None or qtbot.waitUntil(lambda: widget.segment.worker is None,
                                                     timeout=60_000)


@pytest.fixture(params=["kept", "recomputed"])
def block_mode(request, monkeypatch):
    """Run a loss-kernel test with derivatives kept from the forward pass, and recomputed in
    small blocks (tests/test_loss_kernels.py, tests/test_loss_shared_rows.py)."""
    if request.param == "recomputed":
        from napari_spoco.core.loss import kernels as loss_kernels

        monkeypatch.setattr(loss_kernels, "_KEEP_ELEMENTS", 0)
        monkeypatch.setattr(loss_kernels, "_BLOCK_ELEMENTS", 16)
    return request.param
