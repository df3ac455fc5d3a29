"""Where ImageNet weights are needed: say whether they are here and, if not, offer to get them in place.

"Download (114 MB)" fetches them from the Hugging Face hub in a worker (progress, cancel, resumable);
"Import file…" installs a file brought by hand (sites without internet). Both run off the UI thread; the
widget only shows state and forwards clicks. The network is used only when the person clicks Download.
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from desktop import theme
from desktop.bridge.jobs_bridge import AsyncCaller, JobRunner, import_engine


def weights_state(requested: str) -> dict:
    """Worker-thread part (it imports timm): which weights ``requested`` (a backbone or ``arch.tag``) means,
    whether they are installed, where, and how big the download is (no network)."""
    weights = import_engine("core.models.weights")
    folder = import_engine("core.models.weights_folder")
    download = import_engine("core.models.download")
    name = weights.default_weights_name(requested)
    arch, _ = weights.split_name(name)
    found = weights.find_imagenet_weights(name)
    size = folder.weights_entry(name).download_size
    return {"requested": requested, "name": name, "found": str(found.path) if found else None,
            "kind": found.kind if found else None, "size": folder.describe_size(size) if size else None,
            "partial": download.partial_download(name) is not None, "arch": arch}


class WeightsOffer(QtWidgets.QFrame):
    """State of the ImageNet weights of a backbone (or an ``arch.tag``) plus Download / Import / Cancel.
    ``name`` is the ``arch.tag`` they resolve to (set once looked up); ``changed(bool)``: installed now?"""

    changed = QtCore.Signal(bool)

    def __init__(self, requested: str, parent: QtWidgets.QWidget | None = None, *,
                 caller: AsyncCaller | None = None):
        super().__init__(parent)
        self.requested = self.name = requested
        self.installed: bool | None = None
        self.runner: JobRunner | None = None
        self.caller = caller or AsyncCaller(workers=1, parent=self)
        self.status = QtWidgets.QLabel("Looking for ImageNet weights…")
        self.status.setWordWrap(True)
        self.download = QtWidgets.QPushButton("Download")
        self.download.setToolTip("From the Hugging Face hub: only the public model file is fetched; no image "
                                 "or label leaves this computer")
        self.import_ = QtWidgets.QPushButton("Import file…")
        self.import_.setToolTip("Install a weights file you brought (for computers without internet)")
        self.cancel = QtWidgets.QPushButton("Cancel")
        self.bar = QtWidgets.QProgressBar()
        self.bar.setTextVisible(True)
        for w in (self.download, self.import_, self.cancel, self.bar):
            w.hide()
        self.download.clicked.connect(self.start_download)
        self.import_.clicked.connect(self.choose_file)
        self.cancel.clicked.connect(lambda: self.runner.cancel() if self.runner is not None else None)
        buttons = QtWidgets.QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        for w in (self.download, self.import_, self.cancel):
            buttons.addWidget(w)
        buttons.addStretch(1)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.status)
        lay.addWidget(self.bar)
        lay.addLayout(buttons)
        self.refresh()

    def set_name(self, requested: str) -> None:
        """Show the weights of another backbone (or ``arch.tag``)."""
        if requested != self.requested:
            self.requested = self.name = requested
            self.installed = None
            self.refresh()

    def refresh(self) -> None:
        self.caller.submit(lambda requested=self.requested: weights_state(requested), self._show_state,
                           self._show_error, key="weights-state")

    # -- state (UI thread) ----------------------------------------------------------------------------
    def _show_state(self, state: dict) -> None:
        if state["requested"] != self.requested:
            return
        self.name = state["name"]
        busy = self.runner is not None
        self.installed = state["found"] is not None
        if self.installed:
            self.status.setText(f"ImageNet weights {self.name}: {state['found']}")
            self.status.setStyleSheet("")
        else:
            more = " A download was interrupted: Download resumes it." if state["partial"] else ""
            self.status.setText(f"ImageNet weights {self.name} are not on this computer yet.{more}")
            self.status.setStyleSheet(f"color: {theme.WARN};")
        size = f" ({state['size']})" if state["size"] else ""
        self.download.setText(f"Download{size}")
        self.download.setVisible(not self.installed and not busy)
        self.import_.setVisible(not self.installed and not busy)
        self.cancel.setVisible(busy)
        self.bar.setVisible(busy)
        self.changed.emit(self.installed)

    def _show_error(self, message: str) -> None:
        self.status.setText(message)
        self.status.setStyleSheet(f"color: {theme.ERROR};")
        self.download.setVisible(self.runner is None)
        self.import_.setVisible(self.runner is None)

    # -- actions ------------------------------------------------------------------------------------------
    def start_download(self) -> None:
        from core.models.download import download_job

        self.runner = JobRunner(download_job(self.name), self)
        self.runner.progress.connect(self._progress)
        self.runner.finished.connect(lambda _entry: self._done(None))
        self.runner.failed.connect(self._done)
        self.runner.cancelled.connect(lambda: self._done("Download cancelled: Download resumes it."))
        self.bar.setRange(0, 0)
        self.download.hide()
        self.import_.hide()
        self.cancel.show()
        self.bar.show()
        self.status.setText(f"Downloading {self.name}…")
        self.status.setStyleSheet("")
        self.runner.start()

    def _progress(self, step: int, total: int, _message: str, _metrics: dict) -> None:
        if total > 0:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(1000 * step / total))
            self.bar.setFormat(f"{step / 1e6:.1f} of {total / 1e6:.1f} MB")

    def _done(self, error: str | None) -> None:
        self.runner = None
        self.cancel.hide()
        self.bar.hide()
        if error:
            self._show_error(error)
        self.refresh()

    def choose_file(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, f"Import ImageNet weights for {self.name}", str(QtCore.QDir.homePath()),
            "Weights (*.safetensors *.pth *.pt *.bin);;All files (*)")
        if path:
            self.import_file(path)

    def import_file(self, path: str) -> None:
        self.status.setText(f"Checking {path}…")
        self.status.setStyleSheet("")
        folder = "core.models.weights_folder"
        self.caller.submit(lambda name=self.name: import_engine(folder).import_weights(path, name),
                           lambda _entry: self.refresh(), self._show_error)
