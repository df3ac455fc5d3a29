"""Library: a virtualised thumbnail grid over the project's rows, with filters, sort and search.

Qt model/view: :class:`LibraryModel` exposes the filtered, sorted rows (a plain list of indices is
recomputed in one pass, cheap for 10 000+ rows, instead of a per-row Python filter callback); the
``QListView`` in wrapping list mode with uniform item sizes lays out and paints only what is visible, and
:class:`ThumbDelegate` asks :class:`desktop.bridge.thumbs.ThumbnailService` for pixmaps while painting.
"""

from __future__ import annotations


from collections import OrderedDict
from dataclasses import dataclass, replace

from PySide6 import QtCore, QtGui, QtWidgets

from desktop import theme
from desktop.bridge.project import ProjectModel
from desktop.bridge.rows import Item, natural_key
from desktop.bridge.thumbs import ThumbnailService

ItemRole = QtCore.Qt.ItemDataRole.UserRole + 1

SORTS = [("name", "File name"), ("label", "Label"), ("uncertainty", "Uncertainty (high first)"),
         ("case", "Case"), ("added", "Order added")]


@dataclass(frozen=True)
class Filter:
    label: str = "all"             # "all" | "unlabeled" | "class:<name>"
    mask: str = "any"              # "any" | "with" | "without"
    prediction: str = "any"        # "any" | "with" | "without" | "disagree"
    min_uncertainty: float = 0.0   # rows with an uncertainty below this are hidden (0 = off)
    search: str = ""
    sort: str = "name"

    def is_default(self) -> bool:
        return (self.label == "all" and self.mask == "any" and self.prediction == "any"
                and self.min_uncertainty <= 0 and not self.search)

    def accepts(self, it: Item) -> bool:
        if self.label == "unlabeled":
            if it.label is not None:
                return False
        elif self.label.startswith("class:"):
            if it.label != self.label[6:]:
                return False
        if self.mask == "with" and it.n_masks == 0:
            return False
        if self.mask == "without" and it.n_masks > 0:
            return False
        if self.prediction == "with" and it.prediction is None:
            return False
        if self.prediction == "without" and it.prediction is not None:
            return False
        if self.prediction == "disagree" and (it.prediction is None or it.prediction == it.label):
            return False
        if self.min_uncertainty > 0 and (it.uncertainty is None or it.uncertainty < self.min_uncertainty):
            return False
        if self.search and self.search not in it.sort_name:
            return False
        return True


def _sort_key(kind: str):
    if kind == "label":
        return lambda it: (it.label is None, natural_key(it.label or ""), it.sort_key)
    if kind == "uncertainty":
        return lambda it: (it.uncertainty is None, -(it.uncertainty or 0.0), it.sort_key)
    if kind == "case":
        return lambda it: (it.case_id is None, natural_key(it.case_id or ""), it.sort_key)
    if kind == "added":
        return lambda it: it.order
    return lambda it: it.sort_key


class LibraryModel(QtCore.QAbstractListModel):
    """The visible rows of the project after filter, search and sort."""

    filterChanged = QtCore.Signal()

    def __init__(self, project: ProjectModel, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.project = project
        self.filter = Filter()
        self.rows: list[Item] = []
        self._row_of_path: dict[str, int] | None = {}
        project.itemsReset.connect(self.refresh)
        project.itemChanged.connect(self._on_item_changed)
        project.classesChanged.connect(self._on_classes_changed)

    # -- Qt model API -----------------------------------------------------------------------------------
    def rowCount(self, parent=QtCore.QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def data(self, index: QtCore.QModelIndex, role: int = QtCore.Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self.rows):
            return None
        it = self.rows[index.row()]
        if role == ItemRole:
            return it
        if role == QtCore.Qt.ItemDataRole.DisplayRole:
            return it.name
        if role == QtCore.Qt.ItemDataRole.ToolTipRole:
            lines = [it.rel_path, f"label: {it.label or 'unlabeled'}"]
            if it.case_id:
                lines.append(f"case: {it.case_id}" + (f" · {it.modality}" if it.modality else ""))
            if it.width:
                lines.append(f"{it.width} × {it.height} px")
            if it.n_masks:
                lines.append("lesion mask")
            if it.prediction is not None:
                unc = f" (uncertainty {it.uncertainty:.2f})" if it.uncertainty is not None else ""
                lines.append(f"prediction: {it.prediction}{unc}")
            return "\n".join(lines)
        return None

    # -- filtering --------------------------------------------------------------------------------------
    def set_filter(self, **changes) -> None:
        new = replace(self.filter, **changes)
        if new != self.filter:
            self.filter = new
            self.refresh()

    def refresh(self) -> None:
        f = self.filter
        items = self.project.items
        rows = list(items) if f.is_default() else [it for it in items if f.accepts(it)]
        rows.sort(key=_sort_key(f.sort))
        if rows == self.rows and rows:    # same row objects, same order: repaint, keep selection / scroll
            self.dataChanged.emit(self.index(0), self.index(len(rows) - 1))
            self.filterChanged.emit()
            return
        self.beginResetModel()
        self.rows = rows
        self._row_of_path = None          # built on first use
        self.endResetModel()
        self.filterChanged.emit()

    def row_of_path(self, path: str) -> int:
        if self._row_of_path is None:
            self._row_of_path = {it.path: n for n, it in enumerate(self.rows)}
        return self._row_of_path.get(path, -1)

    def row_of(self, item: Item | None) -> int:
        if item is None:
            return -1
        row = self.row_of_path(item.path)
        return row if row >= 0 and self.rows[row] is item else -1

    def item_at(self, row: int) -> Item | None:
        return self.rows[row] if 0 <= row < len(self.rows) else None

    def _on_item_changed(self, image_id: int) -> None:
        it = self.project.by_id.get(image_id)
        row = self.row_of(it)
        if row >= 0:
            idx = self.index(row)
            self.dataChanged.emit(idx, idx)
        # a labelled row may leave the "unlabeled" view; the view keeps it until the filter is re-applied
        # on purpose (rows jumping under the cursor while labelling is disorienting)

    def _on_classes_changed(self) -> None:
        if self.filter.label.startswith("class:") and self.filter.label[6:] not in self.project.classes:
            self.set_filter(label="all")


def caption_parts(it: Item, fm: QtGui.QFontMetrics, width: int) -> tuple[str, str]:
    """The tile's second line as (left, right) texts within ``width`` px: the uncertainty is right-aligned
    and always whole, only the class name is elided ("pred malignant · u 1...." hid the number)."""
    if it.prediction is not None:
        right = f"u {it.uncertainty:.2f}" if it.uncertainty is not None else ""
        room = width - (fm.horizontalAdvance(right) + fm.horizontalAdvance("  ") if right else 0)
        return fm.elidedText(f"pred {it.prediction}", QtCore.Qt.TextElideMode.ElideRight, max(0, room)), right
    if it.case_id:
        text = it.case_id + (f" · {it.modality}" if it.modality else "")
    else:
        text = "scanning…" if it.image_id is None else ""
    return fm.elidedText(text, QtCore.Qt.TextElideMode.ElideRight, width), ""


class ThumbDelegate(QtWidgets.QStyledItemDelegate):
    """One tile: thumbnail, file name, label chip, mask / prediction badges."""

    MIN_W, TEXT_H, PAD = 150, 44, 6
    MAX_TILES = 300          # rendered tiles kept (~150 KB each): a few screens' worth

    def __init__(self, project: ProjectModel, thumbs: ThumbnailService, parent=None):
        super().__init__(parent)
        self.project = project
        self.thumbs = thumbs
        self._name_font = QtGui.QFont()
        self._name_font.setPointSizeF(9)
        self._chip_font = QtGui.QFont()
        self._chip_font.setPointSizeF(8)
        self._chip_font.setBold(True)
        self._name_fm = QtGui.QFontMetrics(self._name_font)
        self._chip_fm = QtGui.QFontMetrics(self._chip_font)
        self._sel_pen = QtGui.QPen(QtGui.QColor(theme.ACCENT), 2)
        self._hover_pen = QtGui.QPen(QtGui.QColor(theme.BORDER), 1)
        self._tiles: OrderedDict[tuple, QtGui.QPixmap] = OrderedDict()
        self.tile_w = 168

    def tile_size(self) -> QtCore.QSize:
        return QtCore.QSize(self.tile_w, self.tile_w - self.PAD - 12 + self.TEXT_H + 12)

    def sizeHint(self, option, index) -> QtCore.QSize:
        return self.tile_size()

    def paint(self, p: QtGui.QPainter, option: QtWidgets.QStyleOptionViewItem, index: QtCore.QModelIndex):
        it: Item = index.data(ItemRole)
        if it is None:
            return
        pm = self.thumbs.get(it.path)
        state = pm.cacheKey() if pm is not None else (-1 if self.thumbs.error_for(it.path) else 0)
        key = (it.path, self.tile_w, it.label, self.project.class_index(it.label), it.n_masks, it.prediction,
               it.uncertainty, it.case_id, it.image_id is None, state)
        tile = self._tiles.get(key)
        if tile is None:
            tile = self._render_tile(it, pm)
            self._tiles[key] = tile
            while len(self._tiles) > self.MAX_TILES:
                self._tiles.popitem(last=False)
        else:
            self._tiles.move_to_end(key)
        p.drawPixmap(option.rect.topLeft(), tile)
        st = option.state
        if st & QtWidgets.QStyle.StateFlag.State_Selected or st & QtWidgets.QStyle.StateFlag.State_MouseOver:
            selected = bool(st & QtWidgets.QStyle.StateFlag.State_Selected)
            p.save()
            p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
            p.setPen(self._sel_pen if selected else self._hover_pen)
            p.setBrush(QtCore.Qt.BrushStyle.NoBrush)
            h = self.PAD // 2
            p.drawRoundedRect(QtCore.QRectF(option.rect.adjusted(h, h, -h, -h)), 6, 6)
            p.restore()

    def _render_tile(self, it: Item, pm: QtGui.QPixmap | None) -> QtGui.QPixmap:
        """The tile without selection / hover frame, drawn once per state and cached."""
        size = self.tile_size()
        tile = QtGui.QPixmap(size)
        tile.fill(QtGui.QColor(theme.BG))
        p = QtGui.QPainter(tile)
        p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
        h = self.PAD // 2
        r = QtCore.QRect(0, 0, size.width(), size.height()).adjusted(h, h, -h, -h)
        p.setPen(QtGui.QPen(QtGui.QColor(theme.PANEL), 1))
        p.setBrush(QtGui.QColor(theme.PANEL))
        p.drawRoundedRect(QtCore.QRectF(r), 6, 6)

        img_rect = QtCore.QRect(r.left() + 6, r.top() + 6, r.width() - 12, r.width() - 12)
        p.setPen(QtCore.Qt.PenStyle.NoPen)
        p.setBrush(QtGui.QColor("#111418"))
        p.drawRect(img_rect)
        if pm is not None and not pm.isNull():
            s = pm.size().scaled(img_rect.size(), QtCore.Qt.AspectRatioMode.KeepAspectRatio)
            target = QtCore.QRect(0, 0, s.width(), s.height())
            target.moveCenter(img_rect.center())
            p.setRenderHint(QtGui.QPainter.RenderHint.SmoothPixmapTransform)
            p.drawPixmap(target, pm)
        else:
            err = self.thumbs.error_for(it.path)
            p.setPen(QtGui.QColor(theme.ERROR if err else "#4a525e"))
            p.setFont(self._name_font)
            p.drawText(img_rect, QtCore.Qt.AlignmentFlag.AlignCenter, "unreadable" if err else "…")

        # label chip (top-left) and mask badge (top-right)
        if it.label is not None:
            color = theme.class_color(self.project.class_index(it.label))
            p.setFont(self._chip_font)
            fm = self._chip_fm
            text = fm.elidedText(it.label, QtCore.Qt.TextElideMode.ElideRight, img_rect.width() - 40)
            chip = QtCore.QRectF(img_rect.left() + 5, img_rect.top() + 5, fm.horizontalAdvance(text) + 14,
                                 fm.height() + 4)
            p.setPen(QtCore.Qt.PenStyle.NoPen)
            p.setBrush(color)
            p.drawRoundedRect(chip, chip.height() / 2, chip.height() / 2)
            p.setPen(QtGui.QColor("#10151b"))
            p.drawText(chip, QtCore.Qt.AlignmentFlag.AlignCenter, text)
        if it.n_masks:
            dot = QtCore.QRectF(img_rect.right() - 17, img_rect.top() + 6, 12, 12)
            p.setPen(QtGui.QPen(QtGui.QColor("#ffffff"), 1.2))
            p.setBrush(QtGui.QColor(*theme.LESION_COLOR))
            p.drawEllipse(dot)

        # file name and a second line (prediction / case)
        p.setFont(self._name_font)
        fm = self._name_fm
        text_rect = QtCore.QRect(r.left() + 8, img_rect.bottom() + 6, r.width() - 16, fm.height())
        p.setPen(QtGui.QColor(theme.TEXT))
        p.drawText(text_rect, QtCore.Qt.AlignmentFlag.AlignLeft | QtCore.Qt.AlignmentFlag.AlignVCenter,
                   fm.elidedText(it.name, QtCore.Qt.TextElideMode.ElideMiddle, text_rect.width()))
        second, right = caption_parts(it, fm, text_rect.width())
        if second or right:
            text_rect.translate(0, fm.height() + 1)
            p.setPen(QtGui.QColor(theme.TEXT_DIM))
            p.drawText(text_rect, QtCore.Qt.AlignmentFlag.AlignLeft | QtCore.Qt.AlignmentFlag.AlignVCenter, second)
            p.drawText(text_rect, QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter, right)
        p.end()
        return tile


class ThumbGrid(QtWidgets.QListView):
    """Wrapping list view: virtualised, uniform tiles, batched layout."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setViewMode(QtWidgets.QListView.ViewMode.ListMode)
        self.setFlow(QtWidgets.QListView.Flow.LeftToRight)
        self.setWrapping(True)
        self.setResizeMode(QtWidgets.QListView.ResizeMode.Adjust)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QtWidgets.QListView.LayoutMode.Batched)
        self.setBatchSize(2000)
        self.setMovement(QtWidgets.QListView.Movement.Static)
        self.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.setVerticalScrollMode(QtWidgets.QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.verticalScrollBar().setSingleStep(24)
        self.setMouseTracking(True)
        self.setSpacing(0)
        # a focus ring: Tab from the search field lands here, and it must show
        self.setStyleSheet(f"QListView {{ background: {theme.BG}; padding: 8px; border: 1px solid {theme.BG}; }}"
                           f"QListView:focus {{ border: 1px solid {theme.ACCENT}; }}")

    def resizeEvent(self, ev) -> None:
        super().resizeEvent(ev)
        self.fit_tiles()

    def fit_tiles(self) -> None:
        """Stretch the tiles so whole columns fill the width (no ragged gap on the right)."""
        d = self.itemDelegate()
        if not isinstance(d, ThumbDelegate):
            return
        avail = self.viewport().width() - 2
        n = max(1, avail // d.MIN_W)
        w = max(d.MIN_W, min(avail // n, 260))
        if w != d.tile_w:
            d.tile_w = w
            self.scheduleDelayedItemsLayout()


class LibraryPage(QtWidgets.QWidget):
    """Search / sort bar over the grid. Emits ``openItem`` on double-click or Enter."""

    openItem = QtCore.Signal(object)        # Item
    currentChanged = QtCore.Signal(object)  # Item | None

    def __init__(self, project: ProjectModel, thumbs: ThumbnailService, parent=None):
        super().__init__(parent)
        self.project = project
        self.thumbs = thumbs
        self.model = LibraryModel(project, self)

        self.search = QtWidgets.QLineEdit()
        self.search.setPlaceholderText("Search file names…")
        self.search.setClearButtonEnabled(True)
        self.search.addAction(theme.icon("search"), QtWidgets.QLineEdit.ActionPosition.LeadingPosition)
        self.search.setMinimumWidth(260)
        self._search_timer = QtCore.QTimer(self, singleShot=True, interval=150)
        self._search_timer.timeout.connect(lambda: self.model.set_filter(search=self.search.text().strip().lower()))
        self.search.textChanged.connect(lambda _t: self._search_timer.start())

        self.sort = QtWidgets.QComboBox()
        for key, text in SORTS:
            self.sort.addItem(text, key)
        self.sort.currentIndexChanged.connect(lambda _i: self.model.set_filter(sort=self.sort.currentData()))
        self.count_label = QtWidgets.QLabel()
        self.count_label.setObjectName("dim")

        bar = QtWidgets.QHBoxLayout()
        bar.setContentsMargins(12, 10, 12, 6)
        bar.setSpacing(8)
        bar.addWidget(self.search, 2)
        sort_label = QtWidgets.QLabel("Sort")
        sort_label.setObjectName("dim")
        bar.addSpacing(8)
        bar.addWidget(sort_label)
        bar.addWidget(self.sort)
        bar.addStretch(1)
        bar.addWidget(self.count_label)

        self.grid = ThumbGrid()
        self.grid.setModel(self.model)
        self.delegate = ThumbDelegate(project, thumbs, self.grid)
        self.grid.setItemDelegate(self.delegate)
        self.grid.activated.connect(self._activated)
        self.grid.doubleClicked.connect(self._activated)
        self.grid.selectionModel().currentChanged.connect(
            lambda cur, _prev: self.currentChanged.emit(self.model.item_at(cur.row())))
        self._arrived: set[str] = set()
        self._repaint = QtCore.QTimer(self, singleShot=True, interval=16)
        self._repaint.timeout.connect(self._repaint_arrived)
        thumbs.thumbnailReady.connect(self._thumb_arrived)

        self.empty = QtWidgets.QLabel()
        self.empty.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.empty.setObjectName("subtitle")
        self.empty.setWordWrap(True)
        self.stack = QtWidgets.QStackedLayout()
        self.stack.addWidget(self.grid)
        self.stack.addWidget(self.empty)

        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addLayout(bar)
        lay.addLayout(self.stack, 1)
        self.model.filterChanged.connect(self._update_count)
        self.model.modelReset.connect(self._update_count)
        project.opened.connect(lambda _p: self.grid.scrollToTop())
        QtWidgets.QWidget.setTabOrder(self.search, self.grid)     # one Tab from the search to the images
        QtWidgets.QWidget.setTabOrder(self.grid, self.sort)
        self.search.installEventFilter(self)

    def eventFilter(self, obj, ev) -> bool:
        """Enter or Down in the search field goes to the grid, on its current (else first) image."""
        if obj is self.search and ev.type() == QtCore.QEvent.Type.KeyPress and ev.key() in (
                QtCore.Qt.Key.Key_Down, QtCore.Qt.Key.Key_Return, QtCore.Qt.Key.Key_Enter):
            if self._search_timer.isActive():      # the filter of what was just typed first
                self._search_timer.stop()
                self.model.set_filter(search=self.search.text().strip().lower())
            self.focus_grid()
            return True
        return super().eventFilter(obj, ev)

    def focus_grid(self) -> None:
        if not self.grid.currentIndex().isValid() and self.model.rows:
            self.grid.setCurrentIndex(self.model.index(0))
        self.grid.setFocus(QtCore.Qt.FocusReason.TabFocusReason)

    def _thumb_arrived(self, path: str) -> None:
        self._arrived.add(path)
        if not self._repaint.isActive():
            self._repaint.start()

    def _repaint_arrived(self) -> None:
        """Repaint just the tiles whose thumbnails came in (one batch per frame)."""
        arrived, self._arrived = self._arrived, set()
        vp = self.grid.viewport().rect()
        region = QtGui.QRegion()
        for path in arrived:
            row = self.model.row_of_path(path)
            if row >= 0:
                rect = self.grid.visualRect(self.model.index(row))
                if rect.intersects(vp):
                    region += rect
        if not region.isEmpty():
            self.grid.viewport().update(region)

    def _activated(self, index: QtCore.QModelIndex) -> None:
        it = self.model.item_at(index.row())
        if it is not None:
            self.openItem.emit(it)

    def _update_count(self) -> None:
        shown, total = len(self.model.rows), len(self.project.items)
        self.count_label.setText(f"{shown:,} of {total:,} images" if shown != total else f"{total:,} images")
        if total == 0:
            runner = self.project.scan_runner
            self.empty.setText("Looking for images…" if runner is not None and runner.running
                               else "No images found in this folder.\nSupported: PNG, JPEG, TIFF, BMP, DICOM.")
            self.stack.setCurrentWidget(self.empty)
        elif shown == 0:
            self.empty.setText("No image matches the current filter.")
            self.stack.setCurrentWidget(self.empty)
        else:
            self.stack.setCurrentWidget(self.grid)

    def select_item(self, item: Item | None) -> None:
        row = self.model.row_of(item)
        if row >= 0:
            idx = self.model.index(row)
            self.grid.setCurrentIndex(idx)
            self.grid.scrollTo(idx, QtWidgets.QAbstractItemView.ScrollHint.EnsureVisible)

    def current_item(self) -> Item | None:
        return self.model.item_at(self.grid.currentIndex().row())


def whole_percent(part: int, whole: int) -> int:
    """Rounded down: "778 of 779 labelled" is 99 %, never 100 % while one image is left."""
    return 100 * part // whole if whole else 0


class ProjectPanel(QtWidgets.QWidget):
    """Left side panel: classes with counts (a label filter), other filters, add / rename classes."""

    def __init__(self, project: ProjectModel, model: LibraryModel, parent=None):
        super().__init__(parent)
        self.project = project
        self.model = model
        self.setMinimumWidth(250)

        self.tree = QtWidgets.QTreeWidget()
        self.tree.setColumnCount(2)
        self.tree.setHeaderHidden(True)
        self.tree.setRootIsDecorated(False)
        self.tree.setIndentation(0)
        self.tree.setUniformRowHeights(True)
        self.tree.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        hdr = self.tree.header()
        hdr.setStretchLastSection(False)
        hdr.setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.Stretch)
        hdr.setSectionResizeMode(1, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        self.tree.setStyleSheet(
            f"QTreeWidget {{ background: transparent; }} QTreeWidget::item {{ padding: 5px 2px; }}"
            f"QTreeWidget::item:selected {{ background: #33475e; }}"
            f"QTreeWidget::item:hover {{ background: {theme.PANEL_ALT}; }}")
        self.tree.itemSelectionChanged.connect(self._label_filter_changed)

        self.add_btn = QtWidgets.QToolButton()
        self.add_btn.setIcon(theme.icon("add"))
        self.add_btn.setToolTip("Add a class")
        self.add_btn.clicked.connect(self.add_class)
        self.rename_btn = QtWidgets.QToolButton()
        self.rename_btn.setIcon(theme.icon("rename"))
        self.rename_btn.setToolTip("Rename the selected class")
        self.rename_btn.clicked.connect(self.rename_class)

        head = QtWidgets.QHBoxLayout()
        title = QtWidgets.QLabel("Classes")
        title.setObjectName("heading")
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.add_btn)
        head.addWidget(self.rename_btn)

        self.mask_combo = QtWidgets.QComboBox()
        self.pred_combo = QtWidgets.QComboBox()
        self.unc_spin = QtWidgets.QDoubleSpinBox()
        self.unc_spin.setRange(0.0, 10.0)
        self.unc_spin.setSingleStep(0.05)
        self.unc_spin.setDecimals(2)
        self.unc_spin.setSpecialValueText("off")
        self.unc_spin.setToolTip("Show only images whose prediction uncertainty is at least this value")
        self.mask_combo.currentIndexChanged.connect(
            lambda _i: self.model.set_filter(mask=self.mask_combo.currentData() or "any"))
        self.pred_combo.currentIndexChanged.connect(
            lambda _i: self.model.set_filter(prediction=self.pred_combo.currentData() or "any"))
        self.unc_spin.valueChanged.connect(lambda v: self.model.set_filter(min_uncertainty=float(v)))

        form = QtWidgets.QFormLayout()
        form.setLabelAlignment(QtCore.Qt.AlignmentFlag.AlignLeft)
        form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setHorizontalSpacing(10)
        form.setVerticalSpacing(8)
        form.addRow("Lesion mask", self.mask_combo)
        form.addRow("Prediction", self.pred_combo)
        form.addRow("Uncertainty ≥", self.unc_spin)
        filt_title = QtWidgets.QLabel("Filters")
        filt_title.setObjectName("heading")

        self.summary = QtWidgets.QLabel()
        self.summary.setObjectName("dim")
        self.summary.setWordWrap(True)

        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(12, 10, 12, 12)
        lay.setSpacing(8)
        lay.addLayout(head)
        lay.addWidget(self.tree)
        lay.addSpacing(6)
        lay.addWidget(filt_title)
        lay.addLayout(form)
        lay.addSpacing(6)
        lay.addWidget(theme.hline())
        lay.addWidget(self.summary)
        lay.addStretch(1)

        project.itemsReset.connect(self._schedule)        # after the grid has painted
        project.itemChanged.connect(lambda _id: self._schedule())
        project.classesChanged.connect(self.refresh)
        self._timer = QtCore.QTimer(self, singleShot=True, interval=30)
        self._timer.timeout.connect(self.refresh)
        self._updating = False
        self.refresh()

    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    # -- counts -----------------------------------------------------------------------------------------
    def counts(self) -> dict:
        return self.project.counts()

    def refresh(self) -> None:
        c = self.project.counts()
        self._updating = True
        try:
            current = self.model.filter.label
            self.tree.clear()
            rows = [("all", "All images", "", c["all"], None), ("unlabeled", "Unlabeled", "0", c["unlabeled"], None)]
            for n, name in enumerate(self.project.classes):
                rows.append((f"class:{name}", name, str(n + 1) if n < 9 else "", c["classes"].get(name, 0),
                             theme.class_color(n)))
            for key, text, shortcut, count, color in rows:
                item = QtWidgets.QTreeWidgetItem([text, f"{count:,}"])
                item.setData(0, QtCore.Qt.ItemDataRole.UserRole, key)
                item.setTextAlignment(1, QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
                item.setForeground(1, QtGui.QColor(theme.TEXT_DIM))
                if shortcut:
                    tip = (f"Key {shortcut} assigns “{text}”" if key.startswith("class:")
                           else f"Key {shortcut} removes the label")
                    item.setToolTip(0, tip)
                if color is not None:
                    item.setIcon(0, theme.swatch_icon(color))
                elif key == "all":
                    item.setIcon(0, theme.icon("library"))
                else:
                    item.setIcon(0, theme.swatch_icon(theme.TEXT_DIM))
                self.tree.addTopLevelItem(item)
                if key == current:
                    item.setSelected(True)
            if not self.tree.selectedItems() and self.tree.topLevelItemCount():
                self.tree.topLevelItem(0).setSelected(True)
            rows_h = sum(self.tree.sizeHintForRow(i) for i in range(self.tree.topLevelItemCount()))
            self.tree.setFixedHeight(max(60, min(rows_h + 6, 420)))
            self._fill_combo(self.mask_combo, [("any", "Any"), ("with", f"With mask ({c['masked']:,})"),
                                               ("without", f"Without mask ({c['all'] - c['masked']:,})")])
            has_pred = c["predicted"] > 0
            self._fill_combo(self.pred_combo, [("any", "Any"), ("with", f"With prediction ({c['predicted']:,})"),
                                               ("without", "Without prediction"),
                                               ("disagree", "Prediction ≠ label")])
            self.pred_combo.setEnabled(has_pred)
            self.unc_spin.setEnabled(has_pred)
            tip = "" if has_pred else "No predictions yet: fine-tune and run a model first"
            self.pred_combo.setToolTip(tip)
            self.unc_spin.setToolTip(tip or "Show only images whose prediction uncertainty is at least this value")
            labeled = c["all"] - c["unlabeled"]
            self.summary.setText(f"{labeled:,} of {c['all']:,} labelled ({whole_percent(labeled, c['all'])} %) · "
                                 f"{c['masked']:,} with lesion mask")
        finally:
            self._updating = False

    @staticmethod
    def _fill_combo(combo: QtWidgets.QComboBox, entries) -> None:
        current = combo.currentData() or "any"
        combo.blockSignals(True)
        combo.clear()
        for key, text in entries:
            combo.addItem(text, key)
        i = combo.findData(current)
        combo.setCurrentIndex(max(0, i))
        combo.blockSignals(False)

    def _label_filter_changed(self) -> None:
        if self._updating:
            return
        sel = self.tree.selectedItems()
        key = sel[0].data(0, QtCore.Qt.ItemDataRole.UserRole) if sel else "all"
        self.model.set_filter(label=key)

    def select_filter(self, key: str) -> None:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(0, QtCore.Qt.ItemDataRole.UserRole) == key:
                self.tree.setCurrentItem(item)
                item.setSelected(True)
                return

    def count_for(self, key: str) -> int:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(0, QtCore.Qt.ItemDataRole.UserRole) == key:
                return int(item.text(1).replace(",", ""))
        raise KeyError(key)

    def selected_class(self) -> str | None:
        sel = self.tree.selectedItems()
        key = sel[0].data(0, QtCore.Qt.ItemDataRole.UserRole) if sel else ""
        return key[6:] if key.startswith("class:") else None

    # -- class edits ------------------------------------------------------------------------------------
    def add_class(self) -> None:
        if not self.project.ready:
            return
        name, ok = QtWidgets.QInputDialog.getText(self, "Add class", "Name of the new class:")
        if ok and name.strip():
            if not self.project.add_class(name):
                QtWidgets.QMessageBox.information(self, "Add class", f"The class “{name.strip()}” already exists.")

    def rename_class(self) -> None:
        old = self.selected_class()
        if old is None:
            QtWidgets.QMessageBox.information(self, "Rename class", "Select a class in the list first.")
            return
        new, ok = QtWidgets.QInputDialog.getText(self, "Rename class", f"New name for “{old}”:", text=old)
        if ok and new.strip() and new.strip() != old:
            try:
                self.project.rename_class(old, new)
            except (ValueError, KeyError) as exc:
                QtWidgets.QMessageBox.warning(self, "Rename class", str(exc))
