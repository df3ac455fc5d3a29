"""Duplicates view (Edit > Near-duplicates…): the project's near-duplicate groups, each shown side by side
with its labels; the person keeps or excludes each image (stored in the project; nothing is deleted from
disk, and an excluded image takes no part in fine-tuning or studies). "Find near-duplicates" hashes the
project's images in a worker (core.data.duplicates) and replaces the stored groups."""

from __future__ import annotations

from pathlib import Path

from PySide6 import QtCore, QtGui, QtWidgets

from desktop.bridge.jobs_bridge import AsyncCaller
from desktop.widgets.elided_label import ElidedLabel

TILE_PX = 180
TILES_PER_ROW = 3        # a group of four or more wraps to the next row: in one row the fourth image (often
                         # the one whose label disagrees) was out of sight behind a sideways scroll bar


def find_groups(root: Path, rels: list[str], labels: dict[str, str | None]):
    """Worker thread: the near-duplicate report of the project's images."""
    from core.data.duplicates import scan_near_duplicates

    return scan_near_duplicates(root, rels, labels)


class DuplicatesDialog(QtWidgets.QDialog):
    def __init__(self, project, thumbs, parent=None):
        super().__init__(parent)
        self.project, self.thumbs = project, thumbs
        self.caller = AsyncCaller(1, self)
        self.setWindowTitle("Near-duplicates")
        self.resize(980, 520)
        self.groups = QtWidgets.QListWidget()
        self.groups.setMaximumWidth(320)        # "Group 12: 4 images — labels disagree" in full
        self.groups.currentRowChanged.connect(self.show_group)
        self.tiles = QtWidgets.QWidget()
        self.tiles_layout = QtWidgets.QGridLayout(self.tiles)
        self.tiles_layout.setAlignment(QtCore.Qt.AlignmentFlag.AlignLeft | QtCore.Qt.AlignmentFlag.AlignTop)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.tiles)
        self.status = QtWidgets.QLabel()
        self.status.setWordWrap(True)
        self.find_button = QtWidgets.QPushButton("Find near-duplicates")
        self.find_button.clicked.connect(self.find)
        split = QtWidgets.QSplitter()
        split.addWidget(self.groups)
        split.addWidget(scroll)
        split.setStretchFactor(1, 1)
        bottom = QtWidgets.QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.find_button)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(split, 1)
        lay.addLayout(bottom)
        self.choice_boxes: dict[int, QtWidgets.QComboBox] = {}
        self.pixmap_labels: dict[str, QtWidgets.QLabel] = {}
        self.thumbs.thumbnailReady.connect(self._thumbnail_ready)
        self.refresh()

    # -- the stored groups ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        store = self.project.store
        self.stored = store.duplicate_groups() if store is not None else []
        self.choices = store.duplicate_choices() if store is not None else {}
        by_id = self.project.by_id
        self.groups.clear()
        for i, ids in enumerate(self.stored):
            labels = {by_id[j].label for j in ids if j in by_id and by_id[j].label}
            conflict = len(labels) > 1
            it = QtWidgets.QListWidgetItem(f"Group {i + 1}: {len(ids)} images"
                                           + (" — labels disagree" if conflict else ""))
            if conflict:
                it.setForeground(QtGui.QBrush(QtGui.QColor("#c0392b")))
            self.groups.addItem(it)
        n_excl = sum(v == "exclude" for v in self.choices.values())
        self.status.setText(f"{len(self.stored)} near-duplicate groups; {n_excl} images excluded from training."
                            if self.stored else "No near-duplicate groups stored: Find near-duplicates.")
        if self.stored:
            self.groups.setCurrentRow(0)
        else:
            self.show_group(-1)

    def show_group(self, row: int) -> None:
        while self.tiles_layout.count():
            w = self.tiles_layout.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self.choice_boxes, self.pixmap_labels = {}, {}
        if not 0 <= row < len(self.stored):
            return
        members = [self.project.by_id.get(i) for i in self.stored[row]]
        for k, it in enumerate(sorted((it for it in members if it is not None), key=lambda it: it.sort_key)):
            image_id = it.image_id
            tile = QtWidgets.QFrame()
            tile.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
            v = QtWidgets.QVBoxLayout(tile)
            pic = QtWidgets.QLabel()
            pic.setFixedSize(TILE_PX, TILE_PX)
            pic.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
            self.pixmap_labels[it.path] = pic
            self._set_pixmap(it.path)
            v.addWidget(pic)
            name = ElidedLabel(it.rel_path, QtCore.Qt.TextElideMode.ElideMiddle)   # a tile is as wide as its image
            name.setMaximumWidth(TILE_PX)
            v.addWidget(name)
            v.addWidget(QtWidgets.QLabel(f"label: {it.label or 'unlabelled'}"))
            box = QtWidgets.QComboBox()
            for text, value in (("no choice (used)", None), ("keep", "keep"), ("exclude from training", "exclude")):
                box.addItem(text, value)
            box.setCurrentIndex(max(0, box.findData(self.choices.get(image_id))))
            box.currentIndexChanged.connect(lambda _i, iid=image_id, b=box: self.set_choice(iid, b.currentData()))
            self.choice_boxes[image_id] = box
            v.addWidget(box)
            self.tiles_layout.addWidget(tile, k // TILES_PER_ROW, k % TILES_PER_ROW)

    def _set_pixmap(self, path: str) -> None:
        pm = self.thumbs.get(path)
        if pm is not None and path in self.pixmap_labels:
            self.pixmap_labels[path].setPixmap(pm.scaled(TILE_PX, TILE_PX, QtCore.Qt.AspectRatioMode.KeepAspectRatio))

    def _thumbnail_ready(self, path: str) -> None:
        if path in self.pixmap_labels:
            self._set_pixmap(path)

    def set_choice(self, image_id: int, choice: str | None) -> None:
        """Keep / exclude (None: no choice), stored at once; the file stays where it is."""
        self.project.store.set_duplicate_choice(image_id, choice)
        if choice is None:
            self.choices.pop(image_id, None)
        else:
            self.choices[image_id] = choice
        n_excl = sum(v == "exclude" for v in self.choices.values())
        self.status.setText(f"{len(self.stored)} near-duplicate groups; {n_excl} images excluded from training.")

    # -- a new search --------------------------------------------------------------------------------------
    def find(self) -> None:
        items = [it for it in self.project.items if it.image_id is not None]
        if not items:
            return
        first = items[0]
        root = Path(first.path).parents[len(Path(first.rel_path).parts) - 1]
        rels = [it.rel_path for it in items]
        labels = {it.rel_path: it.label for it in items}
        self.find_button.setEnabled(False)
        self.status.setText(f"Comparing {len(items)} images…")
        self.caller.submit(lambda: find_groups(root, rels, labels), self._found, self._failed)

    def _found(self, report) -> None:
        ids = {it.rel_path: it.image_id for it in self.project.items if it.image_id is not None}
        groups = [[ids[m] for m in g.members if m in ids] for g in report.groups]
        self.project.store.save_duplicate_groups([g for g in groups if len(g) > 1],
                                                 {"max_hamming": report.max_hamming, "min_ssim": report.min_ssim})
        self.find_button.setEnabled(True)
        self.refresh()
        if report.errors:
            self.status.setText(self.status.text() + f" {len(report.errors)} images could not be read, e.g. "
                                f"{report.errors[0][0]}: {report.errors[0][1]}")

    def _failed(self, message: str) -> None:
        self.find_button.setEnabled(True)
        self.status.setText(f"Finding near-duplicates failed: {message}")
