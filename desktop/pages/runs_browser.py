"""Runs browser: every run of the project (from the store) with its config, metrics, per-epoch curves and
checkpoints; two runs side by side to compare (differing config values are highlighted), and one per-epoch
metric of both runs overlaid in one plot."""

from __future__ import annotations

import json
import math

import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from core.project.runs import read_history
from desktop import theme
from desktop.pages.jobs_panel import (CURVE_COLORS, CURVE_NAMES, JobEntry, LegendPlot, RunView, has_curves,
                                      kind_label)


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, float):
            out[key] = f"{v:.4g}"             # 0.3604, not 0.36036036036036034
        else:
            out[key] = json.dumps(v) if not isinstance(v, str) else v
    return out


class RunPane(QtWidgets.QWidget):
    def __init__(self, store_getter, parent=None):
        super().__init__(parent)
        self._store = store_getter
        self.combo = QtWidgets.QComboBox()
        self.table = QtWidgets.QTreeWidget()
        self.table.setHeaderLabels(["Field", "Value"])
        self.table.setRootIsDecorated(False)
        self.table.header().setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        self.view = RunView()           # curves of a training run, the report of an ensemble / prediction
        self.curves = self.view.curves
        split = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        split.addWidget(self.view)
        split.addWidget(self.table)
        split.setSizes([260, 400])
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo)
        lay.addWidget(split, 1)
        self.fields: dict[str, str] = {}
        self.history: list[dict] = []
        self.label = ""
        self.entry: JobEntry | None = None

    def fill_runs(self, runs) -> None:
        cur = self.combo.currentData()
        self.combo.blockSignals(True)
        self.combo.clear()
        for r in reversed(runs):
            self.combo.addItem(f"#{r.id} {kind_label(r.kind)}: {r.name} ({r.state})", r.id)
        i = self.combo.findData(cur)
        self.combo.setCurrentIndex(i if i >= 0 else 0)
        self.combo.blockSignals(False)

    def load(self) -> None:
        """Read the chosen run from the store and its per-epoch log (once per selection)."""
        store = self._store()
        rid = self.combo.currentData()
        self.entry, self.fields, self.history, self.label = None, {}, [], ""
        if store is None or rid is None:
            return
        run = store.get_run(int(rid))
        fields = {"state": run.state, "run folder": run.run_dir or ""}
        if run.error:
            fields["error"] = run.error
        fields.update({f"metric {k}": v for k, v in flatten(run.metrics).items()})
        fields.update({f"config {k}": v for k, v in flatten(run.config).items()})
        for c in store.checkpoints(run.id):
            fields[f"checkpoint {c.path.rsplit('/', 1)[-1]}"] = f"{c.path}" + (f" (epoch {c.epoch})" if c.epoch else "")
        self.fields = fields
        self.history = read_history(run.kind, run.run_dir)
        self.label = f"#{run.id} {run.name}"
        self.entry = JobEntry.of(run)
        self.entry.history = self.history

    def render(self, other: dict[str, str] | None = None) -> None:
        """Table and curves of the loaded run; values that differ from ``other`` in amber."""
        self.table.clear()
        for k, v in self.fields.items():
            it = QtWidgets.QTreeWidgetItem([k, v])
            it.setToolTip(1, v)
            if other is not None and k in other and other[k] != v:
                it.setForeground(1, QtGui.QBrush(QtGui.QColor(theme.WARN)))
            self.table.addTopLevelItem(it)
        self.view.show_entry(self.entry)


class RunsBrowser(QtWidgets.QDialog):
    """Two panes; each picks a run. Config values that differ between the two are shown in amber."""

    def __init__(self, project, parent=None):
        super().__init__(parent)
        self.project = project
        self.setWindowTitle("Runs")
        screen = (parent.screen() if parent is not None else QtWidgets.QApplication.primaryScreen()).availableGeometry()
        self.resize(min(1400, screen.width() - 40), min(860, screen.height() - 40))   # fits a 1280×720 laptop
        self.left = RunPane(lambda: project.store)
        self.right = RunPane(lambda: project.store)
        split = QtWidgets.QSplitter()
        split.addWidget(self.left)
        split.addWidget(self.right)
        self.compare_metric = QtWidgets.QComboBox()
        self.overlay_box = LegendPlot("value", "epoch")
        self.overlay = self.overlay_box.plot
        bottom = QtWidgets.QWidget()
        bl = QtWidgets.QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("Compare per epoch"))
        row.addWidget(self.compare_metric, 1)
        bl.addLayout(row)
        bl.addWidget(self.overlay_box, 1)
        outer = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        outer.addWidget(split)
        outer.addWidget(bottom)
        outer.setSizes([600, 260])
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(outer)
        self.left.combo.currentIndexChanged.connect(lambda _i: self.refresh_panes())
        self.right.combo.currentIndexChanged.connect(lambda _i: self.refresh_panes())
        self.compare_metric.currentIndexChanged.connect(lambda _i: self.draw_overlay())
        self.overlay_series: dict[str, tuple[list, list]] = {}    # run label -> (epochs, values) drawn
        self.reload()

    def reload(self) -> None:
        store = self.project.store
        runs = store.list_runs() if store is not None else []
        first = self.left.combo.count() == 0
        self.left.fill_runs(runs)
        self.right.fill_runs(runs)
        if first:
            self._choose_comparable(runs)
        if self.right.combo.count() > 1 and self.right.combo.currentIndex() == self.left.combo.currentIndex():
            self.right.combo.setCurrentIndex(1)
        self.refresh_panes()

    def _choose_comparable(self, runs) -> None:
        """Open on the two newest runs that have curves, of one kind where there are two (the newest runs are
        often an ensemble and a prediction, which have none)."""
        trained = [r for r in reversed(runs) if has_curves(r.kind) and read_history(r.kind, r.run_dir)]
        if not trained:
            return
        left = trained[0]
        right = next((r for r in trained[1:] if r.kind == left.kind), trained[1] if len(trained) > 1 else None)
        for pane, run in ((self.left, left), (self.right, right)):
            if run is not None:
                pane.combo.blockSignals(True)
                pane.combo.setCurrentIndex(pane.combo.findData(run.id))
                pane.combo.blockSignals(False)

    def refresh_panes(self) -> None:
        self.left.load()
        self.right.load()
        self.left.render(self.right.fields)
        self.right.render(self.left.fields)
        keys: list[str] = []
        for pane in (self.left, self.right):
            for h in pane.history:
                keys += [k for k, v in h.items() if k not in keys and k != "epoch" and isinstance(v, (int, float))]
        both = [k for k in keys if all(any(k in h for h in p.history) for p in (self.left, self.right))]
        keys = both + [k for k in keys if k not in both]      # metrics both runs have first
        cur = self.compare_metric.currentText()
        self.compare_metric.blockSignals(True)
        self.compare_metric.clear()
        self.compare_metric.addItems(keys)
        prefer = [cur, "val_balanced_accuracy", "loss", "train_loss"]
        self.compare_metric.setCurrentIndex(next((self.compare_metric.findText(k) for k in prefer if k in keys), 0))
        self.compare_metric.blockSignals(False)
        self.draw_overlay()

    def draw_overlay(self) -> None:
        """The chosen per-epoch metric of the left and the right run in one plot."""
        self.overlay.clear()
        key = self.compare_metric.currentText()
        self.overlay_series = {}
        entries = []
        for i, pane in enumerate((self.left, self.right)):
            pts = [(h.get("epoch", j + 1), float(h[key])) for j, h in enumerate(pane.history)
                   if isinstance(h.get(key), (int, float)) and math.isfinite(h[key])]
            if not key or not pts or (i == 1 and pane.label == self.left.label):
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            color = CURVE_COLORS[i]
            self.overlay.plot(xs, ys, pen=pg.mkPen(color, width=2), symbol="o", symbolSize=5, symbolBrush=color)
            self.overlay_series[pane.label] = (xs, ys)
            entries.append((f"{'left' if i == 0 else 'right'}: {pane.label}", color))
        self.overlay_box.set_title(f"Both runs: {key}" if key else "Both runs", entries)
        # the axis gets the short name: "val_balanced_accuracy" did not fit the height of the plot
        self.overlay.getPlotItem().getAxis("left").setLabel(CURVE_NAMES.get(key, key) or "value",
                                                             color=theme.TEXT_DIM)
