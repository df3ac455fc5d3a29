"""Viewer page: one image on the canvas, its overlays, label buttons, history and the mask brush.

Decoding and overlay maps (entropy, MAE mask) run in background threads through
:class:`desktop.bridge.jobs_bridge.AsyncCaller` and come back to the UI thread; edits are undo-stack commands
(:mod:`desktop.bridge.annotation`) that write to the store at once.
"""

from __future__ import annotations


import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from desktop.bridge import mask_ops
from desktop import theme
from desktop.bridge.annotation import MaskFiles, push_mask_edit, set_label
from desktop.widgets.elided_label import ElidedLabel
from desktop.widgets.canvas import Z_CAM, Z_HEAT, Z_LESION, Z_LESION_OUTLINE, Z_MAE, ImageCanvas
from desktop.bridge.jobs_bridge import AsyncCaller, import_engine
from desktop.widgets.overlays import ColorBar, OverlayControl, SwatchLegend
from desktop.bridge.project import ProjectModel
from desktop.bridge.rows import Item
from desktop.bridge.rows import run_choices

WL_PRESETS = [("full", "Full range"), ("auto", "Auto (1–99 %)"), ("narrow", "High contrast (5–95 %)"),
              ("custom", "Custom")]


@dataclass
class Loaded:
    item: Item
    array: np.ndarray            # display array (float [0,1], grey [H,W] or colour [H,W,3])
    grey: np.ndarray             # float [H,W]
    bit_depth: int
    is_dicom: bool
    mask: np.ndarray | None
    mask_error: str | None


def _load(item: Item, files: MaskFiles) -> Loaded:
    from core.data.imageio import read_image

    data = read_image(item.path)
    arr = data.array
    if arr.ndim == 3:
        grey = np.clip(arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32), 0, 1).astype(np.float32)
    else:
        grey = arr
    mask, mask_error = None, None
    if item.image_id is not None:
        try:
            mask = files.read(item.image_id, grey.shape)
        except Exception as exc:  # a broken / mismatched mask file must not hide the image
            mask_error = getattr(exc, "reason", None) or str(exc)
    return Loaded(item, arr, grey, int(data.bit_depth), "modality" in data.meta and "n_frames" in data.meta,
                  mask, mask_error)


#: the lesion fill's default opacity: the texture under it stays readable (the outline is always opaque)
LESION_FILL_OPACITY = 0.2


def lesion_layers(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lesion as two RGBA uint8 layers: the fill (its opacity is the overlay's slider) and the outline
    (opaque, so the border shows at any fill opacity)."""
    h, w = mask.shape
    fill = np.zeros((h, w, 4), dtype=np.uint8)
    fill[mask] = (*theme.LESION_COLOR, 255)
    outline = np.zeros((h, w, 4), dtype=np.uint8)
    outline[mask_ops.outline(mask, width=max(1, round(max(h, w) / 300)))] = (255, 120, 120, 255)
    return fill, outline


def hidden_cells_rgba(hidden: np.ndarray, cell: int, shape: tuple[int, int]) -> np.ndarray:
    """MAE mask as RGBA: hidden cells filled, a faint grid over all cells of the encoder's grid."""
    h, w = shape
    gh, gw = hidden.shape
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    full = np.repeat(np.repeat(hidden, cell, axis=0), cell, axis=1)
    rgba[: gh * cell, : gw * cell][full] = (*theme.HIDDEN_COLOR, 235)
    line = (255, 255, 255, 70)
    for k in range(0, gh + 1):
        y = min(k * cell, h - 1)
        rgba[y, : gw * cell] = line
    for k in range(0, gw + 1):
        x = min(k * cell, w - 1)
        rgba[: gh * cell, x] = line
    return rgba


class LabelButtons(QtWidgets.QWidget):
    """One button per class (1–9), the current label checked."""

    chosen = QtCore.Signal(object)   # class name or None (clear)

    def __init__(self, project: ProjectModel, parent=None):
        super().__init__(parent)
        self.project = project
        self.grid = QtWidgets.QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(6)
        self.buttons: dict[str, QtWidgets.QPushButton] = {}
        project.classesChanged.connect(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        while self.grid.count():
            w = self.grid.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self.buttons = {}
        for n, name in enumerate(self.project.classes):
            key = str(n + 1) if n < 9 else ""
            b = QtWidgets.QPushButton(f"{key}   {name}" if key else name)
            b.setCheckable(True)
            b.setIcon(theme.swatch_icon(theme.class_color(n)))
            b.setToolTip(f"Label as {name}" + (f" (key {key})" if key else ""))
            b.setStyleSheet("QPushButton { text-align: left; padding: 6px 10px; }")
            b.clicked.connect(lambda _c=False, name=name: self.chosen.emit(name))
            self.grid.addWidget(b, n // 2, n % 2)
            self.buttons[name] = b
        clear = QtWidgets.QPushButton("0   none")
        clear.setToolTip("Remove the label (key 0)")
        clear.setStyleSheet("QPushButton { text-align: left; padding: 6px 10px; }")
        clear.clicked.connect(lambda: self.chosen.emit(None))
        n = len(self.project.classes)
        self.grid.addWidget(clear, n // 2, n % 2)

    def set_current(self, label: str | None) -> None:
        for name, b in self.buttons.items():
            b.setChecked(name == label)


class ViewerPage(QtWidgets.QWidget):
    """Canvas + tool bar + right panel (image, label, history, tools, overlays, window/level)."""

    itemShown = QtCore.Signal(object)          # Item
    statusText = QtCore.Signal(str)            # pixel readout
    message = QtCore.Signal(str, int)
    navigate = QtCore.Signal(int)              # +1 / -1 (the main window knows the library order)
    nextUnlabeled = QtCore.Signal()

    def __init__(self, project: ProjectModel, caller: AsyncCaller, parent=None):
        super().__init__(parent)
        self.project = project
        self.caller = caller
        self.files = MaskFiles(project)
        self.item: Item | None = None
        self.loaded: Loaded | None = None
        self.mask: np.ndarray | None = None
        self._stroke_before: np.ndarray | None = None
        self._last_pt = None
        self._stroke_value = True
        self._entropy_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._mae_seed = 0
        self._wl_preset = "full"
        self.load_ms = 0.0

        self.canvas = ImageCanvas()
        self.canvas.hovered.connect(self._hover)
        self.canvas.levelsChanged.connect(self._levels_changed)
        self.canvas.zoomChanged.connect(self._zoom_changed)
        self.canvas.strokeStarted.connect(self._stroke_start)
        self.canvas.strokeMoved.connect(self._stroke_move)
        self.canvas.strokeFinished.connect(self._stroke_end)
        self.canvas.fillClicked.connect(self._fill)

        self._build_toolbar()
        self._build_panel()

        self.placeholder = QtWidgets.QLabel("Open an image from the library (double-click or Enter).")
        self.placeholder.setObjectName("subtitle")
        self.placeholder.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.canvas_stack = QtWidgets.QStackedWidget()
        self.canvas_stack.addWidget(self.placeholder)
        self.canvas_stack.addWidget(self.canvas)

        left = QtWidgets.QVBoxLayout()
        left.setContentsMargins(0, 0, 0, 0)
        left.setSpacing(0)
        left.addWidget(self.toolbar)
        left.addWidget(self.canvas_stack, 1)
        lw = QtWidgets.QWidget()
        lw.setLayout(left)
        split = QtWidgets.QSplitter()
        split.addWidget(lw)
        split.addWidget(self.panel_scroll)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 0)
        split.setCollapsible(0, False)
        split.setSizes([1000, 360])
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)

        project.itemChanged.connect(self._item_changed)
        project.classesChanged.connect(self._refresh_label)
        project.itemsReset.connect(self._items_reset)
        self.set_tool("navigate")

    # -- construction -----------------------------------------------------------------------------------
    def _tool_button(self, icon: str, tip: str, checkable=False) -> QtWidgets.QToolButton:
        b = QtWidgets.QToolButton()
        b.setIcon(theme.icon(icon))
        b.setIconSize(QtCore.QSize(20, 20))
        b.setToolTip(tip)
        b.setCheckable(checkable)
        b.setAutoRaise(True)
        return b

    def _build_toolbar(self) -> None:
        bar = QtWidgets.QFrame()
        bar.setObjectName("sidepanel")
        bar.setStyleSheet(f"QFrame#sidepanel {{ background: {theme.PANEL}; border-bottom: 1px solid {theme.BORDER}; }}")
        h = QtWidgets.QHBoxLayout(bar)
        h.setContentsMargins(8, 4, 8, 4)
        h.setSpacing(2)
        self.prev_btn = self._tool_button("previous", "Previous image (← or K)")
        self.next_btn = self._tool_button("next", "Next image (→ or J)")
        self.next_unl_btn = self._tool_button("next-unlabeled", "Next unlabeled image (N)")
        self.prev_btn.clicked.connect(lambda: self.navigate.emit(-1))
        self.next_btn.clicked.connect(lambda: self.navigate.emit(+1))
        self.next_unl_btn.clicked.connect(self.nextUnlabeled)
        self.title = ElidedLabel(mode=QtCore.Qt.TextElideMode.ElideMiddle)
        self.title.setObjectName("heading")
        self.title.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.position = QtWidgets.QLabel()
        self.position.setObjectName("dim")
        for w in (self.prev_btn, self.next_btn, self.next_unl_btn):
            h.addWidget(w)
        h.addSpacing(8)
        h.addWidget(self.title, 1)
        h.addWidget(self.position)
        h.addSpacing(12)

        self.tool_group = QtWidgets.QButtonGroup(self)
        self.tool_buttons = {}
        for tool, icon, tip in (("navigate", "navigate", "Navigate: drag to pan, wheel to zoom (V)"),
                                ("brush", "brush", "Brush: paint the lesion mask (B)"),
                                ("eraser", "eraser", "Eraser: erase the lesion mask (E)"),
                                ("fill", "fill", "Fill: click inside an outline to fill it (G)")):
            b = self._tool_button(icon, tip, checkable=True)
            b.clicked.connect(lambda _c=False, t=tool: self.set_tool(t))
            self.tool_group.addButton(b)
            self.tool_buttons[tool] = b
            h.addWidget(b)
        self.clear_btn = self._tool_button("clear", "Clear the lesion mask (Shift+Del)")
        self.clear_btn.clicked.connect(self.clear_mask)
        h.addWidget(self.clear_btn)
        h.addSpacing(10)
        self.fit_btn = self._tool_button("fit", "Fit to window (F)")
        self.fit_btn.clicked.connect(self.canvas.fit)
        self.one_btn = self._tool_button("one-to-one", "Actual pixels, 1:1 (Ctrl+1)")
        self.one_btn.clicked.connect(self.canvas.one_to_one)
        self.zoom_label = QtWidgets.QLabel("100 %")
        self.zoom_label.setObjectName("dim")
        self.zoom_label.setMinimumWidth(52)
        self.zoom_label.setAlignment(QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
        h.addWidget(self.fit_btn)
        h.addWidget(self.one_btn)
        h.addWidget(self.zoom_label)
        self.toolbar = bar

    def _section(self, title: str) -> tuple[QtWidgets.QWidget, QtWidgets.QVBoxLayout]:
        box = QtWidgets.QWidget()
        v = QtWidgets.QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        v.setSpacing(6)
        t = QtWidgets.QLabel(title)
        t.setObjectName("heading")
        v.addWidget(t)
        return box, v

    def _build_panel(self) -> None:
        panel = QtWidgets.QFrame()
        panel.setObjectName("sidepanel")
        v = QtWidgets.QVBoxLayout(panel)
        v.setContentsMargins(14, 12, 14, 14)
        v.setSpacing(12)

        # image info
        self.info = QtWidgets.QLabel()
        self.info.setObjectName("dim")
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        v.addWidget(self.info)

        # label
        box, lv = self._section("Label")
        self.label_buttons = LabelButtons(self.project)
        self.label_buttons.chosen.connect(self.assign)
        lv.addWidget(self.label_buttons)
        self.auto_advance = QtWidgets.QCheckBox("Go to the next image after labelling")
        lv.addWidget(self.auto_advance)
        v.addWidget(box)

        # history
        box, hv = self._section("Label history")
        self.history = QtWidgets.QListWidget()
        self.history.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.history.setMinimumHeight(60)
        self.history.setMaximumHeight(104)
        self.history.setWordWrap(True)
        self.history.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.history.setVerticalScrollMode(QtWidgets.QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.history.setStyleSheet(f"QListWidget {{ background: {theme.BG}; border: 1px solid {theme.BORDER};"
                                   f" border-radius: 4px; font-size: 9pt; }}")
        hv.addWidget(self.history)
        v.addWidget(box)

        # brush
        box, bv = self._section("Lesion mask brush")
        row = QtWidgets.QHBoxLayout()
        sl = QtWidgets.QLabel("Size")
        sl.setObjectName("dim")
        self.brush_slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.brush_slider.setRange(1, 100)
        self.brush_slider.setValue(8)
        self.brush_label = QtWidgets.QLabel("8 px")
        self.brush_label.setObjectName("dim")
        self.brush_label.setMinimumWidth(44)
        self.brush_label.setAlignment(QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
        self.brush_slider.valueChanged.connect(self._brush_size)
        row.addWidget(sl)
        row.addWidget(self.brush_slider, 1)
        row.addWidget(self.brush_label)
        bv.addLayout(row)
        hint = QtWidgets.QLabel("B brush · E eraser · G fill · [ ] size · Shift+Del clear")
        hint.setObjectName("dim")
        hint.setWordWrap(True)
        bv.addWidget(hint)
        v.addWidget(box)

        # overlays (core.analysis.entropy imports torch: it is loaded in a worker thread, never here)
        box, ov = self._section("Overlays")
        self.heat_bar = ColorBar(None, 0, 6, "bits")
        self.ov_heat = OverlayControl("entropy", "Entropy heatmap", "heatmap", "H", self.heat_bar, opacity=0.55)
        self.mae_legend = SwatchLegend([(QtGui.QColor(*theme.HIDDEN_COLOR), "hidden cell"),
                                        (QtGui.QColor(255, 255, 255, 90), "visible cell")])
        self.ov_mae = OverlayControl("mae", "MAE mask", "mae-mask", "M", self.mae_legend,
                                     opacity=0.6, settings=self._mae_settings())
        self.lesion_legend = SwatchLegend([(QtGui.QColor(*theme.LESION_COLOR), "lesion (fill + outline)")])
        self.ov_lesion = OverlayControl("lesion", "Lesion mask", "lesion", "L", self.lesion_legend,
                                        opacity=LESION_FILL_OPACITY, opacity_label="Fill")
        self.ov_lesion.slider.setToolTip("Opacity of the lesion's fill; its outline stays opaque")
        self.cam_bar = ColorBar(None, 0, 1, "× peak")
        self.ov_cam = OverlayControl("gradcam", "Grad-CAM", "gradcam", "C", self.cam_bar, opacity=0.5,
                                     settings=self._cam_settings())
        for ctl in (self.ov_heat, self.ov_mae, self.ov_lesion, self.ov_cam):
            ov.addWidget(ctl)
            ctl.toggled.connect(lambda on, c=ctl: self._overlay_toggled(c.name, on))
            ctl.opacityChanged.connect(lambda a, c=ctl: self.canvas.set_layer_opacity(c.name, a))
        self._cam_cache: OrderedDict[tuple, dict] = OrderedDict()
        self._ensembles: dict[str, object] = {}
        self.refresh_ensembles()
        self.project.storeReady.connect(self.refresh_ensembles)
        self.project.itemsReset.connect(self.refresh_ensembles)
        self.ov_lesion.set_checked(True)
        v.addWidget(box)

        # window / level
        box, wv = self._section("Window / level")
        self.wl_combo = QtWidgets.QComboBox()
        for key, text in WL_PRESETS:
            self.wl_combo.addItem(text, key)
        self.wl_combo.activated.connect(lambda _i: self.apply_preset(self.wl_combo.currentData()))
        self.wl_values = QtWidgets.QLabel()
        self.wl_values.setObjectName("dim")
        wl_hint = QtWidgets.QLabel("Right-drag on the image: ↔ width, ↕ level")
        wl_hint.setObjectName("dim")
        wl_hint.setWordWrap(True)
        wv.addWidget(self.wl_combo)
        wv.addWidget(self.wl_values)
        wv.addWidget(wl_hint)
        v.addWidget(box)
        v.addStretch(1)

        scroll = QtWidgets.QScrollArea()
        scroll.setWidget(panel)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        panel.setMinimumWidth(320)
        scroll.setMinimumWidth(346)
        scroll.setMaximumWidth(440)
        scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        scroll.setStyleSheet(f"QScrollArea {{ background: {theme.PANEL}; border-left: 1px solid {theme.BORDER}; }}")
        self.panel_scroll = scroll

    def _mae_settings(self) -> QtWidgets.QWidget:
        w = QtWidgets.QWidget()
        form = QtWidgets.QGridLayout(w)
        form.setContentsMargins(0, 2, 0, 0)
        form.setHorizontalSpacing(8)
        form.setVerticalSpacing(6)
        self.mae_ratio = QtWidgets.QDoubleSpinBox()
        self.mae_ratio.setRange(0.05, 0.95)
        self.mae_ratio.setSingleStep(0.05)
        self.mae_ratio.setValue(0.6)
        self.mae_ratio.setToolTip("Fraction of cells hidden from the encoder")
        self.mae_mode = QtWidgets.QComboBox()
        for key, text in (("high", "high entropy first"), ("low", "low entropy first"), ("random", "uniform")):
            self.mae_mode.addItem(text, key)
        self.mae_mode.setToolTip("Which cells are more likely to be hidden")
        self.mae_cell = QtWidgets.QComboBox()
        for c in (16, 32, 64):
            self.mae_cell.addItem(f"{c} px", c)
        self.mae_cell.setCurrentIndex(1)
        self.mae_cell.setToolTip("Cell size = the encoder's total stride (32 px for ConvNeXt)")
        self.resample_btn = QtWidgets.QPushButton("Resample")
        self.resample_btn.setIcon(theme.icon("resample"))
        self.resample_btn.setToolTip("Draw a new mask with the same settings (R)")
        self.resample_btn.clicked.connect(self.resample_mae)
        for n, (lab, field) in enumerate((("Ratio", self.mae_ratio), ("Mode", self.mae_mode),
                                          ("Cell", self.mae_cell))):
            l = QtWidgets.QLabel(lab)
            l.setObjectName("dim")
            form.addWidget(l, n, 0)
            form.addWidget(field, n, 1)
        form.addWidget(self.resample_btn, 3, 0, 1, 2)
        form.setColumnStretch(1, 1)
        for sig in (self.mae_ratio.valueChanged, self.mae_mode.currentIndexChanged, self.mae_cell.currentIndexChanged):
            sig.connect(lambda *_: self._update_mae())
        return w

    def _cam_settings(self) -> QtWidgets.QWidget:
        w = QtWidgets.QWidget()
        grid = QtWidgets.QGridLayout(w)
        grid.setContentsMargins(0, 2, 0, 0)
        grid.setHorizontalSpacing(8)
        l = QtWidgets.QLabel("Member")
        l.setObjectName("dim")
        self.cam_member_label = l
        self.cam_member = QtWidgets.QComboBox()
        self.cam_member.addItem("ensemble (weighted)", "")
        self.cam_member.currentIndexChanged.connect(lambda _i: self._update_cam())
        self.cam_ensemble = QtWidgets.QComboBox()     # the project's ensemble runs, by name
        self.cam_ensemble.setToolTip("The ensemble whose members explain the image")
        self.cam_ensemble.activated.connect(
            lambda i: self.set_ensemble(self.cam_ensemble.itemData(i)) if self.cam_ensemble.itemData(i) else None)
        self.cam_ensemble_label = QtWidgets.QLabel("Ensemble")
        self.cam_ensemble_label.setObjectName("dim")
        self.cam_choose = QtWidgets.QPushButton("Choose ensemble file…")
        self.cam_choose.setToolTip("An ensemble file (medssl-ensemble JSON) from elsewhere")
        self.cam_choose.clicked.connect(self.choose_ensemble)
        grid.addWidget(self.cam_ensemble_label, 0, 0)
        grid.addWidget(self.cam_ensemble, 0, 1)
        grid.addWidget(l, 1, 0)
        grid.addWidget(self.cam_member, 1, 1)
        grid.addWidget(self.cam_choose, 2, 0, 1, 2)
        grid.setColumnStretch(1, 1)
        return w

    # -- Grad-CAM ---------------------------------------------------------------------------------------
    CAM_META = "desktop.ensemble"

    def ensemble_path(self) -> str | None:
        """The chosen ensemble file, else the one the newest predicting run names in its config, else the
        newest ensemble run's."""
        store = self.project.store
        if store is None:
            return None
        chosen = store.get_meta(self.CAM_META)
        if chosen and Path(chosen).exists():
            return chosen
        for run in reversed(store.list_runs()):
            if run.ensemble_file and Path(run.ensemble_file).is_file() and store.has_predictions(run.id):
                return run.ensemble_file
        made = run_choices(store, "ensemble")
        return made[0][1] if made else None

    def set_ensemble(self, path: str | None) -> None:
        if self.project.store is not None:
            self.project.store.set_meta(self.CAM_META, path)
        self._cam_cache.clear()
        self.refresh_ensembles()
        if path:
            self.ov_cam.set_checked(True)

    def choose_ensemble(self) -> None:
        start = str(self.project.paths.folder) if self.project.paths else str(Path.home())
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Choose an ensemble file", start,
                                                        "Ensemble (*.json);;All files (*)")
        if path:
            self.set_ensemble(path)

    def refresh_ensembles(self) -> None:
        """Offer the project's ensembles by name; Grad-CAM is available when one is chosen or made."""
        path = self.ensemble_path()
        self.ov_cam.set_available(path is not None,
                                  "Needs an ensemble of fine-tuned models: Train → Build ensemble… makes one, "
                                  "then it is listed here by name." if path is None else "")
        made = run_choices(self.project.store, "ensemble") if self.project.store is not None else []
        if path is not None and path not in (p for _l, p in made):
            made.append((Path(path).name, path))
        self.cam_ensemble.clear()
        for label, p in made:
            self.cam_ensemble.addItem(label, p)
            self.cam_ensemble.setItemData(self.cam_ensemble.count() - 1, p, QtCore.Qt.ItemDataRole.ToolTipRole)
        self.cam_ensemble.setCurrentIndex(self.cam_ensemble.findData(path) if path is not None else -1)
        self.cam_ensemble.setVisible(bool(made))
        self.cam_ensemble_label.setVisible(bool(made))
        self.cam_member.setVisible(path is not None)
        self.cam_member_label.setVisible(path is not None)
        self.ov_cam.body.setVisible(self.ov_cam.enabled_overlay or path is None)
        self.cam_choose.setText("Choose another ensemble file…" if path else "Choose ensemble file…")

    def _update_cam(self) -> None:
        if self.loaded is None or not self.ov_cam.enabled_overlay:
            return
        ens_path, item = self.ensemble_path(), self.loaded.item
        if ens_path is None:
            return
        key = (ens_path, item.path)
        cached = self._cam_cache.get(key)
        if cached is not None:
            self._show_cam(key, cached)
            return
        ensembles = self._ensembles
        self.ov_cam.set_status("computing…")

        def compute():
            engine = import_engine("core.inference.ensemble")
            ens = ensembles.get(ens_path)
            if ens is None:
                ensembles.clear()
                ens = ensembles[ens_path] = engine.load_ensemble(ens_path)
            return key, ens.cam(ens.load_image(item.path))   # a core.inference.ensemble.CamResult

        self.caller.submit(compute, lambda res: self._show_cam(*res),
                           lambda msg: self.ov_cam.set_status(f"Failed: {msg}"), key="viewer-cam")

    def _show_cam(self, key: tuple, cam) -> None:
        self._cam_cache[key] = cam
        while len(self._cam_cache) > 16:
            self._cam_cache.popitem(last=False)
        if self.loaded is None or self.loaded.item.path != key[1]:
            return
        names = list(cam.members)
        have = [self.cam_member.itemData(i) for i in range(1, self.cam_member.count())]
        if have != names:
            self.cam_member.blockSignals(True)
            while self.cam_member.count() > 1:
                self.cam_member.removeItem(1)
            for n in names:
                self.cam_member.addItem(n, n)
            self.cam_member.blockSignals(False)
        member = self.cam_member.currentData() or ""
        values = cam.members[member] if member else cam.ensemble
        from core.analysis.entropy import colormap_lut

        rgb = colormap_lut("viridis")
        if self.cam_bar.lut is None:
            self.cam_bar.set_lut(rgb, 0.0, 1.0)
        lut = np.concatenate([rgb, np.full((256, 1), 255, np.uint8)], axis=1)
        h, w = self.loaded.grey.shape
        self.canvas.set_scalar_layer("gradcam", Z_CAM, np.asarray(values, dtype=np.float32), lut, (0.0, 1.0),
                                     self.ov_cam.opacity, self.ov_cam.enabled_overlay)
        self.canvas.layers["gradcam"].setRect(QtCore.QRectF(0, 0, w, h))   # the model saw a squashed square
        who = member or "ensemble"
        self.ov_cam.set_status(f"Evidence for “{cam.class_name}” ({who})")

    # -- showing an image -------------------------------------------------------------------------------
    def show_item(self, item: Item | None, position: tuple[int, int] | None = None, counting: str = "") -> None:
        """Show ``item``; ``position`` (index, count) is its place in what the user steps through: the
        library's rows, or with ``counting`` (e.g. "suggestion") another list."""
        self.item = item
        self.position.setText(f"{counting} {position[0] + 1:,} / {position[1]:,}".strip() if position else "")
        self.statusText.emit("")      # the pixel readout belonged to the previous image
        if item is None:
            self.loaded = None
            self.canvas.set_image(None)
            self.canvas_stack.setCurrentWidget(self.placeholder)
            self.title.setText("")
            self.info.setText("")
            return
        self.title.setText(item.name)
        if not getattr(self, "_warm", False):
            self._warm = True     # load torch + core.analysis.entropy in the background before an overlay needs it
            self.caller.submit(lambda: (import_engine("core.analysis.entropy"), import_engine("core.analysis.masking")),
                               lambda _r: None)
        self._refresh_label()
        self._refresh_info()
        t0 = time.perf_counter()
        self.caller.submit(lambda it=item: _load(it, self.files), lambda res: self._loaded(res, t0),
                           lambda msg, it=item: self._load_failed(it, msg), key="viewer-load")

    def _load_failed(self, item: Item, msg: str) -> None:
        if item is not self.item:
            return
        self.loaded = None
        self.canvas.set_image(None)
        self.placeholder.setText(f"Cannot show {item.name}:\n{msg}")
        self.canvas_stack.setCurrentWidget(self.placeholder)

    def _loaded(self, res: Loaded, t0: float) -> None:
        if res.item is not self.item:
            return
        keep = self.loaded is not None and self.loaded.array.shape == res.array.shape
        self.loaded = res
        self.mask = res.mask
        self.canvas_stack.setCurrentWidget(self.canvas)
        self.canvas.set_image(res.array, self._preset_levels(self._wl_preset, res.grey), keep_view=keep)
        self._levels_changed(*self.canvas.levels)
        self._update_lesion()
        if res.mask_error:
            self.message.emit(f"Lesion mask not shown: {res.mask_error}", 8000)
        if self.ov_heat.enabled_overlay:
            self._update_entropy()
        if self.ov_mae.enabled_overlay:
            self._update_mae()
        if self.ov_cam.enabled_overlay:
            self._update_cam()
        self._refresh_info()
        self.load_ms = (time.perf_counter() - t0) * 1000
        self.itemShown.emit(res.item)

    def _items_reset(self) -> None:
        # rows were re-read (scan finished): re-bind the shown item to its new row object
        if self.item is not None and self.item.image_id is None:
            for it in self.project.items:
                if it.path == self.item.path:
                    self.item = it
                    if self.loaded is not None:
                        self.loaded.item = it
                    self._refresh_label()
                    break
        elif self.item is not None:
            new = self.project.by_id.get(self.item.image_id)
            if new is not None and new is not self.item:
                self.item = new
                if self.loaded is not None:
                    self.loaded.item = new
                self._refresh_label()

    def _refresh_info(self) -> None:
        it = self.item
        if it is None:
            return
        parts = [it.rel_path]
        if self.loaded is not None:
            h, w = self.loaded.grey.shape
            kind = "colour" if self.loaded.array.ndim == 3 else "grey"
            parts.append(f"{w} × {h} px · {kind} · {self.loaded.bit_depth}-bit")
        if it.case_id:
            parts.append(f"case {it.case_id}" + (f" · {it.modality}" if it.modality else ""))
        if it.prediction is not None:
            unc = f", uncertainty {it.uncertainty:.2f}" if it.uncertainty is not None else ""
            parts.append(f"prediction {it.prediction}{unc}")
        self.info.setText("\n".join(parts))

    def _refresh_label(self) -> None:
        it = self.item
        self.label_buttons.set_current(it.label if it else None)
        self.history.clear()
        if it is None or it.image_id is None or not self.project.ready:
            if it is not None and it.image_id is None:
                self.history.addItem("Scanning… labels are available once the scan has read this file.")
            return
        events = self.project.label_history(it.image_id)
        if not events:
            self.history.addItem("No label yet.")
        for ev in reversed(events):
            when = time.strftime("%d %b %H:%M", time.localtime(ev.time))
            what = {"set": f"set by {ev.user}", "import": "imported with the data set",
                    "rename": f"class renamed by {ev.user}", "undo": f"undone by {ev.user}",
                    "redo": f"redone by {ev.user}"}.get(ev.action, f"{ev.action} by {ev.user}")
            text = f"{ev.prev_label or '—'} → {ev.label or '—'}\n{when} · {what}"
            li = QtWidgets.QListWidgetItem(text)
            li.setToolTip(f"{what} by {ev.user} on {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ev.time))}")
            if ev.undone:
                f = li.font()
                f.setStrikeOut(True)
                li.setFont(f)
                li.setForeground(QtGui.QColor(theme.TEXT_DIM))
                li.setToolTip("This edit was undone")
            self.history.addItem(li)

    def _item_changed(self, image_id: int) -> None:
        if self.item is None or self.item.image_id != image_id:
            return
        self._refresh_label()
        self._refresh_info()
        if self.loaded is not None:
            try:
                self.mask = self.files.read(image_id, self.loaded.grey.shape)
            except Exception as exc:
                self.message.emit(f"Lesion mask not shown: {exc}", 8000)
                self.mask = None
            self._update_lesion()

    # -- labels -----------------------------------------------------------------------------------------
    def assign(self, label: str | None) -> None:
        it = self.item
        if it is None:
            return
        if it.image_id is None:
            self.message.emit("This image is still being scanned; try again in a moment.", 4000)
            return
        changed = set_label(self.project, it, label)
        self.label_buttons.set_current(it.label)
        if changed and self.auto_advance.isChecked():
            self.navigate.emit(+1)

    def assign_index(self, n: int) -> None:
        """Key ``n`` (1–9) assigns the n-th class; 0 clears."""
        if n == 0:
            self.assign(None)
        elif 1 <= n <= len(self.project.classes):
            self.assign(self.project.classes[n - 1])
        else:
            self.message.emit(f"No class {n}: the project has {len(self.project.classes)} classes "
                              "(add one in the Classes panel).", 4000)

    # -- window / level ---------------------------------------------------------------------------------
    @staticmethod
    def _preset_levels(preset: str, grey: np.ndarray) -> tuple[float, float]:
        if preset == "auto":
            lo, hi = np.percentile(grey[:: max(1, grey.shape[0] // 256), :: max(1, grey.shape[1] // 256)], (1, 99))
        elif preset == "narrow":
            lo, hi = np.percentile(grey[:: max(1, grey.shape[0] // 256), :: max(1, grey.shape[1] // 256)], (5, 95))
        else:
            lo, hi = 0.0, 1.0
        if hi - lo < 1e-3:
            lo, hi = 0.0, 1.0
        return float(lo), float(hi)

    def apply_preset(self, preset: str) -> None:
        if preset == "custom" or self.loaded is None:
            return
        self._wl_preset = preset
        self.canvas.set_levels(*self._preset_levels(preset, self.loaded.grey))
        self._wl_preset = preset
        self._sync_wl_combo()

    def _levels_changed(self, lo: float, hi: float) -> None:
        if self.loaded is not None and (lo, hi) != self._preset_levels(self._wl_preset, self.loaded.grey):
            self._wl_preset = "custom"
        self._sync_wl_combo()
        scale = self._value_scale()
        w, c = (hi - lo) * scale, (hi + lo) / 2 * scale
        self.wl_values.setText(f"Window {w:.0f}   Level {c:.0f}" if scale > 1 else f"Window {w:.3f}   Level {c:.3f}")

    def _sync_wl_combo(self) -> None:
        i = self.wl_combo.findData(self._wl_preset)
        self.wl_combo.blockSignals(True)
        self.wl_combo.setCurrentIndex(max(0, i))
        self.wl_combo.blockSignals(False)

    def _value_scale(self) -> float:
        if self.loaded is None or self.loaded.is_dicom:
            return 1.0
        return float(2 ** min(self.loaded.bit_depth, 16) - 1)

    def _zoom_changed(self, z: float) -> None:
        self.zoom_label.setText(f"{z * 100:.0f} %")

    def hideEvent(self, ev) -> None:
        super().hideEvent(ev)
        self.statusText.emit("")      # another page: no pointer over this image any more

    def _hover(self, pos) -> None:
        if pos is None or self.loaded is None:
            self.statusText.emit("")
            return
        x, y = pos
        v = self.loaded.array[y, x]
        scale = self._value_scale()
        if np.ndim(v):
            val = "RGB " + ", ".join(f"{c * scale:.0f}" if scale > 1 else f"{c:.3f}" for c in v)
        else:
            val = f"{v * scale:.0f}" if scale > 1 else f"{float(v):.3f}"
        extra = ""
        if self.mask is not None and self.mask[y, x]:
            extra = "  ·  lesion"
        ent = self._entropy_cache.get(self.loaded.item.path)
        if ent is not None and self.ov_heat.enabled_overlay:
            extra += f"  ·  entropy {ent[y, x]:.2f} bits"
        self.statusText.emit(f"x {x}  y {y}  ·  value {val}{extra}")

    # -- overlays ---------------------------------------------------------------------------------------
    def _overlay_toggled(self, name: str, on: bool) -> None:
        if name == "entropy":
            if on:
                self._update_entropy()
            else:
                self.canvas.set_layer_visible("entropy", False)
        elif name == "mae":
            if on:
                self._update_mae()
            else:
                self.canvas.set_layer_visible("mae", False)
        elif name == "lesion":
            if on:
                self._update_lesion()
            else:
                self.canvas.set_layer_visible("lesion", False)
                self.canvas.set_layer_visible("lesion-outline", False)
        elif name == "gradcam":
            if on:
                self._update_cam()
            else:
                self.canvas.set_layer_visible("gradcam", False)

    def toggle_overlay(self, name: str) -> None:
        ctl = {"entropy": self.ov_heat, "mae": self.ov_mae, "lesion": self.ov_lesion, "gradcam": self.ov_cam}[name]
        if ctl.check.isEnabled():
            ctl.set_checked(not ctl.enabled_overlay)

    def _update_lesion(self) -> None:
        if self.loaded is None:
            return
        mask = self.mask if self.mask is not None else np.zeros(self.loaded.grey.shape, dtype=bool)
        fill, outline = lesion_layers(mask) if mask.any() else (None, None)
        on = self.ov_lesion.enabled_overlay
        self.canvas.set_rgba_layer("lesion", Z_LESION, fill, self.ov_lesion.opacity, on)
        self.canvas.set_rgba_layer("lesion-outline", Z_LESION_OUTLINE, outline, 1.0, on)
        area = int(mask.sum())
        self.ov_lesion.set_status(f"{100.0 * area / mask.size:.1f} % of the image" if area else "No lesion drawn")

    def _update_entropy(self) -> None:
        if self.loaded is None:
            return
        path = self.loaded.item.path
        cached = self._entropy_cache.get(path)
        if cached is not None:
            self._show_entropy(path, cached)
            return
        self.ov_heat.set_status("computing…")
        grey = self.loaded.grey

        def compute():
            return path, import_engine("core.analysis.entropy").local_entropy_map(grey)

        self.caller.submit(compute, lambda res: self._show_entropy(*res),
                           lambda msg: self.ov_heat.set_status(f"Failed: {msg}"), key="viewer-entropy")

    def _show_entropy(self, path: str, emap: np.ndarray) -> None:
        from core.analysis.entropy import DEFAULT_BINS, colormap_lut, max_entropy

        self._entropy_cache[path] = emap
        self._entropy_cache.move_to_end(path)
        while len(self._entropy_cache) > 8:
            self._entropy_cache.popitem(last=False)
        if self.loaded is None or self.loaded.item.path != path:
            return
        rgb = colormap_lut("inferno")
        top = max_entropy(DEFAULT_BINS)
        if self.heat_bar.lut is None:
            self.heat_bar.set_lut(rgb, 0.0, top)
        lut = np.concatenate([rgb, np.full((256, 1), 255, np.uint8)], axis=1)
        self.canvas.set_scalar_layer("entropy", Z_HEAT, emap, lut, (0.0, top),
                                     self.ov_heat.opacity, self.ov_heat.enabled_overlay)
        from core.analysis.entropy import DEFAULT_RADIUS

        side = 2 * DEFAULT_RADIUS + 1
        self.ov_heat.set_status(f"Grey-level entropy of the {side} × {side} px window around each pixel · "
                                f"mean {float(emap.mean()):.2f} bits")

    def mae_settings(self) -> dict:
        return {"ratio": float(self.mae_ratio.value()), "mode": self.mae_mode.currentData(),
                "cell": int(self.mae_cell.currentData()), "seed": int(self._mae_seed)}

    def resample_mae(self) -> None:
        self._mae_seed += 1
        if not self.ov_mae.enabled_overlay:
            self.ov_mae.set_checked(True)
        else:
            self._update_mae()

    def _update_mae(self) -> None:
        if self.loaded is None or not self.ov_mae.enabled_overlay:
            return
        grey, s, path = self.loaded.grey, self.mae_settings(), self.loaded.item.path

        def compute():
            entropy, masking = import_engine("core.analysis.entropy"), import_engine("core.analysis.masking")
            ent = entropy.cell_entropy(grey, cell=s["cell"])                   # [h, w] bits
            if ent.numel() == 0:
                return path, None, s
            hidden = masking.sample_mask(ent, ratio=s["ratio"], mode=s["mode"], generator=s["seed"])  # [h, w] True=hidden
            return path, hidden.numpy(), s

        self.ov_mae.set_status("sampling…")
        self.caller.submit(compute, lambda res: self._show_mae(*res),
                           lambda msg: self.ov_mae.set_status(f"Failed: {msg}"), key="viewer-mae")

    def _show_mae(self, path: str, hidden: np.ndarray | None, s: dict) -> None:
        if self.loaded is None or self.loaded.item.path != path:
            return
        if hidden is None:
            self.canvas.set_rgba_layer("mae", Z_MAE, None)
            self.ov_mae.set_status(f"image smaller than one {s['cell']} px cell")
            return
        rgba = hidden_cells_rgba(hidden, s["cell"], self.loaded.grey.shape)
        self.canvas.set_rgba_layer("mae", Z_MAE, rgba, self.ov_mae.opacity, self.ov_mae.enabled_overlay)
        mode = {"high": "high-entropy cells first", "low": "low-entropy cells first", "random": "uniform"}[s["mode"]]
        self.ov_mae.set_status(f"{int(hidden.sum())} of {hidden.size} cells hidden · {mode}")
        self.last_mae = hidden

    # -- tools ------------------------------------------------------------------------------------------
    def set_tool(self, tool: str) -> None:
        self.canvas.set_tool(tool)
        self.tool_buttons[tool].setChecked(True)
        if tool in ("brush", "eraser", "fill") and not self.ov_lesion.enabled_overlay:
            self.ov_lesion.set_checked(True)

    def _brush_size(self, v: int) -> None:
        self.brush_label.setText(f"{v} px")
        self.canvas.set_brush_radius(v / 2.0)

    def change_brush(self, delta: int) -> None:
        v = self.brush_slider.value()
        step = max(1, round(v * 0.2))
        self.brush_slider.setValue(v + (step if delta > 0 else -step))

    def _can_edit(self) -> bool:
        if self.loaded is None or self.item is None:
            return False
        if self.item.image_id is None:
            self.message.emit("This image is still being scanned; try again in a moment.", 4000)
            return False
        if self.loaded.mask_error:
            self.message.emit(f"Cannot edit: {self.loaded.mask_error}", 6000)
            return False
        return True

    def _stroke_start(self, x: float, y: float) -> None:
        if not self._can_edit():
            self._stroke_before = None
            return
        if self.mask is None:
            self.mask = np.zeros(self.loaded.grey.shape, dtype=bool)
        self._stroke_before = self.mask.copy()
        self._stroke_value = self.canvas.tool == "brush"
        self._last_pt = (x, y)

    def _stroke_move(self, x: float, y: float) -> None:
        if self._stroke_before is None:
            return
        box = mask_ops.stamp_line(self.mask, self._last_pt, (x, y), self.canvas.brush_radius, self._stroke_value)
        self._last_pt = (x, y)
        if box is not None:
            self._update_lesion()

    def _stroke_end(self) -> None:
        before, self._stroke_before = self._stroke_before, None
        if before is None or self.item is None:
            return
        if np.array_equal(before, self.mask):
            return
        after = self.mask.copy()
        push_mask_edit(self.project, self.files, self.item, before, after,
                       "Brush stroke" if self._stroke_value else "Erase")

    def _fill(self, x: int, y: int) -> None:
        if not self._can_edit():
            return
        mask = self.mask if self.mask is not None else np.zeros(self.loaded.grey.shape, dtype=bool)
        filled = mask_ops.flood_fill(mask, x, y)
        if filled is None:
            self.message.emit("Fill: click inside a closed outline drawn with the brush.", 5000)
            return
        push_mask_edit(self.project, self.files, self.item, mask.copy(), filled, "Fill")

    def clear_mask(self) -> None:
        if not self._can_edit():
            return
        if self.mask is None or not self.mask.any():
            if not self.files.state(self.item.image_id).attached:
                return
        before = self.mask.copy() if self.mask is not None else np.zeros(self.loaded.grey.shape, dtype=bool)
        push_mask_edit(self.project, self.files, self.item, before, None, "Clear mask")
