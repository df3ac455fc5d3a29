"""An image label whose picture follows the room the layout gives it.

A QLabel with a pixmap asks for the pixmap's size as its minimum, so a fixed 480 px image made the review
dialog ~690 px tall and on a 1280×720 screen the window manager squeezed it until the texts lay over the
image. This label asks for little and scales its image (never past ``max_px``) to its own size.
"""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets


class FittedImage(QtWidgets.QLabel):
    """Shows a QImage as large as the label, up to ``max_px`` a side, keeping its aspect ratio."""

    def __init__(self, max_px: int, min_px: int, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.max_px = max_px
        self._image: QtGui.QImage | None = None
        self.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(min_px, min_px)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Ignored)

    def set_image(self, image: QtGui.QImage) -> None:
        self._image = image
        self._fit()

    def setText(self, text: str) -> None:  # noqa: N802  (Qt name: a message replaces the image)
        self._image = None
        super().setText(text)

    def clear(self) -> None:
        self._image = None
        super().clear()

    def resizeEvent(self, ev) -> None:  # noqa: N802
        super().resizeEvent(ev)
        self._fit()

    def _fit(self) -> None:
        if self._image is None:
            return
        side = max(1, min(self.max_px, self.width(), self.height()))
        self.setPixmap(QtGui.QPixmap.fromImage(self._image.scaled(
            side, side, QtCore.Qt.AspectRatioMode.KeepAspectRatio, QtCore.Qt.TransformationMode.SmoothTransformation)))
