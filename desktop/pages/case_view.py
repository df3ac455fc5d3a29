"""One patient case side by side (View → Case of this image…): every image of the case, and the positive
pairs MICLe draws from them (images of one case are positives of each other; ``core.pretrain.pairs``
``same_case`` sampler, asked in a worker). A project without case ids (BUSI has none) says so plainly.
Double-clicking an image opens it in the viewer."""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets

from desktop.bridge.jobs_bridge import AsyncCaller, import_engine
from desktop.bridge.rows import Item, case_groups

NO_CASES = ("No case ids in this project, so every image is its own case and MICLe pairs two views of one "
            "image (like SimCLR). Case ids come from a manifest.csv column case_id beside the images, or from "
            "DICOM PatientID; rescan after adding one.")
MAX_PAIRS_SHOWN = 12


def micle_partners(case_ids: list[str | None]) -> list[tuple[str, list[int]]]:
    """(rule, positives) of each image as MICLe's sampler sees them (runs in a worker: the module uses torch)."""
    pairs = import_engine("core.pretrain.pairs")
    sampler = pairs.get_pair_sampler("same_case")(case_ids)
    return [sampler.rule_for(i) for i in range(len(case_ids))]


class CaseView(QtWidgets.QDialog):
    openImage = QtCore.Signal(int)          # image id

    def __init__(self, project, thumbs, item: Item | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Case")
        self.project, self.thumbs = project, thumbs
        self.cases = case_groups(project.items)
        self.combo = QtWidgets.QComboBox()
        for case, images in self.cases.items():
            self.combo.addItem(f"{case} ({len(images)} image{'s' if len(images) != 1 else ''})", case)
        self.state = QtWidgets.QLabel()
        self.state.setWordWrap(True)
        self.strip = QtWidgets.QListWidget()
        self.strip.setViewMode(QtWidgets.QListView.ViewMode.IconMode)
        self.strip.setIconSize(QtCore.QSize(160, 160))
        self.strip.setResizeMode(QtWidgets.QListView.ResizeMode.Adjust)
        self.strip.setMovement(QtWidgets.QListView.Movement.Static)
        self.strip.itemActivated.connect(lambda it: self.openImage.emit(it.data(QtCore.Qt.ItemDataRole.UserRole)))
        self.pairs = QtWidgets.QLabel()
        self.pairs.setObjectName("dim")
        self.pairs.setWordWrap(True)
        self.pairs.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("Case"))
        top.addWidget(self.combo, 1)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.state)
        lay.addWidget(self.strip, 1)
        lay.addWidget(self.pairs)
        self.caller = AsyncCaller(workers=1, parent=self)
        self._rows: dict[str, QtWidgets.QListWidgetItem] = {}
        thumbs.thumbnailReady.connect(self._thumb_ready)
        self.combo.currentIndexChanged.connect(lambda _i: self.show_case(self.combo.currentData()))
        self.resize(820, 520)
        if not self.cases:
            self.combo.setEnabled(False)
            self.state.setText(NO_CASES)
            return
        start = item.case_id if item is not None and item.case_id in self.cases else next(iter(self.cases))
        if item is not None and not item.case_id:
            self.state.setText(f"{item.name} has no case id; showing case {start}.")
        self.combo.setCurrentIndex(self.combo.findData(start))
        self.show_case(start)

    def show_case(self, case: str | None) -> None:
        images = self.cases.get(case or "", [])
        self.strip.clear()
        self._rows.clear()
        for it in images:
            row = QtWidgets.QListWidgetItem(it.name + (f"\n{it.label}" if it.label else "\nunlabelled"))
            row.setData(QtCore.Qt.ItemDataRole.UserRole, it.image_id)
            row.setToolTip(it.rel_path)
            self._rows[it.path] = row
            self.strip.addItem(row)
            self._thumb_ready(it.path)
        self.setWindowTitle(f"Case {case}")
        self.pairs.setText("Looking up MICLe's pairs…")
        self.caller.submit(lambda ids=[it.case_id for it in images]: micle_partners(ids),
                           lambda rules, imgs=images: self._show_pairs(imgs, rules),
                           lambda msg: self.pairs.setText(f"MICLe's pairs are unknown: {msg}"), key="pairs")

    def _thumb_ready(self, path: str) -> None:
        row = self._rows.get(path)
        if row is None:
            return
        pm = self.thumbs.get(path)
        if pm is not None:
            row.setIcon(QtGui.QIcon(pm))

    def _show_pairs(self, images: list[Item], rules: list[tuple[str, list[int]]]) -> None:
        if len(images) < 2:
            self.pairs.setText("One image in this case: MICLe falls back to two views of the same image "
                               f"({rules[0][0] if rules else 'same_image'}).")
            return
        pairs = sorted({tuple(sorted((i, j))) for i, (_rule, js) in enumerate(rules) for j in js if j != i})
        shown = [f"{images[i].name} ↔ {images[j].name}" for i, j in pairs[:MAX_PAIRS_SHOWN]]
        more = f"; … and {len(pairs) - MAX_PAIRS_SHOWN} more" if len(pairs) > MAX_PAIRS_SHOWN else ""
        self.pairs.setText(f"MICLe positives (same case): {len(pairs)} pairs — " + "; ".join(shown) + more)
