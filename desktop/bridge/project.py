"""The open project as the desktop sees it: the store, one light row per image, and change signals.

This is a view-model (napari style): it holds what the widgets show and forwards every edit to
``core.project.store.ProjectStore`` at once (autosave: nothing is ever pending). Long work (scanning the folder,
importing the scan, reading the rows back) runs as a ``core.jobs.Job`` through :mod:`desktop.bridge.jobs_bridge`;
the UI thread only swaps in the finished row list.
"""

from __future__ import annotations


import logging
import operator
from pathlib import Path

from PySide6 import QtCore, QtGui

from core.jobs import Job, JobContext
from core.project.store import StoreWriteError
from desktop.bridge.jobs_bridge import JobRunner
from desktop.bridge.rows import Item, OpenResult, lesion_mask_count, read_items
from desktop.settings import ProjectPaths, locate_project

log = logging.getLogger(__name__)

#: undo steps kept (the oldest go first). A mask step holds the mask before and after at 1 bit per pixel
#: (desktop.bridge.mask_ops.pack): 100 steps of a 1000×1000 image stay under 25 MB; a day's labelling
#: grew the stack without end before.
UNDO_STEPS = 100

_ROW_FIELDS = ("image_id", "label", "n_masks", "prediction", "uncertainty", "case_id", "modality", "width",
               "height", "is_color", "order")


# -- the model ------------------------------------------------------------------------------------------
class ProjectModel(QtCore.QObject):
    """State of the open project. All methods run in the UI thread; work runs in jobs."""

    opened = QtCore.Signal(object)            # ProjectPaths
    closed = QtCore.Signal()
    itemsReset = QtCore.Signal()              # the row list was replaced
    itemChanged = QtCore.Signal(int)          # image_id (label / masks changed)
    editApplied = QtCore.Signal(int)          # image_id an undo-stack command just changed (do/undo/redo)
    classesChanged = QtCore.Signal()
    jobStarted = QtCore.Signal(object)        # JobRunner (status bar shows progress + cancel)
    scanFinished = QtCore.Signal(object)      # OpenResult
    message = QtCore.Signal(str, int)         # text, timeout ms (status bar)
    error = QtCore.Signal(str)
    storeReady = QtCore.Signal()              # the store is open (labels, masks, classes may be used)
    _partial = QtCore.Signal(object, bool)    # internal: rows from the job thread, complete?
    _store_ready = QtCore.Signal(object)      # internal: (generation, store, classes) from the job thread

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.paths: ProjectPaths | None = None
        self.store = None
        self.items: list[Item] = []
        self.by_id: dict[int, Item] = {}
        self.classes: list[str] = []
        self.undo_stack = QtGui.QUndoStack(self)
        self.undo_stack.setUndoLimit(UNDO_STEPS)
        self.scan_runner: JobRunner | None = None
        self.scan_complete = False
        self._edited: set[int] = set()
        self._generation = 0
        self._partial.connect(self._on_partial, QtCore.Qt.ConnectionType.QueuedConnection)
        self._store_ready.connect(self._on_store_ready, QtCore.Qt.ConnectionType.QueuedConnection)

    # -- open / close -------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.paths is not None

    @property
    def ready(self) -> bool:
        """The store is open (a moment after :meth:`open`; it is opened in the job thread)."""
        return self.store is not None

    def open(self, path: str | Path) -> ProjectPaths:
        """Open an image folder (or a project.db) and return at once.

        A job opens the store (creating / migrating it costs a few fsyncs), shows the stored rows (or,
        for a new project, a quick file listing so thumbnails start at once), then rescans the folder
        and imports the scan; the heavy part runs in a child process (:mod:`desktop.bridge.scan_process`).
        """
        paths = locate_project(path)
        if not paths.folder.is_dir():
            raise FileNotFoundError(f"{paths.folder}: not a folder")
        self.close()
        self.paths = paths
        self._generation += 1
        self.classes = []
        self.items, self.by_id = [], {}
        self.scan_complete = False
        self.undo_stack.clear()
        self.opened.emit(paths)
        self.classesChanged.emit()
        self.itemsReset.emit()
        self._start_scan(open_store=True)
        return paths

    def close(self, wait: bool = False) -> None:
        """Close the project. A running scan is cancelled and the store's files are closed in the background
        unless ``wait`` (quitting): opening another folder mid-scan froze the window until the scan ended
        (up to 5 s); what a cancelled scan still sends is dropped (``_generation``)."""
        if self.scan_runner is not None and self.scan_runner.running:
            self.scan_runner.cancel()
            if wait:
                self.scan_runner.job.wait(5)
        self.scan_runner = None
        self.undo_stack.clear()
        was_open = self.paths is not None
        store, self.store = self.store, None
        self.paths = None
        self._generation += 1
        self.items, self.by_id, self.classes = [], {}, []
        if store is not None:
            if wait:
                store.close()
            else:   # the last close checkpoints the WAL (an fsync): not in the UI thread
                import threading

                threading.Thread(target=store.close, name="store-close", daemon=False).start()
        if was_open:
            self.closed.emit()

    def rescan(self) -> None:
        if self.ready and not (self.scan_runner and self.scan_runner.running):
            self._start_scan()

    def _start_scan(self, open_store: bool = False) -> None:
        from core.project.store import ProjectStore
        from desktop.bridge.scan_process import run_scan

        paths, root, generation = self.paths, self.paths.folder, self._generation
        self._edited.clear()
        handle = {"store": self.store}

        def on_store() -> None:
            if handle["store"] is None:   # this process's own handle on the file (the child has another)
                store = ProjectStore(paths.store_path)
                handle["store"] = store
                self._store_ready.emit((generation, store, store.classes()))

        def read_stored() -> list:
            store = handle["store"]
            rows = read_items(store, masks=False) if store.images() else []
            store.release_thread()
            return rows

        def fn(ctx: JobContext) -> OpenResult:
            items, counts, errors = run_scan(
                ctx, paths.store_path, root, paths.folder_writable,
                on_rows=lambda rows: self._partial.emit((generation, rows), False), on_store=on_store,
                read_stored=read_stored)
            return OpenResult(items, counts, errors)

        runner = JobRunner(Job(f"Scanning {root.name}", fn), self)
        runner.finished.connect(lambda result, g=generation: self._on_scanned(g, result))
        runner.failed.connect(lambda msg, g=generation: self._on_scan_failed(g, msg))
        runner.cancelled.connect(lambda g=generation: self._on_scan_cancelled(g))
        self.scan_runner = runner
        self.jobStarted.emit(runner)
        runner.start()

    @QtCore.Slot(object)
    def _on_store_ready(self, payload) -> None:
        generation, store, classes = payload
        if generation != self._generation:
            import threading

            threading.Thread(target=store.close, daemon=True).start()
            return
        self.store = store
        self.classes = classes
        self.storeReady.emit()
        self.classesChanged.emit()

    @QtCore.Slot(object, bool)
    def _on_partial(self, payload, complete: bool) -> None:
        generation, items = payload
        if generation != self._generation:
            return
        if not items or (self.items and items[0].image_id is None):
            return          # a quick listing never replaces rows read from the store
        self._set_items(items)

    def _set_items(self, items: list[Item]) -> None:
        # labels edited in the app while the job read the rows win (the store has them already)
        if self._edited and self.store is not None:
            for it in items:
                if it.image_id in self._edited:
                    it.label = self.store.current_label(it.image_id)
                    it.n_masks = lesion_mask_count(self.store, it.image_id)
        old = self.items
        if len(old) == len(items) and all(a.path == b.path for a, b in zip(old, items)):
            # the same files (a rescan, or stored rows followed by complete ones): update the row
            # objects in place so views keep their selection and skip a full reset; only rows that
            # differ (setting every field of 10 000 rows was ~60 ms of a warm re-open on the UI thread)
            fields = operator.attrgetter(*_ROW_FIELDS)
            for a, b in zip(old, items):
                new = fields(b)
                if fields(a) != new:
                    for name, value in zip(_ROW_FIELDS, new):
                        setattr(a, name, value)
        else:
            self.items = items
        self.by_id = {it.image_id: it for it in self.items if it.image_id is not None}
        self.itemsReset.emit()

    def _on_scanned(self, generation: int, result: OpenResult) -> None:
        if generation != self._generation or self.store is None:
            return
        self.scan_complete = True
        self._set_items(result.items)
        self.reload_classes()
        n_err = len(result.errors)
        text = f"{len(result.items)} images"
        new = result.counts.get("new", 0)
        if new and new != len(result.items):
            text += f" ({new} new)"
        if n_err:
            text += f" · {n_err} unreadable file{'s' if n_err != 1 else ''} skipped"
        conflicts = result.counts.get("label_conflicts") or []
        for group in conflicts:
            log.warning("identical files with different labels (the project keeps the first): %s", " = ".join(group))
        if conflicts:
            text += (f" · {len(conflicts)} set{'s' if len(conflicts) != 1 else ''} of identical files with different "
                     f"labels, e.g. {' = '.join(conflicts[0])}: the project keeps the first")
        self.message.emit(text, 20000 if conflicts else 8000)
        self.scanFinished.emit(result)

    def _on_scan_failed(self, generation: int, msg: str) -> None:
        if generation == self._generation:
            self.error.emit(f"Scanning the folder failed: {msg}")

    def _on_scan_cancelled(self, generation: int) -> None:
        if generation == self._generation:
            self.message.emit("Scan cancelled: showing what was already known. Rescan from the File menu.",
                              10000)

    # -- queries --------------------------------------------------------------------------------------
    def class_index(self, label: str | None) -> int:
        try:
            return self.classes.index(label) if label is not None else -1
        except ValueError:
            return -1

    def counts(self) -> dict:
        """Counts for the side panel: per class, unlabeled, with mask, with prediction."""
        per_class = {c: 0 for c in self.classes}
        unlabeled = masked = predicted = 0
        for it in self.items:
            if it.label is None:
                unlabeled += 1
            else:
                per_class[it.label] = per_class.get(it.label, 0) + 1
            masked += it.n_masks > 0
            predicted += it.prediction is not None
        return {"all": len(self.items), "classes": per_class, "unlabeled": unlabeled, "masked": masked,
                "predicted": predicted}

    def has_predictions(self) -> bool:
        return any(it.prediction is not None for it in self.items)

    def label_history(self, image_id: int):
        return self.store.label_history(image_id) if self.store is not None else []

    def class_names(self) -> list[str]:
        return list(self.classes)

    # -- edits (called by undo commands; every call is committed at once) --------------------------------
    def write_label(self, image_id: int, label: str | None) -> None:
        self.store.set_label(image_id, label)
        self._label_changed(image_id)

    def undo_label(self, image_id: int, expected: str | None) -> None:
        """Undo through the store's audit trail; fall back to a plain set if the stacks disagree (one
        transaction: a refused write leaves the label as it was)."""
        with self.store.transaction():
            self.store.undo_label(image_id)
            if self.store.current_label(image_id) != expected:
                self.store.set_label(image_id, expected)
        self._label_changed(image_id)

    def redo_label(self, image_id: int, expected: str | None) -> None:
        with self.store.transaction():
            self.store.redo_label(image_id)
            if self.store.current_label(image_id) != expected:
                self.store.set_label(image_id, expected)
        self._label_changed(image_id)

    def write_failed(self, what: str, exc: Exception) -> None:
        """An edit the disk refused (full): said in the status bar and a dialog, since a message that
        vanishes is easy to miss and the user must free space. The rows keep the stored values."""
        text = f"{what}: {exc}" if isinstance(exc, StoreWriteError) else f"{what}: not saved: {exc}"
        log.warning("%s", text)
        self.message.emit(text, 60000)
        self.error.emit(text)

    def _label_changed(self, image_id: int) -> None:
        self._edited.add(image_id)
        it = self.by_id.get(image_id)
        if it is not None:
            it.label = self.store.current_label(image_id)
        new_classes = self.store.classes()
        if new_classes != self.classes:
            self.classes = new_classes
            self.classesChanged.emit()
        self.itemChanged.emit(image_id)

    def masks_changed(self, image_id: int) -> None:
        self._edited.add(image_id)
        it = self.by_id.get(image_id)
        if it is not None:
            it.n_masks = lesion_mask_count(self.store, image_id)
        self.itemChanged.emit(image_id)

    def reload_predictions(self) -> None:
        """Take the newest stored predictions into the rows (library badges, filters, sort) without a rescan
        of the folder; read in a worker thread (a large run is tens of thousands of JSON rows)."""
        from core.jobs import Job
        from desktop.bridge.jobs_bridge import JobRunner
        from desktop.bridge.rows import latest_predictions

        store = self.store
        if store is None:
            return

        def fn(ctx):
            try:
                return latest_predictions(store)
            finally:
                store.release_thread()

        def apply(preds) -> None:
            if store is not self.store:       # the project was closed or reopened meanwhile
                return
            for it in self.items:
                it.prediction, it.uncertainty = preds.get(it.image_id, (None, None))
            self.itemsReset.emit()

        runner = JobRunner(Job("reading predictions", fn), self)
        runner.finished.connect(apply)
        runner.done.connect(runner.deleteLater)
        runner.start()

    def reload_classes(self) -> None:
        if self.store is None:
            return
        classes = self.store.classes()
        if classes != self.classes:
            self.classes = classes
            self.classesChanged.emit()

    def add_class(self, name: str) -> bool:
        if self.store is None:
            return False
        ok = self.store.add_class(name.strip())
        self.reload_classes()
        return ok

    def rename_class(self, old: str, new: str) -> int:
        n = self.store.rename_class(old, new.strip())
        for i in range(self.undo_stack.count()):
            cmd = self.undo_stack.command(i)
            if hasattr(cmd, "rename_label"):
                cmd.rename_label(old, new.strip())
        for it in self.items:
            if it.label == old:
                it.label = new.strip()
        self.reload_classes()
        self.itemsReset.emit()
        return n
