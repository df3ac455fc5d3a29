"""Review predictions (Train → Review predictions…): step through the images of a prediction run where the
ensemble disagrees with the label or with itself (``core.analysis.active.review_queue``) and settle each
with one key. Labels go through the annotation bridge (``desktop.bridge.annotation.set_label``), so every
decision is in the store's label history and Ctrl+Z undoes it."""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets

from desktop.bridge.annotation import set_label
from desktop.bridge.jobs_bridge import AsyncCaller
from desktop.widgets.fitted_image import FittedImage

KEYS_HELP = ("Enter: accept the ensemble's class as the label · 1–9: set that class · Space / →: keep, next · "
             "←: previous · Ctrl+Z: undo")
IMAGE_PX = 480
MIN_IMAGE_PX = 200      # the image shrinks to this so the dialog fits a 1280×720 screen


def newest_prediction_run(store):
    """The newest run that stored predictions in the project (None: there is none)."""
    return next((r for r in reversed(store.list_runs()) if store.has_predictions(r.id)), None)


def load_review_image(path: str):
    """A QImage of ``path`` scaled to IMAGE_PX on its longer side (runs in a worker: decoding can take a
    while). Small images are enlarged too: a 128 px image sat as a stamp in the middle of the dialog."""
    from core.data.imageio import read_image
    from desktop.bridge.thumbs import array_to_qimage

    img = array_to_qimage(read_image(path).array)
    if max(img.width(), img.height()) != IMAGE_PX:
        img = img.scaled(IMAGE_PX, IMAGE_PX, QtCore.Qt.AspectRatioMode.KeepAspectRatio,
                         QtCore.Qt.TransformationMode.SmoothTransformation)
    return img


class ReviewDialog(QtWidgets.QDialog):
    def __init__(self, project, run_id: int | None = None, parent=None):
        super().__init__(parent)
        self.project = project
        self.setWindowTitle("Review predictions")
        self.queue: list = []            # core.analysis.active.ReviewCase
        self.records: dict = {}          # image id -> PredictionRecord
        self.pos = 0
        self.position = QtWidgets.QLabel("Reading the predictions…")
        self.reasons = QtWidgets.QLabel()
        self.reasons.setWordWrap(True)
        self.image = FittedImage(IMAGE_PX, MIN_IMAGE_PX)
        self.details = QtWidgets.QLabel()
        self.details.setWordWrap(True)
        help_ = QtWidgets.QLabel(KEYS_HELP)
        help_.setObjectName("dim")
        help_.setWordWrap(True)
        lay = QtWidgets.QVBoxLayout(self)
        for w in (self.position, self.reasons, self.image, self.details, help_):
            lay.addWidget(w, 1 if w is self.image else 0)
        screen = (parent.screen() if parent is not None else QtGui.QGuiApplication.primaryScreen()).availableGeometry()
        self.resize(min(IMAGE_PX + 60, screen.width() - 40), min(IMAGE_PX + 220, screen.height() - 60))
        self.caller = AsyncCaller(workers=1, parent=self)
        keys = [("Return", self.accept_prediction), ("Enter", self.accept_prediction), ("Space", self.step),
                ("Right", self.step), ("Left", lambda: self.step(-1)), (QtGui.QKeySequence.StandardKey.Undo, self.undo),
                (QtGui.QKeySequence.StandardKey.Redo, project.undo_stack.redo)]
        keys += [(str(n), lambda n=n: self.set_class(n)) for n in range(1, 10)]
        for key, slot in keys:
            sc = QtGui.QShortcut(QtGui.QKeySequence(key), self)
            sc.activated.connect(slot)
        project.itemChanged.connect(self._item_changed)
        store = project.store
        run = newest_prediction_run(store) if run_id is None else store.get_run(run_id)
        if run is None:
            self.position.setText("No predictions in this project yet: Train → Predict folder… makes them.")
            return
        self.setWindowTitle(f"Review predictions of #{run.id} {run.name}")
        labels = {it.image_id: it.label for it in project.items if it.image_id is not None}

        def read():
            from core.analysis.active import review_queue

            records = store.prediction_records(run.id)
            return records, review_queue(records, labels)

        self.caller.submit(read, self._loaded, lambda msg: self.position.setText(f"Cannot read predictions: {msg}"))

    # -- queue ----------------------------------------------------------------------------------------------
    def _loaded(self, result) -> None:
        records, queue = result
        self.records = {r.image_id: r for r in records}
        self.queue = queue
        self.pos = 0
        self.show_current()

    def current(self):
        return self.queue[self.pos] if 0 <= self.pos < len(self.queue) else None

    def show_current(self) -> None:
        case = self.current()
        if case is None:
            self.position.setText("Nothing to review: the ensemble agrees with every label, its members agree and "
                                  "it is sure." if not self.queue else f"End of the {len(self.queue)} images to review.")
            self.reasons.clear()
            self.details.clear()
            self.image.clear()
            return
        item = self.project.by_id.get(case.image_id)
        rec = self.records.get(case.image_id)
        self.position.setText(f"{self.pos + 1} / {len(self.queue)}: {item.name if item else case.image_id}")
        self.reasons.setText("Why: " + "; ".join(case.reasons) + ".")
        label = item.label if item is not None else case.label
        members = ", ".join(f"{n} {max(p, key=p.get)}" for n, p in (rec.members.items() if rec else ()) if p)
        conf = rec.probs.get(case.predicted, 0.0) if rec else 0.0
        self.details.setText(f"Label: {label or 'none'} · Ensemble: {case.predicted} ({100 * conf:.0f} %)"
                             + (f" · Members: {members}" if members else "")
                             + f" · Uncertainty {100 * case.entropy_norm:.0f} % of the maximum")
        self.image.setText("Loading…")
        if item is not None:
            self.caller.submit(lambda p=item.path: load_review_image(p), self.image.set_image,
                               lambda msg: self.image.setText(f"Cannot show {item.name}: {msg}"), key="image")

    def step(self, delta: int = 1) -> None:
        if self.queue:
            self.pos = max(0, min(len(self.queue), self.pos + delta))
            self.show_current()

    # -- decisions (through the undo stack) --------------------------------------------------------------------
    def _decide(self, label: str | None) -> None:
        case = self.current()
        item = self.project.by_id.get(case.image_id) if case is not None else None
        if item is None or not label:
            return
        if set_label(self.project, item, label) or item.label == label:    # refused: stay (the window says why)
            self.step()

    def accept_prediction(self) -> None:
        case = self.current()
        if case is not None:
            self._decide(case.predicted)

    def set_class(self, n: int) -> None:
        classes = self.project.class_names()
        if 1 <= n <= len(classes):
            self._decide(classes[n - 1])

    def undo(self) -> None:
        """Undo the last edit; when it was a label of an image in the queue, go back to that image."""
        from desktop.bridge.annotation import LabelCommand

        stack = self.project.undo_stack
        last = stack.command(stack.index() - 1) if stack.index() > 0 else None
        stack.undo()
        ids = [c.image_id for c in self.queue]
        if isinstance(last, LabelCommand) and last.image_id in ids:
            self.pos = ids.index(last.image_id)
            self.show_current()

    def _item_changed(self, image_id: int) -> None:
        case = self.current()
        if case is not None and case.image_id == image_id:
            self.show_current()          # an undo of the shown image: its label line follows
