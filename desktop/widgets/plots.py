"""The app's plots (pyqtgraph): one look, grids that are cheap to paint, titles that double as legends."""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from desktop import theme


class OpaqueGridAxis(pg.AxisItem):
    """An axis whose grid lines are opaque, their colour pre-blended over the plot's background.

    Qt's raster engine draws a translucent line ~30 times slower than an opaque one (the ~100 grid lines of
    a 640x480 plot: 17 ms against 0.6 ms), which made each paint of a plot with a grid cost ~25 ms of UI
    thread: Confusion & ROC's first show stalled the window ~100 ms. Drawn below the plot's contents
    (below the view box) so that an opaque line does not cut through a curve or the confusion matrix.
    """

    def __init__(self, orientation: str, background: str, whole_numbers: bool = False):
        super().__init__(orientation)
        self._background = QtGui.QColor(background)
        self.whole_numbers = whole_numbers

    def tickValues(self, minVal, maxVal, size):  # noqa: N802, N803 (pyqtgraph names)
        """On an epoch or step axis, no tick between two whole numbers (a wide plot of 6 epochs had 1.5, 2.5)."""
        levels = super().tickValues(minVal, maxVal, size)
        if not self.whole_numbers:
            return levels
        whole = [(spacing, values) for spacing, values in levels if spacing >= 1 and float(spacing).is_integer()]
        return whole or [(1.0, [float(v) for v in range(math.ceil(minVal), math.floor(maxVal) + 1)])]

    def drawPicture(self, p, axisSpec, tickSpecs, textSpecs):  # noqa: N802 (pyqtgraph name)
        super().drawPicture(p, axisSpec, [(self._opaque(pen), p1, p2) for pen, p1, p2 in tickSpecs], textSpecs)

    def _opaque(self, pen: QtGui.QPen) -> QtGui.QPen:
        color = pen.color()
        a = color.alphaF()
        if a >= 1.0:
            return pen
        bg = self._background
        pen = QtGui.QPen(pen)
        pen.setColor(QtGui.QColor.fromRgbF(bg.redF() + (color.redF() - bg.redF()) * a,
                                           bg.greenF() + (color.greenF() - bg.greenF()) * a,
                                           bg.blueF() + (color.blueF() - bg.blueF()) * a))
        return pen


class LazyMenuViewBox(pg.ViewBox):
    """A view box whose context menu (pyqtgraph's ViewBoxMenu: ~17 ms of widgets per plot) is made on the
    first right-click instead of with the plot: the runs browser builds five plots while the user waits."""

    def __init__(self, **kwargs):
        super().__init__(enableMenu=False, **kwargs)
        self.state["enableMenu"] = True

    def getMenu(self, ev):  # noqa: N802 (pyqtgraph name)
        if self.menu is None:
            from pyqtgraph.graphicsItems.ViewBox.ViewBoxMenu import ViewBoxMenu

            self.menu = ViewBoxMenu(self)
            self.updateViewLists()
        return self.menu

    def getContextMenus(self, event):  # noqa: N802 (pyqtgraph name)
        return self.getMenu(event).actions() if self.menuEnabled() else []


def app_plot(title: str, left: str, bottom: str, *, whole_x: bool = False) -> pg.PlotWidget:
    """A plot with the app's look; ``whole_x``: the x axis counts (epochs, steps), ticks only at whole numbers.
    Its axes are given to pyqtgraph at construction (replacing the default ones afterwards built them twice)."""
    plot = pg.PlotWidget(viewBox=LazyMenuViewBox(), axisItems={
        "left": OpaqueGridAxis("left", theme.PANEL),
        "bottom": OpaqueGridAxis("bottom", theme.PANEL, whole_numbers=whole_x)})
    plot.setBackground(theme.PANEL)
    pi = plot.getPlotItem()
    for side in ("left", "bottom"):           # the grid under the curves (pyqtgraph puts axes at 0.5, over
        pi.getAxis(side).setZValue(pi.vb.zValue() - 1)      # the view box and what it shows)
    if title:
        pi.setTitle(f"<span style='color:{theme.TEXT}; font-size:10pt'>{title}</span>")
    for axis, text in (("left", left), ("bottom", bottom)):
        ax = pi.getAxis(axis)
        ax.setPen(pg.mkPen(theme.BORDER))
        ax.setTextPen(pg.mkPen(theme.TEXT_DIM))
        ax.setLabel(text, color=theme.TEXT_DIM)
        ax.enableAutoSIPrefix(False)          # "value (x0.001)" confuses more than it helps
    pi.showGrid(x=True, y=True, alpha=0.15)
    return plot


def legend_title(title: str, entries: list[tuple[str, str]]) -> str:
    """A plot title that is also its legend (coloured names after the title): an in-plot legend covers the
    curves of the short plots in the jobs panel and the runs browser."""
    names = " ".join(f"<span style='color:{color}; white-space:nowrap'>&#9679;&nbsp;{name}</span>"
                     for name, color in entries)
    return (f"<span style='color:{theme.TEXT}; font-size:10pt'>{title}</span>"
            + (f"&nbsp;&nbsp; <span style='font-size:9pt'>{names}</span>" if names else ""))


class LegendPlot(QtWidgets.QWidget):
    """A plot under a title-legend label that wraps: a title inside pyqtgraph's plot is as wide as its text
    and, with four curve names, made the plot wider than its pane, which then clipped it."""

    def __init__(self, left: str, bottom: str, parent=None, *, whole_x: bool = False):
        super().__init__(parent)
        self.title = QtWidgets.QLabel()
        self.title.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.title.setWordWrap(True)
        self.title.setAlignment(QtCore.Qt.AlignmentFlag.AlignHCenter)
        self.title.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.title.setStyleSheet(f"background: {theme.PANEL}; padding-top: 4px;")
        self.plot = app_plot("", left, bottom, whole_x=whole_x)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.title)
        lay.addWidget(self.plot, 1)

    def set_title(self, title: str, entries: list[tuple[str, str]]) -> None:
        self.title.setText(legend_title(title, entries))
