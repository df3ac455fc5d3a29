"""A one-line label that elides its text to the width the layout gives it.

A plain QLabel asks for the width of its whole text as its *minimum*, so one long file name, run name or
error message widens the window past the screen and keeps it from being shrunk. This label asks for
little; the full text is in its tooltip (and :meth:`text`).
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

MIN_WIDTH = 48


class ElidedLabel(QtWidgets.QLabel):
    """Plain text on one line, elided with "…" where it does not fit; the full text is the tooltip."""

    def __init__(self, text: str = "", mode: QtCore.Qt.TextElideMode = QtCore.Qt.TextElideMode.ElideRight,
                 parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self._full = ""
        self._mode = mode
        self.setTextFormat(QtCore.Qt.TextFormat.PlainText)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Preferred, QtWidgets.QSizePolicy.Policy.Fixed)
        self.setText(text)

    def text(self) -> str:  # noqa: D102  (the full text, not the elided one shown)
        return self._full

    def setText(self, text: str) -> None:  # noqa: N802  (Qt name)
        self._full = text or ""
        self._elide()
        self.updateGeometry()

    def sizeHint(self) -> QtCore.QSize:  # noqa: N802
        m = self.contentsMargins()
        width = self.fontMetrics().horizontalAdvance(self._full) + m.left() + m.right() + 2
        return QtCore.QSize(width, super().sizeHint().height())

    def minimumSizeHint(self) -> QtCore.QSize:  # noqa: N802
        return QtCore.QSize(min(MIN_WIDTH, self.sizeHint().width()), super().minimumSizeHint().height())

    def resizeEvent(self, ev) -> None:  # noqa: N802
        super().resizeEvent(ev)
        self._elide()

    def _elide(self) -> None:
        shown = self.fontMetrics().elidedText(self._full, self._mode, max(0, self.contentsRect().width()))
        super().setText(shown)
        self.setToolTip(self._full if shown != self._full else "")
