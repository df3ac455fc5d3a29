"""Runs browser: every run of the project (from the store) with its config, metrics, per-epoch curves and
checkpoints; two runs side by side to compare (differing config values are highlighted), and one per-epoch
metric of both runs overlaid in one plot.

It opens at once: the runs are read in a worker, and the five plots are built and drawn one per event-loop
turn (created and drawn together they held the UI thread for a quarter of a second, bench/gui.py).
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field

import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from core.project.runs import read_history
from desktop import theme
from desktop.bridge.jobs_bridge import STEP_PAUSE_MS, AsyncCaller
from desktop.pages.jobs_panel import CURVE_COLORS, CURVE_NAMES, JobEntry, RunView, has_curves, kind_label
from desktop.widgets.plots import LegendPlot


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


@dataclass
class PaneData:
    """One run as a pane shows it, read off the UI thread (store rows, the per-epoch log on disk)."""
    fields: dict[str, str] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    label: str = ""
    entry: JobEntry | None = None


def read_pane(store, run_id) -> PaneData:
    """The run's state, metrics, config and checkpoints as fields, and its per-epoch log."""
    if store is None or run_id is None:
        return PaneData()
    run = store.get_run(int(run_id))
    fields = {"state": run.state, "run folder": run.run_dir or ""}
    if run.error:
        fields["error"] = run.error
    fields.update({f"metric {k}": v for k, v in flatten(run.metrics).items()})
    fields.update({f"config {k}": v for k, v in flatten(run.config).items()})
    for c in store.checkpoints(run.id):
        fields[f"checkpoint {c.path.rsplit('/', 1)[-1]}"] = f"{c.path}" + (f" (epoch {c.epoch})" if c.epoch else "")
    history = read_history(run.kind, run.run_dir)
    entry = JobEntry.of(run)
    entry.history = history
    return PaneData(fields, history, f"#{run.id} {run.name}", entry)


def comparable_pair(runs) -> tuple[int | None, int | None]:
    """The two newest runs that have curves, of one kind where there are two (the newest runs are often an
    ensemble and a prediction, which have none). Reads each run's log: call it in a worker."""
    trained = [r for r in reversed(runs) if has_curves(r.kind) and read_history(r.kind, r.run_dir)]
    if not trained:
        return None, None
    left = trained[0]
    right = next((r for r in trained[1:] if r.kind == left.kind), trained[1] if len(trained) > 1 else None)
    return left.id, (right.id if right is not None else None)


class RunPane(QtWidgets.QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.combo = QtWidgets.QComboBox()
        self.table = QtWidgets.QTreeWidget()
        self.table.setHeaderLabels(["Field", "Value"])
        self.table.setRootIsDecorated(False)
        self.table.header().setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        self.view: RunView | None = None     # curves of a training run, the report of an ensemble / prediction:
                                             # built on its turn (RunsBrowser._next_stage)
        self.placeholder = QtWidgets.QLabel("Reading the run…")
        self.placeholder.setObjectName("dim")
        self.placeholder.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.split = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        self.split.addWidget(self.placeholder)
        self.split.addWidget(self.table)
        self.split.setSizes([260, 400])
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo)
        lay.addWidget(self.split, 1)
        self.data = PaneData()

    @property
    def curves(self):
        return self.view.curves if self.view is not None else None

    @property
    def fields(self) -> dict[str, str]:
        return self.data.fields

    @property
    def history(self) -> list[dict]:
        return self.data.history

    @property
    def label(self) -> str:
        return self.data.label

    @property
    def entry(self) -> JobEntry | None:
        return self.data.entry

    def fill_runs(self, runs) -> None:
        cur = self.combo.currentData()
        self.combo.blockSignals(True)
        self.combo.clear()
        for r in reversed(runs):
            self.combo.addItem(f"#{r.id} {kind_label(r.kind)}: {r.name} ({r.state})", r.id)
        i = self.combo.findData(cur)
        self.combo.setCurrentIndex(i if i >= 0 else 0)
        self.combo.blockSignals(False)

    def build_view(self) -> None:
        """The plots, built (and first painted) on their own event-loop turn, apart from filling them."""
        if self.view is None:
            self.view = RunView()
            self.split.replaceWidget(0, self.view)
            self.placeholder.deleteLater()

    def build_plot(self, which: str) -> None:
        """One plot (``"loss"`` or ``"epoch"``) of a run that shows curves, on a turn of its own, before
        ``render`` fills them."""
        self.build_view()
        if RunView.shows_curves(self.entry):
            curves = self.view.curves           # made with its loss plot
            if which == "epoch":
                curves.val_box                  # made on first use

    def render(self, other: dict[str, str] | None = None) -> None:
        """Table and curves of the loaded run; values that differ from ``other`` in amber."""
        self.build_view()
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
        self.left = RunPane()
        self.right = RunPane()
        split = QtWidgets.QSplitter()
        split.addWidget(self.left)
        split.addWidget(self.right)
        self.compare_metric = QtWidgets.QComboBox()
        self.overlay_box: LegendPlot | None = None      # built on its turn, after the panes
        self.overlay = None
        bottom = QtWidgets.QWidget()
        self._bottom = bl = QtWidgets.QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("Compare per epoch"))
        row.addWidget(self.compare_metric, 1)
        bl.addLayout(row)
        bl.addStretch(1)
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
        self._worker = AsyncCaller(workers=1, parent=self)
        self._stages: deque = deque()
        self._stage_timer = QtCore.QTimer(self, singleShot=True, interval=STEP_PAUSE_MS)
        self._stage_timer.timeout.connect(self._next_stage)
        self.reload()

    @property
    def settled(self) -> bool:
        """Everything chosen is read and drawn (nothing in the worker, no stage left)."""
        return self._worker.pending == 0 and not self._stages

    def reload(self) -> None:
        store = self.project.store
        runs = store.list_runs() if store is not None else []
        first = self.left.combo.count() == 0
        self.left.fill_runs(runs)
        self.right.fill_runs(runs)
        if first and runs:
            self._worker.submit(lambda: comparable_pair(runs), self._choose_pair, self._read_failed, key="pair")
            return
        self._choose_pair((None, None))

    def _choose_pair(self, pair: tuple[int | None, int | None]) -> None:
        """Open on the pair ``comparable_pair`` found, else on two different runs."""
        for pane, rid in zip((self.left, self.right), pair):
            if rid is not None:
                pane.combo.blockSignals(True)
                pane.combo.setCurrentIndex(pane.combo.findData(rid))
                pane.combo.blockSignals(False)
        if self.right.combo.count() > 1 and self.right.combo.currentIndex() == self.left.combo.currentIndex():
            self.right.combo.blockSignals(True)
            self.right.combo.setCurrentIndex(1)
            self.right.combo.blockSignals(False)
        self.refresh_panes()

    def refresh_panes(self) -> None:
        """Read both chosen runs in the worker; ``_show_panes`` draws them."""
        store, left, right = self.project.store, self.left.combo.currentData(), self.right.combo.currentData()
        self._stages.clear()
        self._worker.submit(lambda: (read_pane(store, left), read_pane(store, right)), self._show_panes,
                            self._read_failed, key="panes")

    def _read_failed(self, message: str) -> None:
        self._stages.clear()
        QtWidgets.QMessageBox.warning(self, "Runs", f"Cannot read the runs of this project: {message}")

    def _show_panes(self, data: tuple[PaneData, PaneData]) -> None:
        self.left.data, self.right.data = data
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
        # one plot-building step per event-loop turn: the window answers between them
        self._stages.extend([self.left.build_view, self.right.build_view]
                            + [lambda p=pane, w=which: p.build_plot(w) for pane in (self.left, self.right)
                               for which in ("loss", "epoch")]
                            + [lambda: self.left.render(self.right.fields),
                               lambda: self.right.render(self.left.fields), self.build_overlay, self.draw_overlay])
        self._stage_timer.start()

    def _next_stage(self) -> None:
        if self._stages:
            self._stages.popleft()()
        if self._stages:
            self._stage_timer.start()

    def build_overlay(self) -> None:
        if self.overlay_box is None:
            self.overlay_box = LegendPlot("value", "epoch", whole_x=True)
            self.overlay = self.overlay_box.plot
            self._bottom.takeAt(self._bottom.count() - 1)       # the stretch that held its place
            self._bottom.addWidget(self.overlay_box, 1)

    def draw_overlay(self) -> None:
        """The chosen per-epoch metric of the left and the right run in one plot."""
        self.build_overlay()
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
