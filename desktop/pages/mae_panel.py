"""Side-by-side MAE panel: original | hidden cells | reconstruction, from a chosen pretraining checkpoint.

The arrays come from ``core.analysis.reconstruct`` (model loading and the forward pass run in a worker thread);
this panel only shows them on three linked canvases. The original is the image itself at its own size and
aspect; the model's square views are stretched back over it, so a point is at one place on all three.
"""

from __future__ import annotations


from pathlib import Path

import numpy as np
from PySide6 import QtCore, QtWidgets

from desktop import theme
from desktop.widgets.canvas import ImageCanvas
from desktop.bridge.jobs_bridge import AsyncCaller, import_engine
from desktop.bridge.project import ProjectModel
from desktop.bridge.rows import Item
from desktop.bridge.rows import run_choices

META_KEY = "desktop.mae_checkpoint"


class MaePanel(QtWidgets.QWidget):
    message = QtCore.Signal(str, int)

    def __init__(self, project: ProjectModel, caller: AsyncCaller, parent=None):
        super().__init__(parent)
        self.project = project
        self.caller = caller
        self.item: Item | None = None
        self._models: dict[str, tuple] = {}
        self.last = None
        self.seed = 0

        self.ckpt = QtWidgets.QComboBox()
        self.ckpt.setMinimumWidth(200)
        self.ckpt.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.ckpt.currentIndexChanged.connect(lambda _i: self._checkpoint_changed())
        browse = QtWidgets.QPushButton("Choose…")
        browse.setToolTip("Choose an MAE run folder or checkpoint folder")
        browse.clicked.connect(self.browse)
        self.ratio = QtWidgets.QDoubleSpinBox()
        self.ratio.setRange(0.05, 0.95)
        self.ratio.setSingleStep(0.05)
        self.ratio.setValue(0.6)
        self.ratio.setToolTip("Mask ratio (fraction of cells hidden)")
        self.ratio.valueChanged.connect(lambda _v: self.refresh())
        self.resample = QtWidgets.QPushButton("Resample")
        self.resample.setIcon(theme.icon("resample"))
        self.resample.setToolTip("Draw a new entropy-guided mask")
        self.resample.clicked.connect(self.resample_mask)
        self.third = QtWidgets.QComboBox()
        self.third.addItem("reconstruction", "reconstruction")
        self.third.addItem("visible + reconstruction", "pasted")
        self.third.currentIndexChanged.connect(lambda _i: self._show(self.last))

        # two rows (the run on the first, the mask on the second): one row was wider than a laptop screen
        bar = QtWidgets.QVBoxLayout()
        bar.setContentsMargins(12, 10, 12, 6)
        bar.setSpacing(4)
        for widgets in (((("Checkpoint", self.ckpt), (None, browse))),
                        (("Mask ratio", self.ratio), (None, self.resample), ("Right panel", self.third))):
            row = QtWidgets.QHBoxLayout()
            row.setSpacing(8)
            for text, w in widgets:
                if text:
                    l = QtWidgets.QLabel(text)
                    l.setObjectName("dim")
                    row.addSpacing(6)
                    row.addWidget(l)
                row.addWidget(w, 1 if w is self.ckpt else 0)
            if self.ckpt not in (w for _t, w in widgets):
                row.addStretch(1)
            bar.addLayout(row)

        self.canvases = [ImageCanvas(), ImageCanvas(), ImageCanvas()]
        for c in self.canvases:          # three side by side still fit a 1280×720 screen with the jobs panel
            c.setMinimumSize(150, 150)
        self.titles = [QtWidgets.QLabel(t) for t in ("Original", "Hidden cells", "MAE reconstruction")]
        grid = QtWidgets.QGridLayout()
        grid.setContentsMargins(12, 0, 12, 0)
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(4)
        for i, (t, c) in enumerate(zip(self.titles, self.canvases)):
            t.setObjectName("heading")
            t.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
            grid.addWidget(t, 0, i)
            grid.addWidget(c, 1, i)
            grid.setColumnStretch(i, 1)
            if i:
                c.vb.setXLink(self.canvases[0].vb)
                c.vb.setYLink(self.canvases[0].vb)
        grid.setRowStretch(1, 1)
        self.grid_widget = QtWidgets.QWidget()
        self.grid_widget.setLayout(grid)

        self.empty = QtWidgets.QLabel()
        self.empty.setObjectName("subtitle")
        self.empty.setWordWrap(True)
        self.empty.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.grid_widget)

        self.status = QtWidgets.QLabel()
        self.status.setObjectName("dim")
        self.status.setWordWrap(True)
        self.status.setContentsMargins(14, 6, 14, 10)

        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addLayout(bar)
        lay.addWidget(self.stack, 1)
        lay.addWidget(self.status)
        project.storeReady.connect(self.reload_checkpoints)
        self._set_empty()

    # -- checkpoints ------------------------------------------------------------------------------------
    def reload_checkpoints(self) -> None:
        self.ckpt.blockSignals(True)
        self.ckpt.clear()
        if self.project.ready:
            for label, path in run_choices(self.project.store, "mae"):
                self.ckpt.addItem(label, path)
                self.ckpt.setItemData(self.ckpt.count() - 1, path, QtCore.Qt.ItemDataRole.ToolTipRole)
            saved = self.project.store.get_meta(META_KEY)
            if saved and self.ckpt.findData(saved) < 0 and Path(saved).exists():
                self.ckpt.addItem(Path(saved).name, saved)
            if saved:
                self.ckpt.setCurrentIndex(max(0, self.ckpt.findData(saved)))
        self.ckpt.blockSignals(False)
        self._checkpoint_changed()

    def set_checkpoint(self, path: str | Path) -> None:
        path = str(Path(path))
        if self.ckpt.findData(path) < 0:
            self.ckpt.addItem(Path(path).name, path)
        self.ckpt.setCurrentIndex(self.ckpt.findData(path))
        if self.project.ready:
            self.project.store.set_meta(META_KEY, path)

    def browse(self) -> None:
        from core.project.runs import runs_folder

        runs = runs_folder(self.project.paths.project_dir) if self.project.paths else None
        start = str(runs if runs is not None and runs.is_dir() else Path.home())   # .medssl is hidden
        path = QtWidgets.QFileDialog.getExistingDirectory(
            self, "Choose an MAE run or checkpoint folder", start,
            QtWidgets.QFileDialog.Option.ShowDirsOnly | QtWidgets.QFileDialog.Option.DontUseNativeDialog)
        if path:
            self.set_checkpoint(path)

    def checkpoint(self) -> str | None:
        return self.ckpt.currentData()

    def _checkpoint_changed(self) -> None:
        path = self.checkpoint()
        if path and self.project.ready:
            self.project.store.set_meta(META_KEY, path)
        self.refresh()

    # -- showing --------------------------------------------------------------------------------------
    def _set_empty(self, text: str | None = None) -> None:
        self.empty.setText(text or "No MAE pretraining in this project yet.\n\nTrain → Pretrain encoder… with "
                                   "the MAE method makes one; it is listed above by name when it has a checkpoint.")
        self.stack.setCurrentWidget(self.empty)
        self.status.setText("")

    def show_item(self, item: Item | None) -> None:
        self.item = item
        if self.isVisible():
            self.refresh()

    def showEvent(self, ev) -> None:
        super().showEvent(ev)
        self.reload_checkpoints()     # runs made since (in this window or from the command line) are listed

    def resample_mask(self) -> None:
        self.seed += 1
        self.refresh()

    def refresh(self) -> None:
        ckpt, item = self.checkpoint(), self.item
        if not ckpt:
            self._set_empty()
            return
        if item is None:
            self._set_empty("Open an image in the viewer to see what the MAE reconstructs.")
            return
        ratio, seed = float(self.ratio.value()), self.seed
        self.status.setText(f"Reconstructing {item.name}…")
        models = self._models

        def compute():
            from core.data.imageio import read_image

            engine = import_engine("core.analysis.reconstruct")
            if ckpt not in models:
                models.clear()
                models[ckpt] = engine.load_mae(ckpt)
            model, config = models[ckpt]
            rec = engine.reconstruct(model, config, [item.path], names=[item.name], mask_ratio=ratio, seed=seed)[0]
            return item, ckpt, config, rec, read_image(item.path).array

        self.caller.submit(compute, self._done, self._failed, key="mae-panel")

    def _failed(self, msg: str) -> None:
        self._set_empty(f"Cannot reconstruct with this checkpoint:\n{msg}")

    def _done(self, res) -> None:
        if res[0] is not self.item:
            return
        self.last = res
        self._show(self.last)

    def _show(self, res) -> None:
        if res is None:
            return
        item, ckpt, config, rec, image = res
        views = rec.views()       # uint8 RGB [S, S, 3] each: original, entropy, hidden, reconstruction, pasted
        third = views[4] if self.third.currentData() == "pasted" else views[3]
        first = self.canvases[0].image is None or self.canvases[0].image.shape != image.shape
        h, w = image.shape[:2]
        self.canvases[0].set_image(image, (0.0, 1.0), keep_view=not first)
        for canvas, arr in zip(self.canvases[1:], (views[2], third)):
            canvas.set_image(arr.astype(np.float32) / 255.0, (0.0, 1.0), keep_view=not first, shown_size=(w, h))
        if first:
            self.canvases[0].fit()
        hidden, total = int(rec.mask.sum()), rec.mask.size
        self.titles[1].setText(f"Hidden cells ({hidden} of {total})")
        self.titles[2].setText("MAE reconstruction" if self.third.currentData() != "pasted"
                               else "Visible + reconstruction")
        self.stack.setCurrentWidget(self.grid_widget)
        size = rec.original.shape[0]
        self.status.setText(
            f"{item.name} ({w}×{h} px) seen by the model at {size}×{size} px · {hidden}/{total} cells hidden · masked loss {rec.masked_loss:.3f} · "
            f"checkpoint {Path(ckpt).name} · cell brightness/contrast of hidden cells come from the original "
            "(the model predicts normalised pixels)")
