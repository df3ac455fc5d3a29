"""A table view whose first columns stay in place while the others scroll sideways.

The predictions table has a column per class for every member: scrolled to them, the image they belong to
was out of sight. Qt has no frozen column; this is its documented recipe (the "Frozen Column" example):
a second view over the same model and selection, showing only the first columns, laid over the left edge
of the main view and kept in step with its rows, widths, sort order and scrolling.
"""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets

_ACTIVATION = (QtCore.QEvent.Type.WindowActivate, QtCore.QEvent.Type.WindowDeactivate)


def still_on_activation(view: QtWidgets.QAbstractItemView, ev: QtCore.QEvent) -> bool | None:
    """For an item view's ``viewportEvent``: its window gaining or losing activation, while its palette looks
    the same either way (the app's does), is handled without Qt's item-view repaint of the whole viewport
    (done for inactive selection colours): opening any dialog over the predictions table cost a ~50 ms
    repaint of it. None: not such an event. (PySide calls an override defined in the Qt subclass itself,
    not one in a mixin.)"""
    if ev.type() in _ACTIVATION and view.palette().isEqual(QtGui.QPalette.ColorGroup.Active,
                                                            QtGui.QPalette.ColorGroup.Inactive):
        return QtWidgets.QAbstractScrollArea.viewportEvent(view, ev)      # past QAbstractItemView's repaint
    return None


class _FrozenPart(QtWidgets.QTableView):
    def viewportEvent(self, ev: QtCore.QEvent) -> bool:  # noqa: N802 (Qt name)
        handled = still_on_activation(self, ev)
        return super().viewportEvent(ev) if handled is None else handled


class FrozenColumnsTable(QtWidgets.QTableView):
    """A QTableView with its first ``frozen`` columns pinned on the left."""

    def __init__(self, frozen: int = 1, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.frozen_count = frozen
        self.frozen = _FrozenPart(self)
        self.frozen.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.frozen.verticalHeader().hide()
        self.frozen.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.frozen.setVerticalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.frozen.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.Fixed)
        self.frozen.setStyleSheet("QTableView { border: none; }")
        self.setHorizontalScrollMode(QtWidgets.QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setVerticalScrollMode(QtWidgets.QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.frozen.setVerticalScrollMode(QtWidgets.QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.viewport().stackUnder(self.frozen)
        self.horizontalHeader().sectionResized.connect(self._section_resized)
        self.verticalHeader().sectionResized.connect(
            lambda row, _old, size: self.frozen.setRowHeight(row, size))
        self.verticalScrollBar().valueChanged.connect(self.frozen.verticalScrollBar().setValue)
        self.frozen.verticalScrollBar().valueChanged.connect(self.verticalScrollBar().setValue)
        self.horizontalHeader().sortIndicatorChanged.connect(self._sorted_here)
        self.frozen.horizontalHeader().sectionClicked.connect(self._frozen_header_clicked)
        self.frozen.doubleClicked.connect(self.doubleClicked.emit)
        self.frozen.activated.connect(self.activated.emit)

    def viewportEvent(self, ev: QtCore.QEvent) -> bool:  # noqa: N802 (Qt name)
        handled = still_on_activation(self, ev)
        return super().viewportEvent(ev) if handled is None else handled

    # -- the model ------------------------------------------------------------------------------------
    def setModel(self, model) -> None:  # noqa: N802  (Qt name)
        super().setModel(model)
        self.frozen.setModel(model)
        self.frozen.setSelectionModel(self.selectionModel())
        for signal in (model.modelReset, model.layoutChanged, model.columnsInserted, model.columnsRemoved):
            signal.connect(self._columns_changed)
        self._columns_changed()

    def setSelectionBehavior(self, behavior) -> None:  # noqa: N802
        super().setSelectionBehavior(behavior)
        self.frozen.setSelectionBehavior(behavior)

    def setSelectionMode(self, mode) -> None:  # noqa: N802
        super().setSelectionMode(mode)
        self.frozen.setSelectionMode(mode)

    def _columns_changed(self, *_args) -> None:
        model = self.model()
        n = model.columnCount() if model is not None else 0
        for c in range(n):
            self.frozen.setColumnHidden(c, c >= self.frozen_count)
            if c < self.frozen_count:
                self.frozen.setColumnWidth(c, self.columnWidth(c))
        self.frozen.verticalHeader().setDefaultSectionSize(self.verticalHeader().defaultSectionSize())
        self.frozen.setWordWrap(self.wordWrap())
        self._place()

    # -- keeping in step ------------------------------------------------------------------------------
    def _section_resized(self, column: int, _old: int, size: int) -> None:
        if column < self.frozen_count:
            self.frozen.setColumnWidth(column, size)
            self._place()

    def _sorted_here(self, column: int, order) -> None:
        header = self.frozen.horizontalHeader()
        header.setSortIndicatorShown(self.isSortingEnabled())
        header.setSortIndicator(column, order)

    def _frozen_header_clicked(self, column: int) -> None:
        """A click on a pinned column's header sorts the table, like a click on the main header."""
        if not self.isSortingEnabled():
            return
        header = self.horizontalHeader()
        same = header.sortIndicatorSection() == column
        ascending = QtCore.Qt.SortOrder.AscendingOrder
        descending = QtCore.Qt.SortOrder.DescendingOrder
        order = (descending if header.sortIndicatorOrder() == ascending else ascending) if same else ascending
        self.sortByColumn(column, order)

    def pinned_width(self) -> int:
        return sum(self.columnWidth(c) for c in range(min(self.frozen_count, self.model().columnCount()))
                   if not self.isColumnHidden(c)) if self.model() is not None else 0

    def _place(self) -> None:
        self.frozen.setGeometry(self.verticalHeader().width() + self.frameWidth(), self.frameWidth(),
                                self.pinned_width(), self.viewport().height() + self.horizontalHeader().height())
        self.frozen.verticalScrollBar().setValue(self.verticalScrollBar().value())

    def resizeEvent(self, ev) -> None:  # noqa: N802
        super().resizeEvent(ev)
        self._place()

    def updateGeometries(self) -> None:  # noqa: N802  (header sizes known: the overlay follows)
        super().updateGeometries()
        if hasattr(self, "frozen"):
            self._place()

    def moveCursor(self, action, modifiers):  # noqa: N802
        """Keyboard moves keep the current cell out from under the pinned columns."""
        current = super().moveCursor(action, modifiers)
        if (action == QtWidgets.QAbstractItemView.CursorAction.MoveLeft and current.column() >= self.frozen_count
                and self.visualRect(current).topLeft().x() < self.pinned_width()):
            bar = self.horizontalScrollBar()
            bar.setValue(bar.value() + self.visualRect(current).topLeft().x() - self.pinned_width())
        return current

    def scrollTo(self, index, hint=QtWidgets.QAbstractItemView.ScrollHint.EnsureVisible) -> None:  # noqa: N802
        if index.column() >= self.frozen_count:
            super().scrollTo(index, hint)
