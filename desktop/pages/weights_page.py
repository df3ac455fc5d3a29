"""Weights page: which ImageNet weights are installed, their size, source and licence; get or verify them.

The list is read in a worker (it imports timm); downloading and importing go through
:class:`desktop.widgets.weights_offer.WeightsOffer`, so this page and the fine-tune dialog behave the same.
"""

from __future__ import annotations

from PySide6 import QtWidgets

from core.models.weights_folder import DEFAULT_WEIGHTS
from desktop import theme
from desktop.bridge.jobs_bridge import AsyncCaller, import_engine
from desktop.widgets.weights_offer import WeightsOffer

COLUMNS = ("Name", "Installed", "Size", "Source", "Licence")


def weights_rows() -> tuple[str, list[tuple[str, str, str, str, str]]]:
    """Worker-thread part: (weights folder, one row per known or installed name)."""
    folder = import_engine("core.models.weights_folder")
    download = import_engine("core.models.download")
    weights = import_engine("core.models.weights")
    rows = []
    for e in folder.list_weights():
        source = e.hub_id or ""
        found = None if e.installed is not None else weights.find_imagenet_weights(e.name)
        if e.installed is not None:
            state, size = "yes", folder.describe_size(e.installed.size)
        elif found is not None:     # what fine-tuning would use: a Hugging Face cache, a wheel...
            state, size = f"yes ({found.kind})", folder.describe_size(found.path.stat().st_size)
            source = found.note or str(found.path)
        else:
            state = "interrupted download" if download.partial_download(e.name) else "no"
            size = f"≈ {folder.describe_size(e.download_size)}" if e.download_size else "?"
        rows.append((e.name, state, size, source, e.licence or ""))
    return str(weights.weights_dir()), rows


class WeightsPage(QtWidgets.QWidget):
    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.caller = AsyncCaller(workers=1, parent=self)
        self.where = QtWidgets.QLabel("Reading the weights folder…")
        self.where.setWordWrap(True)
        self.where.setStyleSheet(f"color: {theme.TEXT_DIM};")
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setStretchLastSection(True)
        self.offer: WeightsOffer | None = None
        self.offer_box = QtWidgets.QVBoxLayout()
        self.verify = QtWidgets.QPushButton("Verify installed files")
        self.verify.clicked.connect(self._verify)
        self.verify_result = QtWidgets.QLabel("")
        self.verify_result.setWordWrap(True)
        note = QtWidgets.QLabel(f"Member A of the ensemble starts from ImageNet weights (default "
                                f"{DEFAULT_WEIGHTS}). Downloading fetches only the public model file; "
                                "scanning, training and prediction never use the network.")
        note.setWordWrap(True)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(note)
        lay.addWidget(self.where)
        lay.addWidget(self.table, 1)
        lay.addLayout(self.offer_box)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.verify)
        row.addWidget(self.verify_result, 1)
        lay.addLayout(row)
        self.table.currentCellChanged.connect(lambda r, *_: self._select(r))
        self.reload()

    def reload(self) -> None:
        self.caller.submit(weights_rows, self._show_rows, lambda msg: self.where.setText(msg), key="rows")

    def _show_rows(self, result) -> None:
        folder, rows = result
        self.where.setText(f"Weights folder: {folder}")
        current = self.table.currentRow()
        self.table.setRowCount(len(rows))
        for r, values in enumerate(rows):
            for c, v in enumerate(values):
                self.table.setItem(r, c, QtWidgets.QTableWidgetItem(v))
        self.table.resizeColumnsToContents()
        if rows:
            self.table.selectRow(max(0, current))

    def _select(self, row: int) -> None:
        item = self.table.item(row, 0)
        if item is None:
            return
        if self.offer is None:
            self.offer = WeightsOffer(item.text(), self)
            self.offer.changed.connect(lambda _installed: self.reload())
            self.offer_box.addWidget(self.offer)
        else:
            self.offer.set_name(item.text())

    def _verify(self) -> None:
        self.verify_result.setText("Verifying…")
        self.caller.submit(lambda: import_engine("core.models.weights_folder").verify_weights(),
                           self._show_verify, self.verify_result.setText)

    def _show_verify(self, results) -> None:
        if not results:
            self.verify_result.setText("No weights installed yet.")
            return
        bad = [r for r in results if not r.ok]
        self.verify_result.setText(f"{len(results) - len(bad)} of {len(results)} files OK."
                                   + "".join(f"\n{r.name}: {r.reason}" for r in bad))
        self.verify_result.setStyleSheet(f"color: {theme.ERROR};" if bad else "")


class WeightsDialog(QtWidgets.QDialog):
    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("ImageNet weights")
        self.page = WeightsPage(self)
        close = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(self.page)
        lay.addWidget(close)
        self.resize(820, 520)
