"""Runs browser: every run of the project (from the store) with its config, metrics, per-epoch curves and
checkpoints; two runs side by side to compare (differing config values are highlighted)."""

from __future__ import annotations

import json

from PySide6 import QtCore, QtGui, QtWidgets

from desktop import theme
from desktop.jobs_panel import CurvesWidget, JobEntry, KIND_LABELS, read_history


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
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
        self.curves = CurvesWidget()
        split = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        split.addWidget(self.curves)
        split.addWidget(self.table)
        split.setSizes([260, 400])
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo)
        lay.addWidget(split, 1)
        self.fields: dict[str, str] = {}

    def fill_runs(self, runs) -> None:
        cur = self.combo.currentData()
        self.combo.blockSignals(True)
        self.combo.clear()
        for r in reversed(runs):
            self.combo.addItem(f"#{r.id} {KIND_LABELS.get(r.kind, r.kind)}: {r.name} ({r.state})", r.id)
        i = self.combo.findData(cur)
        self.combo.setCurrentIndex(i if i >= 0 else 0)
        self.combo.blockSignals(False)

    def show_run(self, other: dict[str, str] | None = None) -> None:
        store = self._store()
        self.table.clear()
        self.fields = {}
        rid = self.combo.currentData()
        if store is None or rid is None:
            self.curves.show_entry(None)
            return
        run = store.get_run(int(rid))
        fields = {"state": run.state, "run folder": run.run_dir or ""}
        fields.update({f"metric {k}": v for k, v in flatten(run.metrics).items()})
        fields.update({f"config {k}": v for k, v in flatten(run.config).items()})
        for c in store.checkpoints(run.id):
            fields[f"checkpoint {c.path.rsplit('/', 1)[-1]}"] = f"{c.path}" + (f" (epoch {c.epoch})" if c.epoch else "")
        self.fields = fields
        for k, v in fields.items():
            it = QtWidgets.QTreeWidgetItem([k, v])
            it.setToolTip(1, v)
            if other is not None and k in other and other[k] != v:
                it.setForeground(1, QtGui.QBrush(QtGui.QColor(theme.WARN)))
            self.table.addTopLevelItem(it)
        e = JobEntry(run.id, run.kind, run.name, run.config, run.run_dir or "", run.state)
        e.history = read_history(run.kind, run.run_dir)
        self.curves.show_entry(e)


class RunsBrowser(QtWidgets.QDialog):
    """Two panes; each picks a run. Config values that differ between the two are shown in amber."""

    def __init__(self, project, parent=None):
        super().__init__(parent)
        self.project = project
        self.setWindowTitle("Runs")
        self.resize(1400, 860)
        self.left = RunPane(lambda: project.store)
        self.right = RunPane(lambda: project.store)
        split = QtWidgets.QSplitter()
        split.addWidget(self.left)
        split.addWidget(self.right)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(split)
        self.left.combo.currentIndexChanged.connect(lambda _i: self.refresh_panes())
        self.right.combo.currentIndexChanged.connect(lambda _i: self.refresh_panes())
        self.reload()

    def reload(self) -> None:
        store = self.project.store
        runs = store.list_runs() if store is not None else []
        self.left.fill_runs(runs)
        self.right.fill_runs(runs)
        if self.right.combo.count() > 1 and self.right.combo.currentIndex() == self.left.combo.currentIndex():
            self.right.combo.setCurrentIndex(1)
        self.refresh_panes()

    def refresh_panes(self) -> None:
        self.left.show_run()
        self.right.show_run(self.left.fields)
        self.left.show_run(self.right.fields)
