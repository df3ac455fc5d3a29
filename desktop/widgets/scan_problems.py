"""What the last scan could not use, itemised: each unreadable file with its reason, each set of
identical files filed under different labels, and each set of identical files the project merged into one
image (else they would vanish from the library unnamed). A status-bar button stays until the next scan and opens the
list (a status-bar message that vanishes after a few seconds is easy to miss and names no file)."""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets

from desktop import theme
from desktop.bridge.rows import natural_key

CONFLICT_REASON = "identical files with different labels: the project keeps the first file's label"
IDENTICAL_REASON = "identical files: the project keeps one image, the first file"


def problem_rows(errors, conflicts, identical) -> list[tuple[str, str]]:
    """(file, reason) rows: the scan's ``ScanError`` s, then one row per set of identical files (with
    different labels, then with one label)."""
    rows = sorted(((str(e.path), e.reason) for e in errors), key=lambda row: natural_key(row[0]))
    rows += [(" = ".join(group), CONFLICT_REASON) for group in conflicts]
    rows += [(" = ".join(group), IDENTICAL_REASON) for group in identical]
    return rows


def summary(errors, conflicts, identical) -> str:
    parts = []
    if errors:
        parts.append(f"{len(errors)} unreadable file{'s' if len(errors) != 1 else ''}")
    if conflicts:
        parts.append(f"{len(conflicts)} label conflict{'s' if len(conflicts) != 1 else ''}")
    merged = sum(len(group) - 1 for group in identical)
    if merged:
        parts.append(f"{merged} identical file{'s' if merged != 1 else ''} merged")
    return " · ".join(parts)


class ScanProblemsButton(QtWidgets.QToolButton):
    """Status-bar button "⚠ 4 unreadable files": hidden when the last scan found nothing wrong."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setAutoRaise(True)
        self.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.setStyleSheet(f"QToolButton {{ color: {theme.WARN}; }}")
        self.setToolTip("Files the scan skipped or merged, and why: click for the list")
        self.rows: list[tuple[str, str]] = []
        self.clicked.connect(self.open_list)
        self.hide()

    def set_problems(self, errors, conflicts, identical) -> None:
        self.rows = problem_rows(errors, conflicts, identical)
        self.setText(f"⚠ {summary(errors, conflicts, identical)}")
        self.setVisible(bool(self.rows))

    def clear(self) -> None:
        self.rows = []
        self.hide()

    def open_list(self) -> "ScanProblemsDialog":
        dlg = ScanProblemsDialog(self.rows, self.window())
        dlg.show()
        return dlg


class ScanProblemsDialog(QtWidgets.QDialog):
    """The list: file, reason; the chosen row's whole path and reason wrap below it (in the columns both were
    elided past reading); Copy puts the list on the clipboard as tab-separated text."""

    def __init__(self, rows: list[tuple[str, str]], parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Scan problems")
        self.setAttribute(QtCore.Qt.WidgetAttribute.WA_DeleteOnClose)
        self.resize(820, 360)
        self.tree = QtWidgets.QTreeWidget()
        self.tree.setHeaderLabels(["File", "Problem"])
        self.tree.setRootIsDecorated(False)
        self.tree.setWordWrap(True)
        for path, reason in rows:
            item = QtWidgets.QTreeWidgetItem([path, reason])
            item.setToolTip(0, path)
            item.setToolTip(1, reason)
            self.tree.addTopLevelItem(item)
        self.tree.setTextElideMode(QtCore.Qt.TextElideMode.ElideMiddle)   # the file name stays readable
        self.tree.resizeColumnToContents(0)
        self.tree.setColumnWidth(0, min(self.tree.columnWidth(0), 520))
        self.details = QtWidgets.QLabel()
        self.details.setWordWrap(True)
        self.details.setTextFormat(QtCore.Qt.TextFormat.PlainText)
        self.details.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.tree.currentItemChanged.connect(self._show_details)
        self.tree.setCurrentItem(self.tree.topLevelItem(0))
        copy = QtWidgets.QPushButton("Copy list")
        copy.clicked.connect(lambda: QtGui.QGuiApplication.clipboard().setText(
            "\n".join(f"{p}\t{r}" for p, r in rows)))
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
        buttons.addButton(copy, QtWidgets.QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.close)
        lay = QtWidgets.QVBoxLayout(self)
        note = QtWidgets.QLabel(f"{len(rows)} problem{'s' if len(rows) != 1 else ''} in the last scan. The other "
                                "files were imported; fix or remove these and rescan (F5).")
        note.setWordWrap(True)
        lay.addWidget(note)
        lay.addWidget(self.tree, 1)
        lay.addWidget(self.details)
        lay.addWidget(buttons)

    def _show_details(self, item, _previous=None) -> None:
        # a zero-width space after each "/" lets a long path wrap at its folders
        self.details.setText("" if item is None else
                             f"{item.text(0).replace('/', '/' + chr(0x200B))}\n{item.text(1)}")
