"""Predictions page: every image of a prediction run with label, ensemble prediction, probabilities per
class, each member's probabilities, uncertainty (predictive entropy, member disagreement) and
correct / incorrect; sortable, filterable, CSV export; double-click opens the image in the viewer with
the Grad-CAM overlay. "Suggest next to label" ranks unlabeled images (``core.analysis.active``). A second tab shows
confusion matrices and one-vs-rest ROC curves of the ensemble and of each member (labelled images).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from core import csvcells
from desktop import theme
from desktop.bridge.jobs_bridge import STEP_PAUSE_MS, AsyncCaller
from desktop.bridge.rows import natural_key
from desktop.widgets.plots import app_plot
from desktop.widgets.elided_label import ElidedLabel
from desktop.widgets.frozen_table import FrozenColumnsTable

ROC_POINTS = 400             # points a drawn ROC curve keeps (10 000 images gave ~2 500 each to paint)
FILL_BATCH = 500             # rows added to the table per event-loop turn (10 000 at once froze the window)


@dataclass
class PredRow:
    image_id: int
    name: str
    rel_path: str
    label: str | None
    predicted: str | None
    probs: dict[str, float]
    members: dict[str, dict[str, float]] = field(default_factory=dict)
    entropy: float | None = None
    disagreement: float | None = None
    rank: int | None = None          # "suggest next" position (1 = first)
    name_place: int = 0              # place in natural file-name order ("benign (2)" before "benign (10)")

    @property
    def correct(self) -> bool | None:
        if self.label is None or self.predicted is None:
            return None
        return self.label == self.predicted


def load_rows(store, run_id: int, items_by_id: dict) -> tuple[list[PredRow], list[str], list[str]]:
    """Rows of a prediction run in natural file-name order, its classes and member names; labels are the
    images' current labels. Runs in a worker: reading and ordering thousands of rows is UI-thread time."""
    rows, classes, members = [], [], []
    for p in store.prediction_records(run_id):
        for c in p.probs:
            if c not in classes:
                classes.append(c)
        for n in p.members:
            if n not in members:
                members.append(n)
        it = items_by_id.get(p.image_id)
        rows.append(PredRow(p.image_id, it.name if it is not None else str(p.image_id),
                            it.rel_path if it is not None else "", it.label if it is not None else None,
                            p.predicted, dict(p.probs), {n: dict(d) for n, d in p.members.items()},
                            p.entropy, p.disagreement))
    return place_by_name(rows), classes, members


def place_by_name(rows: list[PredRow]) -> list[PredRow]:
    """The rows in natural file-name order, each told its place (the key the Image column sorts by)."""
    rows.sort(key=lambda r: (natural_key(r.name), natural_key(r.rel_path)))
    for place, r in enumerate(rows):
        r.name_place = place
    return rows


def sort_key(kind: str, key):
    """The key a column sorts by: numbers as numbers, a missing value first (a missing rank last)."""
    if kind == "name":
        return lambda r: r.name_place
    if kind == "rank":
        return lambda r: r.rank if r.rank is not None else float("inf")
    if kind in ("label", "predicted"):
        return lambda r: getattr(r, kind) or ""
    if kind == "prob":
        return lambda r: r.probs.get(key, -1.0)
    if kind == "member":
        return lambda r: r.members.get(key[0], {}).get(key[1], -1.0)
    return lambda r: -1.0 if getattr(r, kind) is None else float(getattr(r, kind))


class PredictionsModel(QtCore.QAbstractTableModel):
    """All rows of a run, of which the first ``shown`` are in the table: ``set_data`` resets to none and
    ``show_more`` appends a batch per call, so a large run fills in while the window stays responsive.
    Sorting reorders every row with a Python key (the proxy's per-comparison ``data()`` calls took
    seconds on 10 000 rows); the shown rows are always the first of that order."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[PredRow] = []
        self.shown = 0
        self.classes: list[str] = []
        self.members: list[str] = []
        self.columns: list[tuple[str, str, object]] = []   # (header, kind, key)
        self._cells: dict[int, list[tuple]] = {}            # id(row) -> its cells (see ``data``)
        self._name_col = -1

    def set_data(self, rows: list[PredRow], classes: list[str], members: list[str]) -> None:
        self.beginResetModel()
        self.rows, self.classes, self.members = rows, classes, members
        self.shown = 0
        cols: list[tuple[str, str, object]] = [("#", "rank", None), ("Image", "name", None), ("Label", "label", None),
                                               ("Prediction", "predicted", None)]
        cols += [(f"p({c})", "prob", c) for c in classes]
        cols += [("Entropy", "entropy", None), ("Disagreement", "disagreement", None), ("Correct", "correct", None)]
        cols += [(f"{m}: p({c})", "member", (m, c)) for m in members for c in classes]
        self.columns = cols
        self._cells = {}
        self._name_col = next(i for i, c in enumerate(cols) if c[1] == "name")
        self.endResetModel()

    def show_more(self, batch: int) -> bool:
        """Append up to ``batch`` rows to the table; False once every row is in."""
        n = min(batch, len(self.rows) - self.shown)
        if n > 0:
            self.beginInsertRows(QtCore.QModelIndex(), self.shown, self.shown + n - 1)
            self.shown += n
            self.endInsertRows()
        return self.shown < len(self.rows)

    @property
    def filled(self) -> bool:
        return self.shown == len(self.rows)

    def sort(self, column: int, order=QtCore.Qt.SortOrder.AscendingOrder) -> None:  # noqa: A003 (Qt name)
        if not 0 <= column < len(self.columns):
            return
        _h, kind, key = self.columns[column]
        self.layoutAboutToBeChanged.emit()
        before = self.persistentIndexList()
        held = [self.rows[i.row()] for i in before]
        self.rows.sort(key=sort_key(kind, key), reverse=order == QtCore.Qt.SortOrder.DescendingOrder)
        place = {id(r): k for k, r in enumerate(self.rows)}
        after = [self.index(place[id(r)], i.column()) if place[id(r)] < self.shown else QtCore.QModelIndex()
                 for r, i in zip(held, before)]
        self.changePersistentIndexList(before, after)
        self.layoutChanged.emit()

    def set_ranks(self, ranks: dict[int, int]) -> None:
        for r in self.rows:
            r.rank = ranks.get(r.image_id)
        self._cells = {}
        if self.shown:
            self.dataChanged.emit(self.index(0, 0), self.index(self.shown - 1, 0))

    def rowCount(self, parent=QtCore.QModelIndex()) -> int:
        return 0 if parent.isValid() else self.shown

    def columnCount(self, parent=QtCore.QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section, orientation, role=QtCore.Qt.ItemDataRole.DisplayRole):
        if orientation == QtCore.Qt.Orientation.Horizontal and role == QtCore.Qt.ItemDataRole.DisplayRole:
            return self.columns[section][0]
        if orientation == QtCore.Qt.Orientation.Horizontal and role == QtCore.Qt.ItemDataRole.ToolTipRole:
            kind = self.columns[section][1]
            return {"entropy": "predictive entropy of the ensemble (nats)",
                    "disagreement": "member disagreement: Jensen–Shannon divergence (nats)",
                    "rank": "position in the 'suggest next to label' list"}.get(kind)
        return None

    def value(self, row: PredRow, col: int):
        _h, kind, key = self.columns[col]
        if kind == "rank":
            return row.rank
        if kind in ("name", "label", "predicted", "entropy", "disagreement", "correct"):
            return getattr(row, kind)
        if kind == "prob":
            return row.probs.get(key)
        if kind == "member":
            return row.members.get(key[0], {}).get(key[1])
        return None

    def data(self, index, role=QtCore.Qt.ItemDataRole.DisplayRole):
        """From a per-row cache: a paint asks ~7 roles of each of ~500 visible cells, and computing each answer
        (value, text, brush) on every call made one paint of the table cost ~90 ms of UI thread (bench/gui.py:
        it repaints whenever a dialog opens, as item views do on losing activation)."""
        slot = CELL_SLOTS.get(role)
        if slot is None or not index.isValid():
            if role == QtCore.Qt.ItemDataRole.ToolTipRole and index.isValid() and index.column() == self._name_col:
                return self.rows[index.row()].rel_path
            return None
        return self.row_cells(index.row())[index.column()][slot]

    def row_cells(self, row: int) -> list[tuple]:
        """Row ``row``'s cells, computed on first use: what ``data`` answers and ``CellDelegate`` paints."""
        record = self.rows[row]
        cells = self._cells.get(id(record))
        if cells is None:
            cells = self._cells[id(record)] = [self._cell(record, col) for col in range(len(self.columns))]
        return cells

    def row_changed(self, row: int) -> None:
        """Row ``row``'s record changed (its label): its cells are computed again."""
        self._cells.pop(id(self.rows[row]), None)
        if row < self.shown:
            self.dataChanged.emit(self.index(row, 0), self.index(row, self.columnCount() - 1))

    def _cell(self, row: PredRow, col: int) -> tuple:
        """(text, foreground, background, alignment) of one cell; the order of ``CELL_SLOTS``."""
        v = self.value(row, col)
        kind = self.columns[col][1]
        if v is None:
            text = "" if kind != "label" else "—"
        elif kind == "correct":
            text = "✓" if v else "✗"
        elif isinstance(v, float):
            text = f"{v:.3f}"
        else:
            text = str(v)
        fg = None
        if kind == "correct" and v is not None:
            fg = _brush("#5fbf7f" if v else theme.ERROR)
        elif kind in ("label", "predicted") and v is not None and v in self.classes:
            fg = _brush(theme.class_color(self.classes.index(v)).name())
        elif kind == "label" and v is None:
            fg = _brush(theme.TEXT_DIM)
        bg = _shade(v) if kind in ("prob", "member") and isinstance(v, float) else None
        align = None if kind in ("name", "label", "predicted") else RIGHT_ALIGNED
        return text, fg, bg, align


#: the roles a table cell answers from ``PredictionsModel``'s cache, and their places in a cached cell
CELL_SLOTS = {QtCore.Qt.ItemDataRole.DisplayRole: 0, QtCore.Qt.ItemDataRole.ForegroundRole: 1,
              QtCore.Qt.ItemDataRole.BackgroundRole: 2, QtCore.Qt.ItemDataRole.TextAlignmentRole: 3}
RIGHT_ALIGNED = int(QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)


@functools.lru_cache(maxsize=64)
def _brush(color: str) -> QtGui.QBrush:
    return QtGui.QBrush(QtGui.QColor(color))


@functools.lru_cache(maxsize=128)
def _shade_level(level: int) -> QtGui.QBrush:
    c = QtGui.QColor(theme.ACCENT)
    c.setAlphaF(0.08 + 0.55 * level / 100)
    return QtGui.QBrush(c)


def _shade(p: float) -> QtGui.QBrush:
    """A probability's cell background: the accent colour, more opaque the higher ``p`` (100 steps)."""
    return _shade_level(round(100 * max(0.0, min(1.0, p))))


class CellDelegate(QtWidgets.QStyledItemDelegate):
    """Paints a predictions cell straight from ``PredictionsModel.row_cells``, its text a cached
    ``QStaticText``: the standard delegate's style path (a dozen role queries and a text layout per cell) made
    one paint of the table ~2.7x slower, and the table repaints whenever its tab is shown (~45 vs 17 ms for
    460 cells, /tmp microbenchmark of ``viewport().repaint()``). Looks as the standard one: selection in the
    palette's highlight, text elided on the right when the column is too narrow."""

    def __init__(self, source: "PredictionsModel", parent=None):
        super().__init__(parent)
        self.source = source
        style = QtWidgets.QApplication.style()         # the standard delegate's text margin
        self.pad = style.pixelMetric(QtWidgets.QStyle.PixelMetric.PM_FocusFrameHMargin) + 1
        self._texts: dict[str | tuple[str, int], QtGui.QStaticText] = {}

    def paint(self, painter: QtGui.QPainter, option, index) -> None:
        proxy = index.model()
        src = proxy.mapToSource(index) if proxy is not self.source else index
        text, fg, bg, align = self.source.row_cells(src.row())[src.column()]
        rect = option.rect
        selected = option.state & QtWidgets.QStyle.StateFlag.State_Selected
        if selected:
            pal = option.palette
            painter.fillRect(rect, pal.highlight())
            painter.setPen(pal.color(QtGui.QPalette.ColorRole.HighlightedText))
        else:
            if bg is not None:
                painter.fillRect(rect, bg)
            painter.setPen(fg.color() if fg is not None else option.palette.color(QtGui.QPalette.ColorRole.Text))
        if not text:
            return
        room = rect.width() - 2 * self.pad
        static = self._static(text, option.font)     # the painter's font is the view's, as the option's
        size = static.size()
        if size.width() > room:   # too narrow: elided on the right, as the standard delegate does
            static = self._static((text, room), option.font, option.fontMetrics)
            size = static.size()
        x = rect.x() + rect.width() - self.pad - size.width() if align is not None else rect.x() + self.pad
        painter.drawStaticText(QtCore.QPointF(x, rect.top() + int((rect.height() - size.height()) / 2)), static)

    def _static(self, key: str | tuple[str, int], font: QtGui.QFont, metrics: QtGui.QFontMetrics | None = None
                ) -> QtGui.QStaticText:
        """The prepared text of ``key``: a cell's text, or (text, width) for it elided to that width."""
        static = self._texts.get(key)
        if static is None:
            if len(self._texts) > 50_000:      # a bound; texts repeat (probabilities, labels)
                self._texts.clear()
            text = key if isinstance(key, str) else metrics.elidedText(key[0], QtCore.Qt.TextElideMode.ElideRight,
                                                                        key[1])
            static = self._texts[key] = QtGui.QStaticText(text)
            static.prepare(QtGui.QTransform(), font)
        return static


class PredictionsFilter(QtCore.QSortFilterProxyModel):
    """Filters the rows; sorting is the source model's (``PredictionsModel.sort``), this keeps its order."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.text = ""
        self.show = "all"       # all | labelled | unlabeled | incorrect | correct | suggested
        self.predicted = ""     # class name or ""

    def sort(self, column: int, order=QtCore.Qt.SortOrder.AscendingOrder) -> None:  # noqa: A003 (Qt name)
        self.sourceModel().sort(column, order)

    def set_filter(self, *, text=None, show=None, predicted=None) -> None:
        if text is not None:
            self.text = text.lower()
        if show is not None:
            self.show = show
        if predicted is not None:
            self.predicted = predicted
        if hasattr(self, "beginFilterChange"):      # Qt >= 6.9 (invalidateFilter is deprecated there)
            self.beginFilterChange()
            self.endFilterChange(QtCore.QSortFilterProxyModel.Direction.Rows)
        else:
            self.invalidateRowsFilter()

    def filterAcceptsRow(self, source_row: int, parent) -> bool:
        row: PredRow = self.sourceModel().rows[source_row]
        if self.text and self.text not in row.rel_path.lower() and self.text not in row.name.lower():
            return False
        if self.predicted and row.predicted != self.predicted:
            return False
        s = self.show
        if s == "labelled" and row.label is None:
            return False
        if s == "unlabeled" and row.label is not None:
            return False
        if s == "incorrect" and row.correct is not False:
            return False
        if s == "correct" and row.correct is not True:
            return False
        if s == "suggested" and row.rank is None:
            return False
        return True


def export_csv(path: str | Path, model: PredictionsModel, proxy: QtCore.QSortFilterProxyModel | None = None) -> int:
    """Write the (filtered, sorted) table as CSV with full-precision numbers; returns rows written."""
    cols = model.columns
    header = ["image_id", "path"] + [h if k != "rank" else "suggest_rank" for h, k, _ in cols if k != "name"]
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csvcells.writer(fh)
        w.writerow(header)
        count = proxy.rowCount() if proxy is not None else len(model.rows)
        for i in range(count):
            src = proxy.mapToSource(proxy.index(i, 0)).row() if proxy is not None else i
            row = model.rows[src]
            out = [row.image_id, row.rel_path]
            for c, (_h, kind, _k) in enumerate(cols):
                if kind == "name":
                    continue
                v = model.value(row, c)
                out.append("" if v is None else (int(v) if isinstance(v, bool) else v))
            w.writerow(out)
            n += 1
    return n


# -- confusion / ROC (labelled images) ------------------------------------------------------------------
# scikit-learn is imported behind the splash screen (desktop.app.preload_engine): here it is already loaded
def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """[n, n] counts: rows the true class, columns the predicted one."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y, pred, labels=list(range(n)))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(fpr, tpr, auc) of one-vs-rest scores; auc is NaN when a class is missing."""
    from sklearn import metrics

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    fpr, tpr, _ = metrics.roc_curve(positive, scores)
    return fpr, tpr, float(metrics.auc(fpr, tpr))


@dataclass
class ChartNumbers:
    """What the Confusion & ROC tab draws, computed off the UI thread."""
    classes: list[str]
    n_labelled: int
    accuracy: float
    matrix: np.ndarray
    rocs: list[tuple[np.ndarray, np.ndarray, float]]     # (fpr, tpr, auc) per class


def chart_numbers(rows: list[PredRow], classes: list[str], member: str) -> ChartNumbers | None:
    """Confusion matrix and one-vs-rest ROC of the ensemble (``member`` "") or one member over the labelled
    rows; None when no labelled row has a prediction."""
    lab = [r for r in rows if r.label in classes]
    if not classes or not lab:
        return None
    y = np.array([classes.index(r.label) for r in lab], dtype=int)
    src = [(r.members.get(member, {}) if member else r.probs) for r in lab]
    p = np.array([[d.get(c, 0.0) for c in classes] for d in src], dtype=float).reshape(len(lab), len(classes))
    pred = p.argmax(1)
    return ChartNumbers(classes, len(y), float((pred == y).mean()), confusion(y, pred, len(classes)),
                        [thin_curve(*roc_curve(p[:, k], y == k)) for k in range(len(classes))])


def thin_curve(fpr: np.ndarray, tpr: np.ndarray, auc: float) -> tuple[np.ndarray, np.ndarray, float]:
    """At most ROC_POINTS evenly spaced points of the curve, both ends kept (the AUC is the full curve's)."""
    if len(fpr) <= ROC_POINTS:
        return fpr, tpr, auc
    keep = np.unique(np.linspace(0, len(fpr) - 1, ROC_POINTS).round().astype(int))
    return fpr[keep], tpr[keep], auc


class ConfusionRocView(QtWidgets.QWidget):
    """Confusion matrix (counts, row-normalised colour) and one-vs-rest ROC per class, for the ensemble or
    one member, over the labelled images of the prediction run. Computed in a worker, and only while the
    tab is visible: a hidden tab only notes that it is out of date."""

    drawn = QtCore.Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._worker = AsyncCaller(workers=1, parent=self)
        self._stale = False
        self.source = QtWidgets.QComboBox()
        self.caption = QtWidgets.QLabel()
        self.caption.setObjectName("dim")
        self.caption.setWordWrap(True)
        self.cm_plot = app_plot("Confusion matrix", "true class", "predicted class")
        self.cm_plot.setAspectLocked(True)
        self.cm_plot.getPlotItem().invertY(True)
        self.cm_image = pg.ImageItem(axisOrder="row-major")   # explicit: the app-wide option depends on imports
        self.cm_plot.addItem(self.cm_image)
        self.cm_texts: list[pg.TextItem] = []
        self.roc_plot = app_plot("ROC (one class vs the rest)", "true positive rate", "false positive rate")
        self.roc_plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0.02)
        self.roc_legend = self.roc_plot.addLegend(offset=(-10, -10), labelTextColor=theme.TEXT)
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("Model"))
        top.addWidget(self.source)
        top.addWidget(self.caption, 1)
        plots = QtWidgets.QHBoxLayout()
        plots.addWidget(self.cm_plot, 1)
        plots.addWidget(self.roc_plot, 1)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(top)
        lay.addLayout(plots, 1)
        self.rows: list[PredRow] = []
        self.classes: list[str] = []
        self.matrix: np.ndarray | None = None
        self.aucs: dict[str, float] = {}
        self.source.currentIndexChanged.connect(self.redraw)
        self._step = QtCore.QTimer(self, singleShot=True, interval=STEP_PAUSE_MS)
        self._step.timeout.connect(self._next_step)
        self._step_fn = None

    def set_data(self, rows: list[PredRow], classes: list[str], members: list[str]) -> None:
        self.rows, self.classes = rows, classes
        cur = self.source.currentData()
        self.source.blockSignals(True)
        self.source.clear()
        self.source.addItem("Ensemble", "")
        for m in members:
            self.source.addItem(f"Member {m}", m)
        i = self.source.findData(cur) if cur is not None else 0
        self.source.setCurrentIndex(max(0, i))
        self.source.blockSignals(False)
        self.redraw()

    def redraw(self) -> None:
        """Recompute (in a worker) when visible; otherwise when the tab is next shown."""
        self._stale = True
        if self.isVisible():
            self._compute()

    def showEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        if self._stale:
            self._compute()

    def _compute(self) -> None:
        self._stale = False
        self._later(None)
        rows, classes, member = list(self.rows), list(self.classes), self.source.currentData() or ""
        self._worker.submit(lambda: chart_numbers(rows, classes, member), lambda n: self._later(lambda: self._draw(n)),
                            lambda msg: self.caption.setText(f"cannot compute the charts: {msg}"), key="charts")

    def _later(self, step) -> None:
        """``step`` on a later event-loop turn than this one, in place of any step still waiting (None: drop
        it). The tab's first show, the matrix and the curves each cost ~20 ms of UI thread; delivered as the
        worker's result they ran in one turn, a 65 ms stall (bench/gui.py)."""
        self._step_fn = step
        if step is None:
            self._step.stop()
        else:
            self._step.start()

    def _next_step(self) -> None:
        step, self._step_fn = self._step_fn, None
        if step is not None:
            step()

    def _draw(self, numbers: ChartNumbers | None) -> None:
        for t in self.cm_texts:
            self.cm_plot.removeItem(t)
        self.cm_texts = []
        self.roc_plot.clear()
        self.roc_legend.clear()
        if numbers is None:
            self.caption.setText("No labelled image has a prediction yet.")
            self.cm_image.clear()
            self.matrix = None
            self.drawn.emit()
            return
        classes = numbers.classes
        n = len(classes)
        m = numbers.matrix
        self.matrix = m
        self.caption.setText(f"{numbers.n_labelled} labelled images, accuracy {numbers.accuracy:.1%}. Images the "
                             "members were trained on are included: use the ensemble report (test split) for an "
                             "unbiased estimate.")
        norm = m / np.maximum(1, m.sum(1, keepdims=True))
        self.cm_image.setImage(norm, levels=(0, 1))   # row-major: rows = true class (y), columns = predicted (x)
        self.cm_image.setLookupTable(pg.colormap.get("viridis").getLookupTable(nPts=256))
        self.cm_image.setRect(QtCore.QRectF(0, 0, n, n))
        for i in range(n):
            for j in range(n):
                t = pg.TextItem(str(m[i, j]), color="w" if norm[i, j] < 0.6 else "k", anchor=(0.5, 0.5))
                font = QtGui.QFont()
                font.setPointSize(12)
                font.setBold(True)
                t.setFont(font)
                t.setPos(j + 0.5, i + 0.5)
                self.cm_plot.addItem(t)
                self.cm_texts.append(t)
        ticks = [[(k + 0.5, c) for k, c in enumerate(classes)]]
        pi = self.cm_plot.getPlotItem()
        pi.getAxis("bottom").setTicks(ticks)
        pi.getAxis("left").setTicks(ticks)
        self.cm_plot.setRange(xRange=(0, n), yRange=(0, n), padding=0.02)
        self._later(lambda: self._draw_roc(numbers))

    def _draw_roc(self, numbers: ChartNumbers) -> None:
        classes = numbers.classes
        self.roc_plot.plot([0, 1], [0, 1], pen=pg.mkPen(theme.BORDER, style=QtCore.Qt.PenStyle.DashLine))
        self.aucs = {}
        for k, (c, (fpr, tpr, auc)) in enumerate(zip(classes, numbers.rocs)):
            self.aucs[c] = auc
            color = theme.class_color(k)
            name = f"{c}  AUC {auc:.3f}" if np.isfinite(auc) else f"{c}  (no positives)"
            self.roc_plot.plot(fpr, tpr, pen=pg.mkPen(color, width=2), name=name)
        self.roc_plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0.02)
        self.drawn.emit()


# -- the page ---------------------------------------------------------------------------------------------
class PredictionsPage(QtWidgets.QWidget):
    openImage = QtCore.Signal(int, str)        # image id, ensemble file (for Grad-CAM; "" if unknown)
    rowsLoaded = QtCore.Signal()               # every row of the chosen run is in the table
    suggested = QtCore.Signal(list)            # image ids, best first
    message = QtCore.Signal(str, int)

    def __init__(self, project, parent=None):
        super().__init__(parent)
        self.project = project
        self._loader = AsyncCaller(workers=1, parent=self)
        self.run_combo = QtWidgets.QComboBox()
        self.run_combo.setMinimumWidth(180)
        self.search = QtWidgets.QLineEdit()
        self.search.setPlaceholderText("Filter by file name…")
        self.search.setClearButtonEnabled(True)
        self.search.setMinimumWidth(110)
        self.show_combo = QtWidgets.QComboBox()
        for label, v in (("All images", "all"), ("Labelled", "labelled"), ("Unlabeled", "unlabeled"),
                         ("Incorrect", "incorrect"), ("Correct", "correct"), ("Suggested to label", "suggested")):
            self.show_combo.addItem(label, v)
        self.pred_combo = QtWidgets.QComboBox()
        self.count_label = ElidedLabel()
        self.count_label.setObjectName("dim")
        self.suggest_btn = QtWidgets.QPushButton(theme.icon("next-unlabeled"), "Suggest next to label")
        self.suggest_btn.setToolTip("Rank unlabeled images by member disagreement + predictive entropy "
                                    "(core.analysis.active) and open the first one for labelling")
        self.suggest_n = QtWidgets.QSpinBox()
        self.suggest_n.setRange(1, 10000)
        self.suggest_n.setValue(20)
        self.suggest_n.setPrefix("top ")
        self.export_btn = QtWidgets.QPushButton("Export CSV…")
        self.refresh_btn = QtWidgets.QToolButton()
        self.refresh_btn.setIcon(theme.icon("resample"))
        self.refresh_btn.setToolTip("Reload")

        bar = QtWidgets.QHBoxLayout()
        bar.addWidget(QtWidgets.QLabel("Run"))
        bar.addWidget(self.run_combo)
        bar.addWidget(self.refresh_btn)
        bar.addSpacing(10)
        bar.addWidget(self.search, 1)
        bar.addWidget(self.show_combo)
        bar.addWidget(QtWidgets.QLabel("Predicted"))
        bar.addWidget(self.pred_combo)
        bar.addWidget(self.count_label)
        actions = QtWidgets.QWidget()              # beside the tabs: the toolbar row stays narrow
        al = QtWidgets.QHBoxLayout(actions)
        al.setContentsMargins(0, 0, 0, 2)
        al.addWidget(self.suggest_n)
        al.addWidget(self.suggest_btn)
        al.addWidget(self.export_btn)

        self.model = PredictionsModel(self)
        self.proxy = PredictionsFilter(self)
        self.proxy.setSourceModel(self.model)
        self.table = FrozenColumnsTable(frozen=2)      # "#" and "Image" stay while the member columns scroll
        self.table.setModel(self.proxy)
        self.cell_delegate = CellDelegate(self.model, self)
        self.table.setItemDelegate(self.cell_delegate)
        self.table.frozen.setItemDelegate(self.cell_delegate)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.horizontalHeader().setHighlightSections(False)
        self.table.setWordWrap(False)
        self.charts = ConfusionRocView()
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(self.table, "Table")
        self.tabs.addTab(self.charts, "Confusion && ROC")
        self.tabs.setCornerWidget(actions, QtCore.Qt.Corner.TopRightCorner)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(8, 8, 8, 8)
        lay.addLayout(bar)
        lay.addWidget(self.tabs, 1)

        self.run_combo.currentIndexChanged.connect(lambda _i: self.load_run())
        self.refresh_btn.clicked.connect(self.refresh)
        self.search.textChanged.connect(lambda t: self._filter(text=t))
        self.show_combo.currentIndexChanged.connect(lambda _i: self._filter(show=self.show_combo.currentData()))
        self.pred_combo.currentIndexChanged.connect(lambda _i: self._filter(predicted=self.pred_combo.currentData() or ""))
        self.table.doubleClicked.connect(self._open)
        self.table.activated.connect(self._open)
        self.export_btn.clicked.connect(self.choose_export)
        self.suggest_btn.clicked.connect(self.suggest)
        project.storeReady.connect(self.refresh)
        project.closed.connect(self.refresh)
        project.itemChanged.connect(self._label_changed)
        self._redraw_charts = QtCore.QTimer(self, singleShot=True, interval=100)   # a burst of labels: one redraw
        self._redraw_charts.timeout.connect(self.charts.redraw)
        self._rows_stale = False     # a refresh while the page was hidden: the rows are read when it is shown
        self._fill = QtCore.QTimer(self, interval=STEP_PAUSE_MS)     # one batch of rows per event-loop turn
        self._fill.timeout.connect(self._show_batch)

    # -- data -----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        store = self.project.store
        cur = self.run_combo.currentData()
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        if store is not None:
            for r in reversed(store.list_runs()):
                if r.kind == "predict" and r.state == "finished":
                    self.run_combo.addItem(f"#{r.id} {r.name}", r.id)
        i = self.run_combo.findData(cur) if cur is not None else -1
        self.run_combo.setCurrentIndex(i if i >= 0 else 0)
        self.run_combo.blockSignals(False)
        if self.isVisible() or self.run() is None:
            self.load_run()
        else:                   # read when the page is next shown: reopening a 10 000-image project with the page
            self._rows_stale = True     # hidden filled its table beside the thumbnails (95-129 ms stalls)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().showEvent(event)
        if self._rows_stale:
            self.load_run()

    def run(self):
        rid = self.run_combo.currentData()
        store = self.project.store
        if rid is None or store is None:
            return None
        try:
            return store.get_run(int(rid))
        except KeyError:
            return None

    def load_run(self) -> None:
        """Read the chosen run's rows in a worker (thousands of JSON records: hundreds of ms measured by
        bench/gui.py on the UI thread), then show them."""
        self._rows_stale = False
        run = self.run()
        if run is None:
            self._show_rows(([], [], []))
            self.count_label.setText("no predictions yet: Train → Predict")
            return
        store, by_id = self.project.store, self.project.by_id
        self.count_label.setText("reading the predictions…")
        self._loader.submit(lambda: load_rows(store, run.id, by_id), self._show_rows,
                            lambda msg: self.count_label.setText(f"cannot read run #{run.id}: {msg}"), key="rows")

    def _show_rows(self, loaded) -> None:
        """Columns and filters at once; the rows follow a batch per event-loop turn (``_show_batch``)."""
        rows, classes, members = loaded
        self._fill.stop()
        self.model.set_data(rows, classes, members)
        self.charts.set_data(rows, classes, members)
        self.table.horizontalHeader().setSortIndicator(1, QtCore.Qt.SortOrder.AscendingOrder)  # rows come by name
        self.export_btn.setEnabled(False)
        self.suggest_btn.setEnabled(False)
        cur = self.pred_combo.currentData()
        self.pred_combo.blockSignals(True)
        self.pred_combo.clear()
        self.pred_combo.addItem("any", "")
        for c in self.model.classes:
            self.pred_combo.addItem(c, c)
        self.pred_combo.setCurrentIndex(max(0, self.pred_combo.findData(cur or "")))
        self.pred_combo.blockSignals(False)
        self.proxy.set_filter(predicted=self.pred_combo.currentData() or "")
        self._show_batch()
        if not self.model.filled:
            self._fill.start()

    def _show_batch(self) -> None:
        first = self.model.shown == 0
        more = self.model.show_more(FILL_BATCH)
        if first and self.model.shown:
            self._size_columns()
        self._count()
        if not more:
            self._fill.stop()
            self.export_btn.setEnabled(True)
            self.suggest_btn.setEnabled(True)
            self.rowsLoaded.emit()

    def _size_columns(self) -> None:
        """Widths from the header and the widest value a column can hold (a number "0.000", a class name, ✓):
        asking Qt to measure the cells called ``data()`` thousands of times on the UI thread."""
        h = self.table.horizontalHeader()
        fm = self.table.fontMetrics()
        widest = {"label": max(self.model.classes + ["—"], key=fm.horizontalAdvance), "predicted": "",
                  "rank": str(len(self.model.rows)), "correct": "✓"}
        widest["predicted"] = widest["label"]
        for c, (title, kind, _k) in enumerate(self.model.columns):
            h.setSectionResizeMode(c, QtWidgets.QHeaderView.ResizeMode.Interactive)
            if kind == "name":
                self.table.setColumnWidth(c, 220)
            else:
                cell = fm.horizontalAdvance(widest.get(kind, "0.000")) + 16
                self.table.setColumnWidth(c, max(cell, fm.horizontalAdvance(title) + 28))   # + the sort arrow

    def _filter(self, **kw) -> None:
        self.proxy.set_filter(**kw)
        self._count()

    def _count(self) -> None:
        if self.model.rows:
            filling = "" if self.model.filled else f" (reading: {self.model.shown} so far)"
            self.count_label.setText(f"{self.proxy.rowCount()} of {len(self.model.rows)}{filling}")

    def _label_changed(self, image_id: int) -> None:
        it = self.project.by_id.get(image_id)
        for r in self.model.rows:
            if r.image_id == image_id and it is not None:
                r.label = it.label
                self.model.row_changed(self.model.rows.index(r))
                self._redraw_charts.start()     # the confusion matrix and ROC count labelled images
                break

    # -- actions --------------------------------------------------------------------------------------
    def ensemble_file(self) -> str:
        run = self.run()
        return (run.ensemble_file or "") if run is not None else ""

    def _open(self, index: QtCore.QModelIndex) -> None:
        row = self.model.rows[self.proxy.mapToSource(index).row()]
        self.openImage.emit(row.image_id, self.ensemble_file())

    def choose_export(self) -> None:
        run = self.run()
        default = str((self.project.paths.folder if self.project.paths else Path.home())
                      / f"predictions-{run.id if run else 'none'}.csv")
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export predictions", default, "CSV (*.csv)")
        if path:
            n = export_csv(path, self.model, self.proxy)
            self.message.emit(f"{n} rows written to {path}", 6000)

    def suggest(self) -> list[int]:
        """Rank the unlabeled images, show them in order and emit the ids (best first)."""
        from core.analysis.active import rank_for_labeling

        rows = self.model.rows
        ranked = rank_for_labeling(
            ({"image_id": r.image_id, "entropy": r.entropy, "disagreement": r.disagreement} for r in rows),
            n_classes=max(2, len(self.model.classes)), n_members=max(1, len(self.model.members)),
            labelled=[r.image_id for r in rows if r.label is not None], limit=self.suggest_n.value())
        ids = [s.image_id for s in ranked]
        self.model.set_ranks({i: k + 1 for k, i in enumerate(ids)})
        self.show_combo.setCurrentIndex(self.show_combo.findData("suggested"))
        self.table.sortByColumn(0, QtCore.Qt.SortOrder.AscendingOrder)
        if not ids:
            self.message.emit("No unlabeled image with a prediction: nothing to suggest.", 5000)
        self.suggested.emit(ids)
        return ids
