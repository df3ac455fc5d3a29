"""Shared fixtures. Qt runs offscreen in tests; BUSI tests skip cleanly when the data is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO_ROOT = Path(__file__).resolve().parents[1]


def busi_path() -> Path | None:
    """../shared/data/busi beside the checkout, or $MEDSSL_BUSI_DIR."""
    candidates = [os.environ.get("MEDSSL_BUSI_DIR"), REPO_ROOT.parent / "shared" / "data" / "busi"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "benign").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def busi_dir() -> Path:
    path = busi_path()
    if path is None:
        pytest.skip("BUSI data not found (expected ../shared/data/busi or $MEDSSL_BUSI_DIR)")
    return path


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """One small phantom data set per test session (read-only for tests: copy before changing it)."""
    from core.data.demo import generate_demo

    return generate_demo(tmp_path_factory.mktemp("demo") / "demo", seed=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared CPU OpenMP threads spinning against other
    processes make these tests 10-30x slower (measured: 1.2 s vs 33 s for one 12-step MAE run). Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- desktop (pytest-qt) ------------------------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A private per-user data folder (settings, projects of read-only folders, thumbnails)."""
    d = tmp_path / "userdata"
    monkeypatch.setenv("MEDSSL_DATA_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """12 phantoms (4 per class, with masks): enough for the window, quick to scan. Read-only: copy it."""
    from core.data.demo import generate_demo

    return generate_demo(tmp_path_factory.mktemp("small") / "demo", n_cases=2, images_per_case=1, seed=1)


@pytest.fixture
def main_window(qtbot, data_dir):
    """The real main window, shown offscreen, no project open."""
    from desktop.app import create_app

    create_app()
    from desktop.main_window import MainWindow
    from desktop.settings import Settings

    win = MainWindow(Settings(data_dir / "desktop.ini"))
    win.resize(1280, 800)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    win.activateWindow()
    yield win
    win.close()


@pytest.fixture
def demo_window(qtbot, main_window, small_demo, tmp_path):
    """The main window with a private copy of the small demo set open and scanned."""
    import shutil

    folder = tmp_path / "demo"
    shutil.copytree(small_demo, folder)
    main_window.open_path(folder)
    qtbot.waitUntil(lambda: main_window.project.ready and main_window.project.scan_complete, timeout=60000)
    return main_window


@pytest.fixture(autouse=True)
def no_unarranged_dialogs(request, monkeypatch):
    """Offscreen, a modal dialog waits forever for a click nobody makes, and ``qtbot.waitUntil`` never
    looks at its timeout again while it waits: one such dialog can hold a whole CI run. In a Qt test every
    message box, file or text dialog the test did not arrange (``questions``, ``warnings`` or its own
    monkeypatch) is answered at once (Yes / OK / cancelled) and fails the test with its text."""
    if "qtbot" not in request.fixturenames:
        yield []
        return
    from PySide6 import QtWidgets

    shown: list[str] = []
    button = QtWidgets.QMessageBox.StandardButton

    def answering(kind: str, answer):
        def show(_parent, title="", text="", *_args, **_kwargs):
            shown.append(f"{kind}: {title}: {text}")
            return answer
        return staticmethod(show)

    for kind, answer in (("question", button.Yes), ("warning", button.Ok), ("critical", button.Ok),
                         ("information", button.Ok), ("about", None)):
        monkeypatch.setattr(QtWidgets.QMessageBox, kind, answering(f"QMessageBox.{kind}", answer))
    for kind, answer in (("getOpenFileName", ("", "")), ("getOpenFileNames", ([], "")),
                         ("getSaveFileName", ("", "")), ("getExistingDirectory", "")):
        monkeypatch.setattr(QtWidgets.QFileDialog, kind, answering(f"QFileDialog.{kind}", answer))
    monkeypatch.setattr(QtWidgets.QInputDialog, "getText", answering("QInputDialog.getText", ("", False)))
    yield shown
    if shown:
        pytest.fail("the window showed dialogs the test did not arrange:\n" + "\n".join(shown), pytrace=False)
