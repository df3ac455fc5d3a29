"""Every keyboard shortcut in one table: the main window builds its actions from it and Help → Shortcuts
shows it, so the two can never disagree."""

from __future__ import annotations


from PySide6 import QtCore, QtGui, QtWidgets

from desktop import theme

# (action id, keys, section, description)
SHORTCUTS: list[tuple[str, list[str], str, str]] = [
    ("open_folder", ["Ctrl+O"], "Project", "Open an image folder"),
    ("open_project", ["Ctrl+Shift+O"], "Project", "Open a project file (project.db)"),
    ("open_demo", [], "Project", "Open the demo project"),
    ("rescan", ["F5"], "Project", "Rescan the folder for new or changed files"),
    ("quit", ["Ctrl+Q"], "Project", "Quit (everything is already saved)"),
    ("show_library", ["Ctrl+L"], "Views", "Library (thumbnail grid)"),
    ("show_viewer", ["Ctrl+E"], "Views", "Viewer"),
    ("show_mae", ["Ctrl+M"], "Views", "MAE panel: original | hidden cells | reconstruction"),
    ("search", ["Ctrl+F"], "Views", "Search file names"),
    ("open_current", ["Return"], "Views", "Open the selected thumbnail in the viewer"),
    ("show_case", ["Ctrl+Shift+C"], "Views", "All images of this image's case side by side (MICLe's pairs)"),
    ("back", ["Esc"], "Views", "Back to the library"),
    ("label_1_9", ["1 … 9"], "Labelling", "Assign the 1st … 9th class"),
    ("label_0", ["0"], "Labelling", "Remove the label"),
    ("next", ["Right", "J"], "Labelling", "Next image"),
    ("previous", ["Left", "K"], "Labelling", "Previous image"),
    ("next_unlabeled", ["N"], "Labelling", "Next unlabeled image"),
    ("undo", ["Ctrl+Z"], "Editing", "Undo (labels and mask edits)"),
    ("redo", ["Ctrl+Shift+Z", "Ctrl+Y"], "Editing", "Redo"),
    ("tool_navigate", ["V"], "Editing", "Navigate tool (drag pans)"),
    ("tool_brush", ["B"], "Editing", "Brush: paint the lesion mask"),
    ("tool_eraser", ["E"], "Editing", "Eraser"),
    ("tool_fill", ["G"], "Editing", "Fill: click inside an outline"),
    ("brush_smaller", ["["], "Editing", "Smaller brush"),
    ("brush_larger", ["]"], "Editing", "Larger brush"),
    ("clear_mask", ["Shift+Del"], "Editing", "Clear the lesion mask"),
    ("fit", ["F"], "Image", "Fit to window"),
    ("one_to_one", ["Ctrl+1"], "Image", "Actual pixels (1:1)"),
    ("zoom_in", ["+", "="], "Image", "Zoom in (or mouse wheel)"),
    ("zoom_out", ["-"], "Image", "Zoom out"),
    ("wl_reset", ["W"], "Image", "Reset window / level to full range"),
    ("wl_drag", ["Right-drag"], "Image", "Window / level: ↔ width, ↕ level"),
    ("toggle_entropy", ["H"], "Overlays", "Entropy heatmap"),
    ("toggle_mae", ["M"], "Overlays", "Entropy-guided MAE mask"),
    ("resample_mae", ["R"], "Overlays", "Resample the MAE mask"),
    ("toggle_lesion", ["L"], "Overlays", "Lesion mask"),
    ("toggle_gradcam", ["C"], "Overlays", "Grad-CAM (when predictions exist)"),
    ("shortcuts", ["F1", "?"], "Help", "This list"),
]


def keys_for(action_id: str) -> list[QtGui.QKeySequence]:
    for aid, keys, _s, _d in SHORTCUTS:
        if aid == action_id:
            return [QtGui.QKeySequence(k) for k in keys if k not in ("1 … 9", "Right-drag")]
    return []


_PRETTY = {"Right": "→", "Left": "←", "Return": "Enter", "Esc": "Esc", "1 … 9": "1 … 9",
           "Right-drag": "Right-drag"}
LEFT_SECTIONS = ("Labelling", "Views", "Project", "Help")


def pretty_keys(keys: list[str]) -> str:
    out = []
    for k in keys:
        if k in _PRETTY:
            out.append(_PRETTY[k])
        else:
            out.append(QtGui.QKeySequence(k).toString(QtGui.QKeySequence.SequenceFormat.NativeText))
    return "  or  ".join(out) if out else "—"


class ShortcutsDialog(QtWidgets.QDialog):
    """Help → Keyboard shortcuts: every entry of :data:`SHORTCUTS`, in two columns."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        self.resize(1000, 660)
        left, right = self._table(), self._table()
        bold = QtGui.QFont()
        bold.setBold(True)
        sections: dict[str, list] = {}
        for aid, keys, sec, desc in SHORTCUTS:
            sections.setdefault(sec, []).append((keys, desc))
        order = list(LEFT_SECTIONS) + [s for s in sections if s not in LEFT_SECTIONS]
        for sec in order:
            table = left if sec in LEFT_SECTIONS else right
            head = QtWidgets.QTreeWidgetItem([sec, ""])
            head.setFont(0, bold)
            head.setForeground(0, QtGui.QColor(theme.ACCENT))
            table.addTopLevelItem(head)
            for keys, desc in sections[sec]:
                table.addTopLevelItem(QtWidgets.QTreeWidgetItem(["   " + pretty_keys(keys), desc]))
        for t in (left, right):
            t.resizeColumnToContents(0)
        self.tables = (left, right)
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        note = QtWidgets.QLabel("Every change is saved the moment you make it; there is nothing to save.")
        note.setObjectName("dim")
        cols = QtWidgets.QHBoxLayout()
        cols.setSpacing(16)
        cols.addWidget(left, 1)
        cols.addWidget(right, 1)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(16, 14, 16, 12)
        lay.addLayout(cols, 1)
        foot = QtWidgets.QHBoxLayout()
        foot.addWidget(note, 1)
        foot.addWidget(buttons)
        lay.addLayout(foot)

    @staticmethod
    def _table() -> QtWidgets.QTreeWidget:
        table = QtWidgets.QTreeWidget()
        table.setColumnCount(2)
        table.setHeaderHidden(True)
        table.setRootIsDecorated(False)
        table.setIndentation(0)
        table.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        table.header().setStretchLastSection(True)
        table.setStyleSheet("QTreeWidget::item { padding: 3px 8px; }")
        return table

    def descriptions(self) -> list[str]:
        return [t.topLevelItem(i).text(1) for t in self.tables for i in range(t.topLevelItemCount())]
