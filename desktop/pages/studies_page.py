"""Past studies of the project (Train > Studies…): each study run with its ensemble's and best member's mean
accuracy, whether the ensemble beats that member (a plain NO when it does not), and its report opened in
the browser. Everything shown comes from the store's run records (core.study.runner.study_result)."""

from __future__ import annotations

from pathlib import Path

from PySide6 import QtCore, QtGui, QtWidgets

COLUMNS = ("Study", "State", "Ensemble acc.", "Best member", "Ensemble beats it?", "Report")


def _pct(v) -> str:
    return f"{100 * v:.1f} %" if isinstance(v, (int, float)) else "–"


class StudiesDialog(QtWidgets.QDialog):
    def __init__(self, project, parent=None):
        super().__init__(parent)
        self.project = project
        self.setWindowTitle("Studies")
        self.resize(860, 380)
        self.table = QtWidgets.QTreeWidget()
        self.table.setHeaderLabels(list(COLUMNS))
        self.table.setRootIsDecorated(False)
        self.table.itemDoubleClicked.connect(lambda *_: self.open_report())
        self.table.currentItemChanged.connect(lambda *_: self._selection_changed())
        self.verdict = QtWidgets.QLabel()
        self.verdict.setWordWrap(True)
        self.open_button = QtWidgets.QPushButton("Open report")
        self.open_button.clicked.connect(self.open_report)
        refresh = QtWidgets.QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(refresh)
        buttons.addStretch(1)
        buttons.addWidget(self.open_button)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.verdict)
        lay.addLayout(buttons)
        self.refresh()

    def refresh(self) -> None:
        self.table.clear()
        store = self.project.store
        for run in reversed(store.list_runs("study") if store is not None else []):
            m = run.metrics
            beats = m.get("ensemble_beats_best_member")
            report = m.get("report") or ""
            it = QtWidgets.QTreeWidgetItem([
                f"#{run.id} {run.name}", run.state, _pct(m.get("ensemble_accuracy")),
                f"{m['best_member']} {_pct(m.get('best_member_accuracy'))}" if m.get("best_member") else "–",
                {"yes": "yes", "no": f"NO: prefer {m.get('best_member')}"}.get(beats, "–"),
                report if Path(report).is_file() else "–"])
            if beats == "no":
                it.setForeground(4, QtGui.QBrush(QtGui.QColor("#c0392b")))
            it.setData(0, QtCore.Qt.ItemDataRole.UserRole, (report, m.get("verdict") or run.error or ""))
            self.table.addTopLevelItem(it)
        for c in range(len(COLUMNS) - 1):
            self.table.resizeColumnToContents(c)
        if self.table.topLevelItemCount():
            self.table.setCurrentItem(self.table.topLevelItem(0))
        self._selection_changed()

    def current_report(self) -> str | None:
        it = self.table.currentItem()
        if it is None:
            return None
        report = it.data(0, QtCore.Qt.ItemDataRole.UserRole)[0]
        return report if report and Path(report).is_file() else None

    def _selection_changed(self) -> None:
        it = self.table.currentItem()
        self.verdict.setText(it.data(0, QtCore.Qt.ItemDataRole.UserRole)[1] if it is not None else
                             "No studies yet: Train > Run study….")
        self.open_button.setEnabled(self.current_report() is not None)

    def open_report(self) -> bool:
        """The selected study's report.html in the system browser."""
        report = self.current_report()
        if report is None:
            return False
        return QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(report))
