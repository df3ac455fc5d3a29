"""Overlay controls: a toggle, an opacity slider and a legend (colour bar or swatches) per overlay."""

from __future__ import annotations


import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from desktop import theme


class ColorBar(QtWidgets.QWidget):
    """Horizontal colour bar from a 256 x 3 LUT with min / max labels and a unit."""

    def __init__(self, lut: np.ndarray | None, vmin: float, vmax: float, unit: str = "", parent=None):
        super().__init__(parent)
        self.lut, self.vmin, self.vmax, self.unit = lut, vmin, vmax, unit
        self.setMinimumHeight(34)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)

    def set_range(self, vmin: float, vmax: float) -> None:
        self.vmin, self.vmax = vmin, vmax
        self.update()

    def set_lut(self, lut: np.ndarray, vmin: float, vmax: float) -> None:
        self.lut = lut
        self.set_range(vmin, vmax)

    def sizeHint(self) -> QtCore.QSize:
        return QtCore.QSize(200, 34)

    def paintEvent(self, _ev) -> None:
        p = QtGui.QPainter(self)
        p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
        bar = QtCore.QRectF(1, 2, self.width() - 2, 12)
        p.setPen(QtGui.QPen(QtGui.QColor(theme.BORDER), 1))
        if self.lut is not None:
            grad = QtGui.QLinearGradient(bar.topLeft(), bar.topRight())
            for i in range(0, 256, 16):
                r, g, b = (int(v) for v in self.lut[i][:3])
                grad.setColorAt(i / 255.0, QtGui.QColor(r, g, b))
            r, g, b = (int(v) for v in self.lut[255][:3])
            grad.setColorAt(1.0, QtGui.QColor(r, g, b))
            p.setBrush(grad)
        else:
            p.setBrush(QtGui.QColor(theme.PANEL))
        p.drawRoundedRect(bar, 3, 3)
        f = p.font()
        f.setPointSizeF(8.5)
        p.setFont(f)
        p.setPen(QtGui.QColor(theme.TEXT_DIM))
        text_rect = QtCore.QRectF(1, 16, self.width() - 2, 16)
        p.drawText(text_rect, QtCore.Qt.AlignmentFlag.AlignLeft, _fmt(self.vmin))
        p.drawText(text_rect, QtCore.Qt.AlignmentFlag.AlignRight, f"{_fmt(self.vmax)} {self.unit}".strip())
        if self.unit:
            mid = (self.vmin + self.vmax) / 2
            p.drawText(text_rect, QtCore.Qt.AlignmentFlag.AlignHCenter, _fmt(mid))
        p.end()


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-6 else f"{v:.1f}"


class SwatchLegend(QtWidgets.QWidget):
    """A row of coloured swatches with labels."""

    def __init__(self, entries: list[tuple[QtGui.QColor, str]], parent=None):
        super().__init__(parent)
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        self.labels = []
        for color, text in entries:
            sw = QtWidgets.QLabel()
            sw.setPixmap(theme.swatch_icon(color, 12, round_=False).pixmap(12, 12))
            lab = QtWidgets.QLabel(text)
            lab.setObjectName("dim")
            lay.addWidget(sw)
            lay.addWidget(lab)
            lay.addSpacing(6)
            self.labels.append(lab)
        lay.addStretch(1)

    def set_text(self, i: int, text: str) -> None:
        self.labels[i].setText(text)


class OverlayControl(QtWidgets.QFrame):
    """Toggle + opacity + legend (+ optional settings widget) for one overlay."""

    toggled = QtCore.Signal(bool)
    opacityChanged = QtCore.Signal(float)

    def __init__(self, name: str, title: str, icon: str, shortcut: str, legend: QtWidgets.QWidget | None = None,
                 opacity: float = 0.5, settings: QtWidgets.QWidget | None = None, opacity_label: str = "Opacity",
                 parent=None):
        super().__init__(parent)
        self.name = name
        self.setObjectName("overlay")
        self.setStyleSheet(f"QFrame#overlay {{ background: {theme.PANEL_ALT}; border-radius: 6px; }}")
        self.check = QtWidgets.QCheckBox(title)
        self.check.setIcon(theme.icon(icon))
        self.check.setIconSize(QtCore.QSize(18, 18))
        self.check.setToolTip(f"Show / hide ({shortcut})")
        key = QtWidgets.QLabel(shortcut)
        key.setToolTip(f"Key {shortcut} shows / hides this overlay")
        key.setStyleSheet(f"color: {theme.TEXT_DIM}; border: 1px solid {theme.BORDER}; border-radius: 3px;"
                          " padding: 0px 5px; font-size: 8pt;")
        self.status = QtWidgets.QLabel()
        self.status.setObjectName("dim")
        head = QtWidgets.QHBoxLayout()
        head.addWidget(self.check)
        head.addStretch(1)
        head.addWidget(key)
        self.status.setWordWrap(True)
        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.slider.setRange(0, 100)
        self.slider.setValue(int(round(opacity * 100)))
        self.slider.setToolTip("Opacity")
        self.opacity_label = QtWidgets.QLabel(f"{self.slider.value()} %")
        self.opacity_label.setObjectName("dim")
        self.opacity_label.setMinimumWidth(40)
        self.opacity_label.setAlignment(QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
        self.op_row = QtWidgets.QWidget()
        op = QtWidgets.QHBoxLayout(self.op_row)
        op.setContentsMargins(0, 0, 0, 0)
        op_label = QtWidgets.QLabel(opacity_label)
        op_label.setObjectName("dim")
        op.addWidget(op_label)
        op.addWidget(self.slider, 1)
        op.addWidget(self.opacity_label)
        self.body = QtWidgets.QWidget()
        body = QtWidgets.QVBoxLayout(self.body)
        body.setContentsMargins(24, 0, 0, 0)
        body.setSpacing(6)
        body.addWidget(self.status)
        body.addWidget(self.op_row)
        if legend is not None:
            body.addWidget(legend)
        if settings is not None:
            body.addWidget(settings)
        self.legend = legend
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(8, 6, 8, 8)
        lay.setSpacing(4)
        lay.addLayout(head)
        lay.addWidget(self.body)
        self.body.setVisible(False)
        self.check.toggled.connect(self._toggled)
        self.slider.valueChanged.connect(self._opacity)

    def _toggled(self, on: bool) -> None:
        self.body.setVisible(on)
        self.toggled.emit(on)

    def _opacity(self, v: int) -> None:
        self.opacity_label.setText(f"{v} %")
        self.opacityChanged.emit(v / 100.0)

    @property
    def enabled_overlay(self) -> bool:
        return self.check.isChecked()

    @property
    def opacity(self) -> float:
        return self.slider.value() / 100.0

    def set_checked(self, on: bool) -> None:
        self.check.setChecked(on)

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def set_available(self, ok: bool, why: str = "") -> None:
        self.check.setEnabled(ok)
        if not ok:
            self.check.setChecked(False)
        self.check.setToolTip(why if not ok else "Show / hide")
        self.setToolTip(why if not ok else "")
        if not ok and why:
            self.set_status(why)
        # unavailable: only the explanation and the settings (where it can be made available) show
        self.op_row.setVisible(ok)
        if self.legend is not None:
            self.legend.setVisible(ok)
