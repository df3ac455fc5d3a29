"""Desktop test fixtures: the window's questions are answered without a modal dialog (offscreen, a modal
dialog would wait for a click forever); its warnings are collected."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def questions(monkeypatch) -> list[str]:
    """Every ``QMessageBox.question`` the window asks, answered Yes; a test may set ``questions.answer``."""
    pytest.importorskip("PySide6")
    from PySide6 import QtWidgets

    asked = _Questions()

    def question(_parent, title, text, *_args, **_kwargs):
        asked.append(f"{title}: {text}")
        return asked.answer

    monkeypatch.setattr(QtWidgets.QMessageBox, "question", staticmethod(question))
    return asked


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    """The texts of the warning dialogs the window shows (collected instead of shown)."""
    pytest.importorskip("PySide6")
    from PySide6 import QtWidgets

    shown: list[str] = []
    monkeypatch.setattr(QtWidgets.QMessageBox, "warning",
                        staticmethod(lambda _parent, _title, text, *_a, **_k: shown.append(text)))
    return shown


class _Questions(list):
    answer = None

    def __init__(self):
        super().__init__()
        from PySide6 import QtWidgets

        self.answer = QtWidgets.QMessageBox.StandardButton.Yes
