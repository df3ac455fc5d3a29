"""The main window: start page, library, viewer and MAE panel around one open project."""

from __future__ import annotations


import logging
from pathlib import Path

from PySide6 import QtCore, QtGui, QtWidgets

from desktop import theme
from desktop.bridge.jobs_bridge import AsyncCaller, JobRunner
from desktop.pages.jobs_panel import JobsManager, JobsPanel
from desktop.pages.predictions import PredictionsPage
from desktop.pages.library import LibraryPage, ProjectPanel
from desktop.pages.mae_panel import MaePanel
from desktop.bridge.project import ProjectModel
from desktop.bridge.rows import Item
from desktop.settings import Settings, demo_folder, demo_ready
from desktop.shortcuts import ShortcutsDialog, keys_for
from desktop.pages.start_page import StartPage
from desktop.bridge.thumbs import ThumbnailService
from desktop.pages.viewer import ViewerPage
from desktop.widgets.elided_label import ElidedLabel
from desktop.widgets.scan_problems import ScanProblemsButton

log = logging.getLogger(__name__)


class JobStatus(QtWidgets.QWidget):
    """Status-bar widget for the running job: name, determinate progress, cancel."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.label = QtWidgets.QLabel()
        self.bar = QtWidgets.QProgressBar()
        self.bar.setFixedWidth(180)
        self.bar.setTextVisible(True)
        self.cancel = QtWidgets.QToolButton()
        self.cancel.setIcon(theme.icon("cancel"))
        self.cancel.setToolTip("Cancel")
        self.cancel.setAutoRaise(True)
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 6, 0)
        lay.setSpacing(6)
        lay.addWidget(self.label)
        lay.addWidget(self.bar)
        lay.addWidget(self.cancel)
        self.runner: JobRunner | None = None
        self.cancel.clicked.connect(self._cancel)
        self.hide()

    def track(self, runner: JobRunner) -> None:
        self.runner = runner
        self.label.setText(runner.name)
        self.bar.setRange(0, 0)
        self.cancel.setEnabled(True)
        self.show()
        runner.progress.connect(lambda step, total, msg, _m, r=runner: self._progress(r, step, total, msg))
        runner.done.connect(lambda r=runner: self._done(r))

    def _progress(self, runner, step, total, msg) -> None:
        if runner is not self.runner:
            return
        if total and total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(step, total))
            self.bar.setFormat(f"{step:,} / {total:,}")
        else:
            self.bar.setRange(0, 0)
        if msg:
            self.label.setText(f"{runner.name}: {msg}"[:70])

    def _done(self, runner) -> None:
        if runner is self.runner:
            self.runner = None
            self.hide()

    def _cancel(self) -> None:
        if self.runner is not None:
            self.runner.cancel()
            self.cancel.setEnabled(False)
            self.label.setText(f"{self.runner.name}: cancelling…")


class MainWindow(QtWidgets.QMainWindow):
    def __init__(self, settings: Settings | None = None):
        super().__init__()
        self.settings = settings or Settings()
        self.setWindowTitle("MedSSL Studio")
        self.setWindowIcon(theme.app_icon())
        self.project = ProjectModel(self)
        self.thumbs = ThumbnailService(parent=self)
        self.caller = AsyncCaller(parent=self)
        self.demo_runner: JobRunner | None = None

        # pages
        self.start = StartPage()
        self.library = LibraryPage(self.project, self.thumbs)
        self.viewer = ViewerPage(self.project, self.caller)
        self.mae = MaePanel(self.project, self.caller)
        self.side = ProjectPanel(self.project, self.library.model)
        self.predictions = PredictionsPage(self.project)
        # training jobs (desktop/pages/jobs_panel.py): a bottom dock, shown when a job starts
        self.jobs = JobsManager(self.project, self.caller, self)
        self.jobs_panel = JobsPanel(self.jobs)
        self.jobs_dock = QtWidgets.QDockWidget("Jobs", self)
        self.jobs_dock.setObjectName("jobs-dock")
        self.jobs_dock.setWidget(self.jobs_panel)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.BottomDockWidgetArea, self.jobs_dock)
        self.jobs_dock.hide()
        self.suggest_queue: list[int] = []
        self.suggest_count = 0          # how many suggestions the last "suggest next" made
        self.pages = QtWidgets.QStackedWidget()
        for w in (self.library, self.viewer, self.mae, self.predictions):
            self.pages.addWidget(w)
        side_frame = QtWidgets.QFrame()
        side_frame.setObjectName("sidepanel")
        side_frame.setStyleSheet(f"QFrame#sidepanel {{ background: {theme.PANEL}; border-right: 1px solid {theme.BORDER}; }}")
        sl = QtWidgets.QVBoxLayout(side_frame)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(self.side)
        side_scroll = QtWidgets.QScrollArea()      # the filters scroll on a short screen (1280×720)
        side_scroll.setWidgetResizable(True)
        side_scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        side_scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        side_scroll.setWidget(side_frame)
        side_scroll.setMinimumWidth(side_frame.minimumSizeHint().width())
        self.split = QtWidgets.QSplitter()
        self.split.addWidget(side_scroll)
        self.split.addWidget(self.pages)
        self.split.setStretchFactor(1, 1)
        self.split.setCollapsible(1, False)
        self.split.setSizes([270, 1200])
        self.split.setHandleWidth(1)
        self.central = QtWidgets.QStackedWidget()
        self.central.addWidget(self.start)
        self.central.addWidget(self.split)
        self.setCentralWidget(self.central)

        # status bar
        self.pixel_label = QtWidgets.QLabel()
        self.pixel_label.setMinimumWidth(260)
        self.job_status = JobStatus()
        self.scan_problems = ScanProblemsButton()
        self.statusBar().addPermanentWidget(self.scan_problems)
        self.statusBar().addPermanentWidget(self.pixel_label)
        self.statusBar().addPermanentWidget(self.job_status)
        self.statusBar().setSizeGripEnabled(True)

        self._build_actions()
        self._build_menus_and_toolbar()
        self._connect()
        self.start.set_recent(self.settings.recent_projects())
        self._update_enabled()
        geo = self.settings.value("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        else:
            self.resize(1440, 900)

    # -- actions ----------------------------------------------------------------------------------------
    def _act(self, aid: str, text: str, slot, icon: str | None = None, checkable=False) -> QtGui.QAction:
        a = QtGui.QAction(text, self)
        if icon:
            a.setIcon(theme.icon(icon))
        keys = keys_for(aid)
        if keys:
            a.setShortcuts(keys)
            a.setShortcutContext(QtCore.Qt.ShortcutContext.WindowShortcut)
            tip = f"{text.replace('…', '')} ({keys[0].toString(QtGui.QKeySequence.SequenceFormat.NativeText)})"
            a.setToolTip(tip)
        a.setCheckable(checkable)
        a.triggered.connect(slot)
        self.addAction(a)
        self.actions_by_id[aid] = a
        return a

    def _build_actions(self) -> None:
        self.actions_by_id: dict[str, QtGui.QAction] = {}
        A = self._act
        A("open_folder", "Open folder…", self.choose_folder, "open-folder")
        A("open_project", "Open project…", self.choose_project, "open-project")
        A("open_demo", "Open demo project", self.open_demo, "demo")
        A("rescan", "Rescan folder", self.project.rescan, "resample")
        A("close_project", "Close project", self.close_project)
        A("quit", "Quit", self.close)
        A("show_library", "Library", lambda: self.show_page("library"), "library", checkable=True)
        A("show_viewer", "Viewer", lambda: self.show_page("viewer"), "viewer", checkable=True)
        A("show_mae", "MAE panel", lambda: self.show_page("mae"), "reconstruct", checkable=True)
        A("show_predictions", "Predictions", lambda: self.show_page("predictions"), "gradcam", checkable=True)
        self.page_group = QtGui.QActionGroup(self)
        for aid in ("show_library", "show_viewer", "show_mae", "show_predictions"):
            self.page_group.addAction(self.actions_by_id[aid])
        A("search", "Search", self.focus_search, "search")
        A("back", "Back to library", self.back)
        undo = self.project.undo_stack.createUndoAction(self, "Undo")
        undo.setIcon(theme.icon("undo"))
        undo.setShortcuts(keys_for("undo"))
        redo = self.project.undo_stack.createRedoAction(self, "Redo")
        redo.setIcon(theme.icon("redo"))
        redo.setShortcuts(keys_for("redo"))
        for a in (undo, redo):
            self.addAction(a)
        self.actions_by_id["undo"], self.actions_by_id["redo"] = undo, redo
        stack = self.project.undo_stack
        stack.undoTextChanged.connect(lambda text: self._short_undo_text(undo, "Undo", text))
        stack.redoTextChanged.connect(lambda text: self._short_undo_text(redo, "Redo", text))
        for n in range(10):
            a = QtGui.QAction(f"Label {n}", self)
            a.setShortcut(QtGui.QKeySequence(str(n)))
            a.triggered.connect(lambda _c=False, n=n: self.label_key(n))
            self.addAction(a)
            self.actions_by_id[f"label_{n}"] = a
        A("next", "Next image", lambda: self.navigate(+1), "next")
        A("previous", "Previous image", lambda: self.navigate(-1), "previous")
        A("next_unlabeled", "Next unlabeled image", self.next_unlabeled, "next-unlabeled")
        A("tool_navigate", "Navigate", lambda: self.viewer.set_tool("navigate"), "navigate")
        A("tool_brush", "Brush", lambda: self._viewer_tool("brush"), "brush")
        A("tool_eraser", "Eraser", lambda: self._viewer_tool("eraser"), "eraser")
        A("tool_fill", "Fill", lambda: self._viewer_tool("fill"), "fill")
        A("brush_smaller", "Smaller brush", lambda: self.viewer.change_brush(-1))
        A("brush_larger", "Larger brush", lambda: self.viewer.change_brush(+1))
        A("clear_mask", "Clear lesion mask", self.viewer.clear_mask, "clear")
        A("fit", "Fit to window", self.viewer.canvas.fit, "fit")
        A("one_to_one", "Actual pixels (1:1)", self.viewer.canvas.one_to_one, "one-to-one")
        A("zoom_in", "Zoom in", lambda: self.viewer.canvas.zoom_by(1.25))
        A("zoom_out", "Zoom out", lambda: self.viewer.canvas.zoom_by(0.8))
        A("wl_reset", "Reset window / level", lambda: self.viewer.apply_preset("full"), "window-level")
        A("toggle_entropy", "Entropy heatmap", lambda: self.viewer.toggle_overlay("entropy"), "heatmap")
        A("toggle_mae", "MAE mask", lambda: self.viewer.toggle_overlay("mae"), "mae-mask")
        A("resample_mae", "Resample MAE mask", self.viewer.resample_mae, "resample")
        A("toggle_lesion", "Lesion mask", lambda: self.viewer.toggle_overlay("lesion"), "lesion")
        A("toggle_gradcam", "Grad-CAM", lambda: self.viewer.toggle_overlay("gradcam"), "gradcam")
        A("shortcuts", "Keyboard shortcuts", self.show_shortcuts, "keyboard")
        A("add_class", "Add class…", self.side.add_class, "add")
        A("rename_class", "Rename class…", self.side.rename_class, "rename")
        A("about", "About MedSSL Studio", self.show_about, "help")
        A("job_pretrain", "Pretrain encoder…", lambda: self.launch_job("pretrain"))
        A("job_finetune", "Fine-tune classifier…", lambda: self.launch_job("finetune"))
        A("job_ensemble", "Build ensemble…", lambda: self.launch_job("ensemble"))
        A("job_predict", "Predict folder…", lambda: self.launch_job("predict"))
        A("job_study", "Run study…", self.launch_study)
        A("show_studies", "Studies…", self.show_studies)
        A("show_duplicates", "Near-duplicates…", self.show_duplicates)
        A("next_suggested", "Next suggested image", self.next_suggested, "next-unlabeled")
        A("show_runs", "Runs browser…", self.show_runs)
        A("show_case", "Case of this image…", self.show_case)
        A("review_predictions", "Review predictions…", self.show_review)
        A("show_weights", "ImageNet weights…", self.show_weights)
        self.actions_by_id["next_suggested"].setShortcut(QtGui.QKeySequence("Ctrl+Shift+N"))
        self.actions_by_id["show_jobs"] = self.jobs_dock.toggleViewAction()
        self.actions_by_id["show_jobs"].setText("Jobs panel")

    UNDO_BUTTON_PX = 150

    def _short_undo_text(self, action: QtGui.QAction, verb: str, text: str) -> None:
        """The toolbar button shows "Undo <edit>" elided to a fixed width (a long file name in the edit's
        text pushed the rest of the toolbar off the window); the menu and the tooltip keep it whole."""
        full = f"{verb} {text}" if text else verb
        action.setIconText(self.fontMetrics().elidedText(full, QtCore.Qt.TextElideMode.ElideMiddle,
                                                         self.UNDO_BUTTON_PX))
        action.setToolTip(full)

    def _build_menus_and_toolbar(self) -> None:
        a = self.actions_by_id
        mb = self.menuBar()
        m = mb.addMenu("&File")
        for aid in ("open_folder", "open_project", "open_demo"):
            m.addAction(a[aid])
        self.recent_menu = m.addMenu("Recent projects")
        m.addSeparator()
        m.addAction(a["rescan"])
        m.addAction(a["close_project"])
        m.addSeparator()
        m.addAction(a["quit"])
        m = mb.addMenu("&Edit")
        m.addAction(a["undo"])
        m.addAction(a["redo"])
        m.addSeparator()
        for aid in ("tool_navigate", "tool_brush", "tool_eraser", "tool_fill", "clear_mask"):
            m.addAction(a[aid])
        m.addSeparator()
        m.addAction(a["add_class"])
        m.addAction(a["rename_class"])
        m.addSeparator()
        m.addAction(a["show_duplicates"])
        m = mb.addMenu("&Train")
        for aid in ("job_pretrain", "job_finetune", "job_ensemble", "job_predict", "job_study"):
            m.addAction(a[aid])
        m.addSeparator()
        m.addAction(a["show_jobs"])
        m.addAction(a["show_studies"])
        m.addAction(a["show_runs"])
        m.addAction(a["review_predictions"])
        m.addAction(a["show_weights"])
        m.addAction(a["next_suggested"])
        m = mb.addMenu("&View")
        for aid in ("show_library", "show_viewer", "show_mae", "show_predictions"):
            m.addAction(a[aid])
        m.addSeparator()
        for aid in ("next", "previous", "next_unlabeled"):
            m.addAction(a[aid])
        m.addAction(a["show_case"])
        m.addSeparator()
        for aid in ("fit", "one_to_one", "zoom_in", "zoom_out", "wl_reset"):
            m.addAction(a[aid])
        m.addSeparator()
        for aid in ("toggle_entropy", "toggle_mae", "resample_mae", "toggle_lesion", "toggle_gradcam"):
            m.addAction(a[aid])
        m = mb.addMenu("&Help")
        m.addAction(a["shortcuts"])
        m.addAction(a["about"])

        tb = QtWidgets.QToolBar("Main")
        tb.setObjectName("main-toolbar")
        tb.setMovable(False)
        tb.setIconSize(QtCore.QSize(20, 20))
        tb.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        tb.addAction(a["open_folder"])
        tb.addSeparator()
        for aid in ("show_library", "show_viewer", "show_mae", "show_predictions"):
            tb.addAction(a[aid])
        tb.addAction(a["show_jobs"])
        tb.addSeparator()
        tb.addAction(a["undo"])
        tb.addAction(a["redo"])
        spacer = QtWidgets.QWidget()
        spacer.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Preferred)
        tb.addWidget(spacer)
        self.project_label = ElidedLabel(mode=QtCore.Qt.TextElideMode.ElideMiddle)
        self.project_label.setObjectName("dim")
        tb.addWidget(self.project_label)
        tb.addAction(a["shortcuts"])
        self.addToolBar(tb)
        self.toolbar = tb

    def _connect(self) -> None:
        p = self.project
        self.start.openFolder.connect(self.choose_folder)
        self.start.openProject.connect(self.choose_project)
        self.start.openDemo.connect(self.open_demo)
        self.start.openRecent.connect(lambda path: self.open_path(path))
        p.jobStarted.connect(self.job_status.track)
        p.message.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        p.error.connect(lambda text: QtWidgets.QMessageBox.warning(self, "MedSSL Studio", text))
        p.editApplied.connect(self._edit_applied)
        p.itemsReset.connect(self._update_title)
        p.scanFinished.connect(lambda result: self.scan_problems.set_problems(
            result.errors, result.counts.get("label_conflicts") or [], result.counts.get("identical_files") or []))
        p.opened.connect(lambda _paths: self.scan_problems.clear())
        p.closed.connect(self.scan_problems.clear)
        self.library.openItem.connect(self.open_item)
        self.viewer.navigate.connect(self.navigate)
        self.viewer.nextUnlabeled.connect(self.next_unlabeled)
        self.viewer.statusText.connect(self.pixel_label.setText)
        self.viewer.message.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        self.viewer.itemShown.connect(lambda it: self.mae.show_item(it))
        self.mae.message.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        self.predictions.message.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        self.predictions.openImage.connect(self.open_prediction)
        self.predictions.suggested.connect(self.start_suggestions)
        self.jobs.runFinished.connect(self._job_finished)
        self.pages.currentChanged.connect(lambda _i: self._update_enabled())
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)

    def prewarm(self) -> None:
        """Polish, lay out and paint every page once, offscreen (call before showing the window).

        The first show of the workspace otherwise costs a few hundred ms of style sheet polishing and
        font loading right when the user opens a folder; behind the splash screen nobody notices.
        """
        self.central.setCurrentWidget(self.split)
        for page in (self.mae, self.viewer, self.library):
            self.pages.setCurrentWidget(page)
            self.split.grab()
        self.central.setCurrentWidget(self.start)
        self.start.grab()
        # Everything alive now (torch, Qt, numpy) lives as long as the app. Move it out of the cyclic
        # garbage collector's reach: a full collection over millions of start-up objects holds the
        # GIL for 100+ ms, which is a visible stall whenever a worker allocates a lot (a scan).
        import gc

        gc.collect()
        gc.freeze()

    # -- project ----------------------------------------------------------------------------------------
    def choose_folder(self) -> None:
        start = str(self.project.paths.folder.parent) if self.project.paths else str(Path.home())
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Open an image folder", start)
        if path:
            self.open_path(path)

    def choose_project(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open a MedSSL project", str(Path.home()),
                                                        "MedSSL project (project.db);;All files (*)")
        if path:
            self.open_path(path)

    def confirm_stop_jobs(self, doing: str) -> bool:
        """Ask before ``doing`` (e.g. "Opening another folder") stops this window's jobs. True: go ahead."""
        titles = self.jobs.active_titles()
        if not titles:
            return True
        more = f" and {len(titles) - 1} queued job{'s' if len(titles) > 2 else ''}" if len(titles) > 1 else ""
        answer = QtWidgets.QMessageBox.question(
            self, "A job is running",
            f"{titles[0]}{more} is still in progress.\n\n{doing} stops it: it saves a checkpoint first, and "
            "Resume in the jobs panel continues it when you open this project again.\n\nStop it now?",
            QtWidgets.QMessageBox.StandardButton.Yes | QtWidgets.QMessageBox.StandardButton.Cancel,
            QtWidgets.QMessageBox.StandardButton.Cancel)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    def open_path(self, path: str | Path) -> bool:
        if not self.confirm_stop_jobs("Opening another folder"):
            return False
        self.jobs.shutdown("another folder was opened")
        try:
            paths = self.project.open(path)
        except Exception as exc:  # shown to the user, never a crash
            log.exception("open failed")
            QtWidgets.QMessageBox.warning(self, "Open", f"Cannot open {path}:\n{exc}")
            return False
        self.thumbs.set_cache_dir(paths.thumbs_dir)
        self.settings.add_recent(paths.folder)
        self.start.set_recent(self.settings.recent_projects())
        self.viewer.show_item(None)
        self.central.setCurrentWidget(self.split)
        self.show_page("library")
        self._update_title()
        self._update_enabled()
        if not paths.folder_writable:
            self.statusBar().showMessage(f"{paths.folder} is read-only: the project is kept in {paths.project_dir}",
                                         10000)
        return True

    def open_demo(self) -> None:
        folder = demo_folder()
        if demo_ready(folder):
            self.open_path(folder)
            return
        if self.demo_runner is not None and self.demo_runner.running:
            return
        from core.data.demo import generate_demo
        from core.jobs import Job

        runner = JobRunner(Job("Making the demo data", lambda ctx: generate_demo(folder, ctx=ctx)), self)
        runner.finished.connect(lambda out: self.open_path(out))
        runner.failed.connect(lambda msg: QtWidgets.QMessageBox.warning(self, "Demo project", msg))
        self.demo_runner = runner
        self.job_status.track(runner)
        runner.start()

    def close_project(self) -> bool:
        if not self.confirm_stop_jobs("Closing the project"):
            return False
        self.jobs.shutdown("the project was closed")
        self.project.close()
        self.thumbs.set_cache_dir(None)
        self.viewer.show_item(None)
        self.start.set_recent(self.settings.recent_projects())
        self.central.setCurrentWidget(self.start)
        self._update_title()
        self._update_enabled()
        return True

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        for f in self.settings.recent_projects():
            self.recent_menu.addAction(str(f), lambda f=f: self.open_path(f))
        if self.recent_menu.isEmpty():
            a = self.recent_menu.addAction("(none yet)")
            a.setEnabled(False)

    def _update_title(self) -> None:
        if self.project.paths is None:
            self.setWindowTitle("MedSSL Studio")
            self.project_label.setText("")
            return
        folder = self.project.paths.folder
        self.setWindowTitle(f"{folder.name} — MedSSL Studio")
        self.project_label.setText(f"{folder}  ")

    # -- pages ------------------------------------------------------------------------------------------
    def show_page(self, name: str) -> None:
        if not self.project.is_open:
            return
        page = {"library": self.library, "viewer": self.viewer, "mae": self.mae,
                "predictions": self.predictions}[name]
        if name in ("viewer", "mae") and self.viewer.item is None:
            it = self.library.current_item() or self.library.model.item_at(0)
            if it is not None:
                self.open_item(it, switch=False)
        self.pages.setCurrentWidget(page)
        self.actions_by_id[f"show_{name}"].setChecked(True)
        if name == "library":
            self.library.select_item(self.viewer.item)
            self.library.grid.setFocus()
        elif name == "viewer":
            self.viewer.canvas.setFocus()

    def current_page(self) -> str:
        w = self.pages.currentWidget()
        if w is self.predictions:
            return "predictions"
        return "library" if w is self.library else "viewer" if w is self.viewer else "mae"

    def _update_enabled(self) -> None:
        is_open = self.project.is_open
        page = self.current_page() if is_open else None
        in_image = page in ("viewer", "mae")
        for aid in ("show_library", "show_viewer", "show_mae", "show_predictions", "rescan", "close_project",
                    "search", "add_class", "rename_class", "job_pretrain", "job_finetune", "job_ensemble",
                    "job_predict", "job_study", "next_suggested", "show_runs", "show_studies",
                    "show_duplicates", "show_case", "review_predictions"):
            self.actions_by_id[aid].setEnabled(is_open)
        for aid in ("next", "previous"):
            # in the library the grid moves its own selection with the arrow keys
            self.actions_by_id[aid].setEnabled(is_open)
            keys = keys_for(aid)
            self.actions_by_id[aid].setShortcuts(keys if in_image else [k for k in keys if k.toString() in "JK"])
        for aid in ("tool_navigate", "tool_brush", "tool_eraser", "tool_fill", "brush_smaller", "brush_larger",
                    "clear_mask", "fit", "one_to_one", "zoom_in", "zoom_out", "wl_reset", "toggle_entropy",
                    "toggle_mae", "resample_mae", "toggle_lesion", "toggle_gradcam"):
            self.actions_by_id[aid].setEnabled(page == "viewer")
        self.actions_by_id["back"].setEnabled(in_image)
        for n in range(10):
            self.actions_by_id[f"label_{n}"].setEnabled(is_open)
        self.actions_by_id["next_unlabeled"].setEnabled(is_open)

    def focus_search(self) -> None:
        self.show_page("library")
        self.library.search.setFocus()
        self.library.search.selectAll()

    def back(self) -> None:
        if self.current_page() != "library":
            self.show_page("library")

    # -- items / navigation ----------------------------------------------------------------------------
    def open_item(self, item: Item, switch: bool = True, position: tuple[int, int] | None = None,
                  counting: str = "") -> None:
        """Show ``item`` in the viewer; the counter says its library row unless ``position`` says otherwise."""
        model = self.library.model
        row = model.row_of(item)
        if position is None and row >= 0:
            position = (row, len(model.rows))
        self.viewer.show_item(item, position, counting)
        self.library.select_item(item)
        if switch and self.current_page() == "library":
            self.show_page("viewer")

    def label_target(self) -> Item | None:
        if self.current_page() == "library":
            return self.library.current_item()
        return self.viewer.item

    def label_key(self, n: int) -> None:
        if not self.project.is_open:
            return
        if self.current_page() == "library":
            it = self.library.current_item()
            if it is None:
                self.statusBar().showMessage("Select an image first.", 3000)
                return
            if self.viewer.item is not it:
                self.viewer.show_item(it)
        self.viewer.assign_index(n)

    def navigate(self, delta: int) -> None:
        model = self.library.model
        if not model.rows:
            return
        current = self.label_target()
        row = model.row_of(current)
        new = 0 if row < 0 else max(0, min(len(model.rows) - 1, row + delta))
        if row >= 0 and new == row:
            self.statusBar().showMessage("Last image." if delta > 0 else "First image.", 2000)
            return
        self._go(model.rows[new])

    def _go(self, item: Item) -> None:
        if self.current_page() == "library":
            self.library.select_item(item)
        else:
            self.open_item(item, switch=False)

    def next_unlabeled(self) -> None:
        model = self.library.model
        rows = model.rows
        if not rows:
            return
        start = model.row_of(self.label_target())
        n = len(rows)
        for k in range(1, n + 1):
            it = rows[(start + k) % n]
            if it.label is None and it.image_id is not None:
                self._go(it)
                return
        self.statusBar().showMessage("Every image in this view is labelled.", 4000)

    def _viewer_tool(self, tool: str) -> None:
        self.viewer.set_tool(tool)

    def _edit_applied(self, image_id: int) -> None:
        # undo / redo of an image that is not shown: bring it on screen so the change is visible
        it = self.project.by_id.get(image_id)
        if it is None or self.viewer.item is it:
            return
        if self.current_page() == "library":
            self.library.select_item(it)
        else:
            self.open_item(it, switch=False)

    # -- jobs and predictions (desktop/pages/jobs_panel.py, desktop/pages/predictions.py) --------------------------
    def job_dialog(self, kind: str):
        from desktop.widgets.job_dialogs import DIALOGS

        return DIALOGS[kind](self.project, self.settings, self)

    def launch_job(self, kind: str, dialog=None) -> int | None:
        """Show the dialog for ``kind`` (or use ``dialog``, already accepted) and queue the job."""
        if not self.project.ready:
            self.statusBar().showMessage("Open a project first.", 4000)
            return None
        dlg = dialog or self.job_dialog(kind)
        if dialog is None and dlg.exec() != QtWidgets.QDialog.DialogCode.Accepted:
            return None
        try:
            rid = self.jobs.submit(*dlg.request())
        except Exception as exc:  # shown, never a crash
            log.exception("cannot start job")
            QtWidgets.QMessageBox.warning(self, "Start job", str(exc))
            return None
        self.jobs_dock.show()
        self.jobs_panel.select_run(rid)
        return rid

    def launch_study(self, dialog=None) -> int | None:
        """The Study dialog, then the "study" run (the job `medssl study` runs)."""
        from desktop.widgets.study_dialog import StudyDialog

        if not self.project.ready:
            self.statusBar().showMessage("Open a project first.", 4000)
            return None
        dlg = dialog or StudyDialog(self.project, self.settings, self)
        if dialog is None and dlg.exec() != QtWidgets.QDialog.DialogCode.Accepted:
            return None
        return self.launch_job("study", dlg)

    def show_studies(self):
        from desktop.pages.studies_page import StudiesDialog

        if not self.project.ready:
            return None
        dlg = StudiesDialog(self.project, self)
        dlg.show()
        return dlg

    def show_duplicates(self):
        from desktop.pages.duplicates_page import DuplicatesDialog

        if not self.project.ready:
            return None
        dlg = DuplicatesDialog(self.project, self.thumbs, self)
        dlg.show()
        return dlg

    def show_runs(self):
        from desktop.pages.runs_browser import RunsBrowser

        if not self.project.ready:
            return None
        dlg = RunsBrowser(self.project, self)
        dlg.show()
        return dlg

    def show_case(self):
        """All images of the current image's case (desktop/pages/case_view.py)."""
        from desktop.pages.case_view import CaseView

        if not self.project.ready:
            return None
        dlg = CaseView(self.project, self.thumbs, self.label_target(), self)
        dlg.openImage.connect(self.show_image)
        dlg.show()
        return dlg

    def show_image(self, image_id: int) -> None:
        it = self.project.by_id.get(image_id)
        if it is not None:
            self.open_item(it, switch=False)
            self.show_page("viewer")

    def show_review(self):
        """Step through predictions worth a second look (desktop/pages/review.py)."""
        from desktop.pages.review import ReviewDialog

        if not self.project.ready:
            return None
        dlg = ReviewDialog(self.project, parent=self)
        dlg.show()
        return dlg

    def show_weights(self):
        """The ImageNet weights page (works without an open project: weights are per user)."""
        from desktop.pages.weights_page import WeightsDialog

        dlg = WeightsDialog(self)
        dlg.show()
        return dlg

    def _job_finished(self, rid: int, kind: str) -> None:
        if kind == "pretrain":
            self.mae.reload_checkpoints()          # the new run is offered by name
        elif kind == "ensemble":
            self.viewer.refresh_ensembles()
        if kind == "predict":
            self.predictions.refresh()
            self.project.reload_predictions()   # library badges, filters and sort by prediction / uncertainty
        self.statusBar().showMessage(f"Job #{rid} ({kind}) finished.", 6000)

    def open_prediction(self, image_id: int, ensemble: str = "") -> None:
        it = self.project.by_id.get(image_id)
        if it is None:
            return
        if ensemble and Path(ensemble).is_file() and self.viewer.ensemble_path() != ensemble:
            self.viewer.set_ensemble(ensemble)
        self.open_item(it, switch=False)
        self.show_page("viewer")
        if self.viewer.ov_cam.check.isEnabled():
            self.viewer.ov_cam.set_checked(True)

    def start_suggestions(self, ids: list) -> None:
        self.suggest_queue = list(ids)
        self.suggest_count = len(ids)
        if ids:
            self.statusBar().showMessage(f"{len(ids)} images suggested for labelling: label with 1–9, "
                                         "Ctrl+Shift+N for the next suggestion.", 10000)
            self.next_suggested()

    def next_suggested(self) -> None:
        while self.suggest_queue:
            it = self.project.by_id.get(self.suggest_queue.pop(0))
            if it is not None and it.label is None:
                done = self.suggest_count - len(self.suggest_queue)
                self.open_item(it, switch=False, position=(done - 1, self.suggest_count), counting="suggestion")
                self.show_page("viewer")
                return
        self.statusBar().showMessage("No more suggested images: run Suggest next again.", 5000)

    # -- help -------------------------------------------------------------------------------------------
    def show_shortcuts(self) -> None:
        ShortcutsDialog(self).exec()

    def show_about(self) -> None:
        from core import __version__

        QtWidgets.QMessageBox.about(
            self, "About MedSSL Studio",
            f"<b>MedSSL Studio {__version__}</b><p>Offline annotation and self-supervised pretraining for "
            "medical images.</p><p>Every change is stored in the project file the moment it is made.</p>")

    # -- lifetime ---------------------------------------------------------------------------------------
    def closeEvent(self, ev: QtGui.QCloseEvent) -> None:
        # every edit is already committed to the store: only a running job is worth a question
        if not self.confirm_stop_jobs("Quitting"):
            ev.ignore()
            return
        self.settings.set_value("window/geometry", self.saveGeometry())
        self.settings.sync()
        if self.demo_runner is not None and self.demo_runner.running:
            self.demo_runner.cancel()
        self.jobs.shutdown("the app was closed")
        self.project.close(wait=True)
        self.thumbs.shutdown()
        self.caller.shutdown()
        super().closeEvent(ev)
