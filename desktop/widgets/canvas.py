"""The image canvas: pyqtgraph view with zoom / pan / fit / 1:1, window/level, overlays and the brush.

Mouse: wheel zooms, left-drag pans (or paints with the brush / eraser), right-drag changes window/level
(horizontal = width, vertical = level), a click with the fill tool bucket-fills. The canvas only draws
and reports gestures; what a gesture means for the project is decided by the viewer page.
"""

from __future__ import annotations


import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets


pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)

Z_BASE, Z_HEAT, Z_CAM, Z_MAE, Z_LESION, Z_LESION_OUTLINE, Z_CURSOR = 0, 10, 15, 20, 30, 31, 100


class CanvasViewBox(pg.ViewBox):
    def __init__(self, canvas: "ImageCanvas"):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self.canvas = canvas

    def _image_pos(self, ev) -> QtCore.QPointF:
        return self.canvas.base.mapFromScene(ev.scenePos())

    def mouseDragEvent(self, ev, axis=None):
        c = self.canvas
        if ev.button() == QtCore.Qt.MouseButton.RightButton and c.has_image:
            ev.accept()
            c._wl_drag(ev)
            return
        if ev.button() == QtCore.Qt.MouseButton.LeftButton and c.tool in ("brush", "eraser") and c.has_image:
            ev.accept()
            p = self._image_pos(ev)
            if ev.isStart():
                c.strokeStarted.emit(p.x(), p.y())
            c.strokeMoved.emit(p.x(), p.y())
            if ev.isFinish():
                c.strokeFinished.emit()
            return
        super().mouseDragEvent(ev, axis)

    def mouseClickEvent(self, ev):
        c = self.canvas
        if ev.button() == QtCore.Qt.MouseButton.LeftButton and c.has_image:
            p = self._image_pos(ev)
            if c.tool in ("brush", "eraser"):
                ev.accept()
                c.strokeStarted.emit(p.x(), p.y())
                c.strokeMoved.emit(p.x(), p.y())
                c.strokeFinished.emit()
                return
            if c.tool == "fill":
                ev.accept()
                c.fillClicked.emit(int(np.floor(p.x())), int(np.floor(p.y())))
                return
        if ev.button() == QtCore.Qt.MouseButton.RightButton:
            ev.accept()   # no context menu: right button is window/level
            return
        super().mouseClickEvent(ev)


class ImageCanvas(pg.GraphicsView):
    """One image plus named overlay layers."""

    hovered = QtCore.Signal(object)            # (x, y) in image pixels or None when outside
    levelsChanged = QtCore.Signal(float, float)
    zoomChanged = QtCore.Signal(float)         # screen px per image px
    strokeStarted = QtCore.Signal(float, float)
    strokeMoved = QtCore.Signal(float, float)
    strokeFinished = QtCore.Signal()
    fillClicked = QtCore.Signal(int, int)

    def __init__(self, parent=None, *, interactive: bool = True):
        super().__init__(parent, background=pg.mkColor("#111418"))
        self.vb = CanvasViewBox(self)
        self.setCentralItem(self.vb)
        self.vb.setMouseEnabled(interactive, interactive)
        self.base = pg.ImageItem(axisOrder="row-major")
        self.base.setZValue(Z_BASE)
        self.vb.addItem(self.base)
        self.layers: dict[str, pg.ImageItem] = {}
        self.tool = "navigate"
        self.brush_radius = 8.0
        self.image: np.ndarray | None = None
        self.shown_size = (0, 0)            # (width, height) the image covers in the scene
        self.levels = (0.0, 1.0)
        self._wl_start = None
        self._cursor = QtWidgets.QGraphicsEllipseItem()
        self._cursor.setPen(pg.mkPen("#ffffff", width=1.2, cosmetic=True))
        self._cursor.setZValue(Z_CURSOR)
        self._cursor.setVisible(False)
        self.vb.addItem(self._cursor, ignoreBounds=True)
        self.scene().sigMouseMoved.connect(self._mouse_moved)
        self.vb.sigRangeChanged.connect(lambda *_: self.zoomChanged.emit(self.zoom()))
        self.setMinimumSize(200, 200)

    # -- image ------------------------------------------------------------------------------------------
    @property
    def has_image(self) -> bool:
        return self.image is not None

    def set_image(self, array: np.ndarray | None, levels: tuple[float, float] | None = None,
                  keep_view: bool = False, shown_size: tuple[int, int] | None = None) -> None:
        """``shown_size`` (width, height) stretches the array over that many scene units: a model's square
        input shown at the aspect of the image it came from, aligned with that image on a linked canvas."""
        self.image = array
        for layer in self.layers.values():
            layer.clear()
            layer.setVisible(False)
        if array is None:
            self.base.clear()
            return
        self.levels = tuple(levels) if levels is not None else (0.0, 1.0)
        self.base.setImage(array, levels=self.levels, autoLevels=False)
        h, w = array.shape[:2]
        self.shown_size = tuple(shown_size) if shown_size is not None else (w, h)
        self.base.setRect(QtCore.QRectF(0, 0, *self.shown_size))
        if not keep_view:
            self.fit()

    def set_levels(self, lo: float, hi: float) -> None:
        if hi - lo < 1e-4:
            hi = lo + 1e-4
        self.levels = (float(lo), float(hi))
        if self.image is not None:
            self.base.setLevels(self.levels)
        self.levelsChanged.emit(*self.levels)

    def _wl_drag(self, ev) -> None:
        if ev.isStart():
            self._wl_start = self.levels
        if self._wl_start is None:
            return
        lo0, hi0 = self._wl_start
        width0, center0 = hi0 - lo0, (hi0 + lo0) / 2
        d = ev.screenPos() - ev.buttonDownScreenPos()
        width = float(np.clip(width0 * (1.0 + d.x() / 200.0), 0.005, 2.0))
        center = float(np.clip(center0 - d.y() / 400.0, -0.5, 1.5))
        self.set_levels(center - width / 2, center + width / 2)
        if ev.isFinish():
            self._wl_start = None

    # -- view -------------------------------------------------------------------------------------------
    def fit(self) -> None:
        if self.image is None:
            return
        w, h = self.shown_size
        self.vb.setRange(xRange=(0, w), yRange=(0, h), padding=0.02)

    def one_to_one(self) -> None:
        if self.image is None:
            return
        h, w = self.image.shape[:2]
        (x0, x1), (y0, y1) = self.vb.viewRange()
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if not (0 <= cx <= w and 0 <= cy <= h):
            cx, cy = w / 2, h / 2
        vw, vh = self.vb.width(), self.vb.height()
        self.vb.setRange(xRange=(cx - vw / 2, cx + vw / 2), yRange=(cy - vh / 2, cy + vh / 2), padding=0)

    def zoom_by(self, factor: float) -> None:
        self.vb.scaleBy((1 / factor, 1 / factor))

    def zoom(self) -> float:
        px = self.vb.viewPixelSize()[0]
        return 1.0 / px if px else 1.0

    # -- overlays ---------------------------------------------------------------------------------------
    def layer(self, name: str, z: float) -> pg.ImageItem:
        item = self.layers.get(name)
        if item is None:
            item = pg.ImageItem(axisOrder="row-major")
            item.setZValue(z)
            item.setVisible(False)
            self.vb.addItem(item, ignoreBounds=True)
            self.layers[name] = item
        return item

    def set_rgba_layer(self, name: str, z: float, rgba: np.ndarray | None, opacity: float = 1.0,
                       visible: bool = True, rect: QtCore.QRectF | None = None) -> None:
        item = self.layer(name, z)
        if rgba is None:
            item.clear()
            item.setVisible(False)
            return
        item.setImage(rgba, levels=(0, 255), autoLevels=False)
        if rect is not None:
            item.setRect(rect)
        item.setOpacity(opacity)
        item.setVisible(visible)

    def set_scalar_layer(self, name: str, z: float, values: np.ndarray | None, lut: np.ndarray,
                         levels: tuple[float, float], opacity: float = 1.0, visible: bool = True) -> None:
        item = self.layer(name, z)
        if values is None:
            item.clear()
            item.setVisible(False)
            return
        item.setImage(values, levels=levels, autoLevels=False, lut=lut)
        item.setOpacity(opacity)
        item.setVisible(visible)

    def set_layer_visible(self, name: str, visible: bool) -> None:
        if name in self.layers:
            self.layers[name].setVisible(visible and self.layers[name].image is not None)

    def set_layer_opacity(self, name: str, opacity: float) -> None:
        if name in self.layers:
            self.layers[name].setOpacity(opacity)

    def layer_visible(self, name: str) -> bool:
        return name in self.layers and self.layers[name].isVisible()

    # -- tools ------------------------------------------------------------------------------------------
    def set_tool(self, tool: str) -> None:
        self.tool = tool
        painting = tool in ("brush", "eraser")
        self.vb.setMouseEnabled(not painting, not painting)
        if tool in ("brush", "eraser", "fill"):
            self.viewport().setCursor(QtCore.Qt.CursorShape.CrossCursor)
        else:
            self.viewport().setCursor(QtCore.Qt.CursorShape.OpenHandCursor)
        if not painting:
            self._cursor.setVisible(False)

    def set_brush_radius(self, radius: float) -> None:
        self.brush_radius = float(radius)

    def _mouse_moved(self, scene_pos) -> None:
        if self.image is None:
            return
        p = self.base.mapFromScene(scene_pos)
        h, w = self.image.shape[:2]
        x, y = p.x(), p.y()
        if self.tool in ("brush", "eraser"):
            r = self.brush_radius
            self._cursor.setRect(QtCore.QRectF(x - r, y - r, 2 * r, 2 * r))
            color = "#ffffff" if self.tool == "brush" else "#ffd166"
            self._cursor.setPen(pg.mkPen(color, width=1.2, cosmetic=True))
            self._cursor.setVisible(True)
        if 0 <= x < w and 0 <= y < h:
            self.hovered.emit((int(x), int(y)))
        else:
            self.hovered.emit(None)

    def leaveEvent(self, ev):
        self._cursor.setVisible(False)
        self.hovered.emit(None)
        super().leaveEvent(ev)

    def render_image(self) -> QtGui.QImage:
        """What the canvas shows now (for tests and screenshots)."""
        return self.grab().toImage()
