"""Desktop building blocks without the main window: job bridge, async calls, thumbnails, mask edits,
project paths, the scan process, the command line."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui

from desktop.bridge import mask_ops# noqa: E402


# -- jobs bridge -------------------------------------------------------------------------------------------
def test_job_runner_relays_progress_result_and_errors(qtbot):
    from core.jobs import Job
    from desktop.bridge.jobs_bridge import JobRunner

    def work(ctx):
        for i in range(1, 201):
            ctx.progress(i, 200, f"file {i}")
        return "ok"

    runner = JobRunner(Job("work", work))
    seen = []
    runner.progress.connect(lambda step, total, msg, metrics: seen.append((step, total)))
    with qtbot.waitSignal(runner.finished, timeout=5000) as blocker:
        runner.start()
    assert blocker.args == ["ok"]
    assert seen[-1] == (200, 200)           # the last step always arrives
    assert len(seen) < 200                  # ... but not every one (throttled)

    def boom(ctx):
        raise ValueError("bad file")

    runner = JobRunner(Job("boom", boom))
    with qtbot.waitSignal(runner.failed, timeout=5000) as blocker:
        runner.start()
    assert "bad file" in blocker.args[0]


def test_job_runner_cancel(qtbot):
    from core.jobs import Job
    from desktop.bridge.jobs_bridge import JobRunner

    def slow(ctx):
        for i in range(1000):
            ctx.check_cancelled()
            time.sleep(0.01)

    runner = JobRunner(Job("slow", slow))
    runner.start()
    qtbot.wait(50)
    with qtbot.waitSignal(runner.cancelled, timeout=5000):
        runner.cancel()
    assert not runner.running


def test_async_caller_keeps_only_the_newest_answer(qtbot):
    from desktop.bridge.jobs_bridge import AsyncCaller

    caller = AsyncCaller(workers=1)
    got = []
    for n in range(5):
        caller.submit(lambda n=n: (time.sleep(0.02), n)[1], got.append, key="k")
    qtbot.waitUntil(lambda: caller.pending == 0, timeout=5000)
    assert got == [4]
    errors = []
    caller.submit(lambda: 1 / 0, got.append, errors.append)
    qtbot.waitUntil(lambda: caller.pending == 0, timeout=5000)
    assert errors and "division" in errors[0]
    caller.shutdown()


# -- thumbnails -------------------------------------------------------------------------------------------
def test_thumbnails_decode_in_workers_and_cache_on_disk(qtbot, tmp_path):
    from PIL import Image

    from desktop.bridge.thumbs import ThumbnailService

    img = tmp_path / "a.png"
    Image.fromarray((np.arange(300 * 200) % 255).astype(np.uint8).reshape(200, 300)).save(img)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not a png")
    cache = tmp_path / "thumbs"
    svc = ThumbnailService(cache, size=64)
    assert svc.get(str(img)) is None                     # a miss queues the file
    with qtbot.waitSignal(svc.thumbnailReady, timeout=5000):
        pass
    pm = svc.get(str(img))
    assert pm is not None and max(pm.width(), pm.height()) == 64
    assert len(list(cache.glob("*.png"))) == 1
    svc.get(str(bad))
    qtbot.waitUntil(lambda: svc.error_for(str(bad)) is not None, timeout=5000)
    svc.shutdown()
    # a new service (next session) reads the disk cache
    svc2 = ThumbnailService(cache, size=64)
    svc2.get(str(img))
    with qtbot.waitSignal(svc2.thumbnailReady, timeout=5000):
        pass
    assert svc2.get(str(img)) is not None
    svc2.shutdown()


# -- mask edits -------------------------------------------------------------------------------------------
def test_brush_line_fill_outline_and_packing():
    m = np.zeros((40, 40), dtype=bool)
    box = mask_ops.stamp_line(m, (5.0, 5.0), (30.0, 5.0), 2.0, True)
    assert box is not None and m[5, 5] and m[5, 30] and not m[10, 10]
    assert mask_ops.stamp_line(m, (-50.0, -50.0), (-40.0, -40.0), 2.0, True) is None
    mask_ops.stamp_line(m, (5.0, 5.0), (30.0, 5.0), 2.0, False)
    assert not m.any()
    # a closed square outline is filled from inside, an open region is refused
    sq = np.zeros((40, 40), dtype=bool)
    sq[10, 10:31] = sq[30, 10:31] = sq[10:31, 10] = sq[10:31, 30] = True
    filled = mask_ops.flood_fill(sq, 20, 20)
    assert filled is not None and filled[20, 20] and filled[11:30, 11:30].all() and not filled[5, 5]
    assert mask_ops.flood_fill(sq, 2, 2) is None            # touches the border: not enclosed
    edge = mask_ops.outline(filled)
    assert edge[10, 20] and not edge[20, 20]
    back = mask_ops.unpack(mask_ops.pack(filled))
    assert np.array_equal(back, filled)


# -- project paths / rows -------------------------------------------------------------------------------
def test_project_lives_in_the_folder_or_in_user_data_when_read_only(tmp_path, monkeypatch):
    from desktop import settings

    monkeypatch.setenv("MEDSSL_DATA_DIR", str(tmp_path / "user"))
    folder = tmp_path / "images"
    folder.mkdir()
    p = settings.locate_project(folder)
    assert p.folder_writable and p.store_path == folder / ".medssl" / "project.db"
    assert p.thumbs_dir == folder / ".medssl" / "thumbs"
    monkeypatch.setattr(settings, "_writable", lambda _f: False)
    p = settings.locate_project(folder)
    assert not p.folder_writable
    assert p.project_dir.parent == tmp_path / "user" / "projects"
    assert p.project_dir.name.startswith("images-")


def test_recent_projects(tmp_path, qapp):
    from desktop.settings import Settings

    s = Settings(tmp_path / "d.ini")
    folders = []
    for n in range(12):
        f = tmp_path / f"p{n}"
        f.mkdir()
        folders.append(f)
        s.add_recent(f)
    s.add_recent(folders[3])
    recent = s.recent_projects()
    assert recent[0] == folders[3] and len(recent) == 10
    assert Settings(tmp_path / "d.ini").recent_projects() == recent


def test_quick_listing_skips_masks_and_hidden(tmp_path):
    from desktop.bridge.rows import quick_listing

    for rel in ("a/x.png", "a/x_mask.png", "a/x_mask_1.png", "b/y.JPG", ".medssl/thumbs/t.png", "notes.txt",
                "c/d/z.dcm"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    assert [it.rel_path for it in quick_listing(tmp_path)] == ["a/x.png", "b/y.JPG", "c/d/z.dcm"]


def test_scan_process_imports_and_reports(tmp_path):
    from core.jobs import Job
    from core.project.store import ProjectStore
    from desktop.bridge.scan_process import run_scan

    from PIL import Image

    for n in range(3):
        (tmp_path / "imgs" / "cls").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40), n * 60, np.uint8)).save(tmp_path / "imgs" / "cls" / f"i{n}.png")
    store_path = tmp_path / "imgs" / ".medssl" / "project.db"
    early, stores = [], []

    def fn(ctx):
        return run_scan(ctx, store_path, tmp_path / "imgs", True, on_rows=early.append,
                        on_store=lambda: stores.append(1))

    rows, counts, errors = Job("scan", fn).run()
    assert [it.rel_path for it in early[0]] == ["cls/i0.png", "cls/i1.png", "cls/i2.png"]   # quick listing
    assert stores == [1] and counts["new"] == 3 and errors == []
    assert all(it.image_id is not None and it.label == "cls" for it in rows)
    with ProjectStore(store_path) as store:
        assert len(store.images()) == 3


def test_a_scan_cancelled_while_it_reports_progress_stops(tmp_path):
    """The cancel reached the scan process only when no message had come for 0.1 s, which never happens
    while it reports progress every 50 ms: the scan of a large folder ran to its end (a 5 s freeze when
    another folder was opened mid-scan)."""
    from core.jobs import Job, JobCancelled
    from desktop.bridge.scan_process import run_scan

    from PIL import Image

    folder = tmp_path / "imgs" / "cls"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = 1500
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(folder / f"i{k}.png")
    seen = []

    def fn(ctx):
        real = ctx.progress

        def progress(step, total=None, message="", **metrics):
            seen.append(step)
            if len(seen) == 3:
                job.cancel()                      # as the window's Cancel does, mid-scan
            real(step, total, message, **metrics)

        ctx.progress = progress
        return run_scan(ctx, tmp_path / "imgs" / ".medssl" / "project.db", tmp_path / "imgs", True,
                        on_rows=lambda rows: None, on_store=lambda: None)

    job = Job("scan", fn)
    with pytest.raises(JobCancelled):
        job.run()
    assert max(s for s in seen if s is not None) < n


def test_app_version_and_help(capsys):
    from desktop.app import build_parser, main

    assert main(["--version"]) == 0
    assert "medssl-studio" in capsys.readouterr().out
    help_text = build_parser().format_help()
    assert "PROJECT" in help_text.upper() or "path" in help_text


def test_labelled_percentage_never_rounds_up_to_done():
    from desktop.pages.library import whole_percent

    assert whole_percent(778, 779) == 99
    assert whole_percent(779, 779) == 100
    assert whole_percent(0, 0) == 0 and whole_percent(1, 3) == 33


# -- issue 17, item 10: natural order, pinned columns, captions --------------------------------------------
def test_file_name_sort_is_by_file_name_in_natural_order():
    from desktop.bridge.rows import Item
    from desktop.pages.library import _sort_key

    items = [Item(f"/d/{rel}", rel) for rel in ("malignant/img (2).png", "benign/img (10).png",
                                                "benign/img (1).png", "benign/IMG (3).png")]
    names = [it.rel_path for it in sorted(items, key=_sort_key("name"))]
    assert names == ["benign/img (1).png", "malignant/img (2).png", "benign/IMG (3).png", "benign/img (10).png"]
    cases = [Item("/d/a.png", "a.png", case_id="case10"), Item("/d/b.png", "b.png", case_id="case9")]
    assert [it.case_id for it in sorted(cases, key=_sort_key("case"))] == ["case9", "case10"]


def test_predictions_table_sorts_image_names_naturally(qtbot):
    from PySide6 import QtCore

    from desktop.pages.predictions import PredictionsFilter, PredictionsModel, PredRow, place_by_name

    names = ["benign (1).png", "benign (10).png", "benign (11).png", "benign (2).png", "benign (3).png"]
    model = PredictionsModel()
    rows = place_by_name([PredRow(i, n, f"benign/{n}", "benign", "benign", {"benign": 1.0})
                          for i, n in enumerate(names)])                  # as load_rows leaves them
    model.set_data(rows[::-1], ["benign"], [])
    assert not model.show_more(100)
    proxy = PredictionsFilter()
    proxy.setSourceModel(model)
    proxy.sort(1, QtCore.Qt.SortOrder.DescendingOrder)
    proxy.sort(1, QtCore.Qt.SortOrder.AscendingOrder)
    shown = [proxy.index(r, 1).data() for r in range(proxy.rowCount())]
    assert shown == ["benign (1).png", "benign (2).png", "benign (3).png", "benign (10).png", "benign (11).png"]


def test_pinned_columns_stay_in_place_when_the_table_scrolls_sideways(qtbot):
    from PySide6 import QtGui

    from desktop.widgets.frozen_table import FrozenColumnsTable

    model = QtGui.QStandardItemModel(30, 12)
    for r in range(30):
        model.setItem(r, 0, QtGui.QStandardItem(str(r + 1)))
        model.setItem(r, 1, QtGui.QStandardItem(f"image ({r + 1}).png"))
        for c in range(2, 12):
            model.setItem(r, c, QtGui.QStandardItem(f"{(r * c) % 7 / 7:.3f}"))
    table = FrozenColumnsTable(frozen=2)
    table.setModel(model)
    table.resize(420, 300)
    qtbot.addWidget(table)
    table.show()
    qtbot.waitExposed(table)
    pinned = table.columnWidth(0) + table.columnWidth(1)

    def left_part():
        return table.grab().toImage().copy(0, 0, pinned, 280)

    before = left_part()
    bar = table.horizontalScrollBar()
    assert bar.maximum() > 200                 # the member columns do not fit: there is something to scroll
    bar.setValue(bar.maximum())
    qtbot.wait(50)
    assert left_part() == before               # "#" and "Image" stayed where they were, pixel for pixel
    table.verticalScrollBar().setValue(table.verticalScrollBar().maximum())
    qtbot.wait(50)
    assert table.frozen.verticalScrollBar().value() == table.verticalScrollBar().value()   # rows in step


def test_thumbnail_caption_keeps_the_uncertainty_whole(qapp):
    from PySide6 import QtGui

    from desktop.bridge.rows import Item
    from desktop.pages.library import ThumbDelegate, caption_parts

    font = QtGui.QFont()
    font.setPointSizeF(9)
    fm = QtGui.QFontMetrics(font)
    width = ThumbDelegate.MIN_W - ThumbDelegate.PAD - 16        # the narrowest tile's text width
    it = Item("/d/x.png", "x.png", image_id=1, prediction="malignant", uncertainty=1.0234)
    left, right = caption_parts(it, fm, width)
    assert right == "u 1.02"
    assert fm.horizontalAdvance(left) + fm.horizontalAdvance(right) <= width
    assert left.startswith("pred ")


def test_a_long_curve_legend_wraps_instead_of_widening_the_plot_past_its_pane(qtbot):
    """The runs browser's panes clipped their per-epoch plots: the title-legend inside pyqtgraph's plot set
    its minimum width."""
    from pathlib import Path

    from desktop.pages.jobs_panel import CurvesWidget, JobEntry

    curves = CurvesWidget()
    qtbot.addWidget(curves)
    curves.resize(520, 220)
    curves.show()
    qtbot.waitExposed(curves)
    e = JobEntry(1, "finetune", "run", {}, Path("."), "finished")
    e.history = [{"epoch": n, "train_loss": 1.0 / n, "val_accuracy": 0.4, "val_balanced_accuracy": 0.4,
                  "val_macro_f1": 0.3, "train_acc": 0.5} for n in (1, 2)]
    curves.show_entry(e)
    qtbot.wait(50)
    plot = curves.val_plot
    assert len(curves.val_curves) == 4
    assert plot.getPlotItem().sceneBoundingRect().width() <= plot.viewport().width() + 1


def test_plot_grid_lines_are_opaque_and_drawn_under_the_curves(qtbot, monkeypatch):
    """Qt's raster engine draws a translucent line ~30x slower than an opaque one: a plot's 15 %-alpha grid
    cost ~25 ms per paint, and Confusion & ROC's first show stalled the window ~100 ms (bench/gui.py). The
    grid is now drawn in the colour the translucent line would have blended to, under the curves."""
    import pyqtgraph as pg
    from PySide6 import QtGui

    from desktop import theme
    from desktop.widgets.plots import app_plot

    drawn = []
    base = pg.AxisItem.drawPicture
    monkeypatch.setattr(pg.AxisItem, "drawPicture",
                        lambda self, p, axis, ticks, texts: drawn.extend(pen for pen, *_ in ticks) or
                        base(self, p, axis, ticks, texts))
    plot = app_plot("ROC", "true positive rate", "false positive rate")
    qtbot.addWidget(plot)
    plot.plot([0, 1], [0, 1])
    plot.resize(400, 300)
    plot.grab()
    assert len(drawn) > 10                                  # the grid lines (and ticks) were drawn
    assert all(pen.color().alpha() == 255 for pen in drawn)
    bg, tick = QtGui.QColor(theme.PANEL), QtGui.QColor(theme.BORDER)      # app_plot's axis pen
    alpha = int(0.15 * 255) / 255                                           # its grid alpha, as pyqtgraph rounds it
    grid = QtGui.QColor.fromRgbF(*(b + (t - b) * alpha for b, t in zip(bg.getRgbF()[:3], tick.getRgbF()[:3])))
    assert grid.name() in {pen.color().name() for pen in drawn}
    for side in ("left", "bottom"):
        assert plot.getPlotItem().getAxis(side).zValue() < plot.getPlotItem().vb.zValue()


def test_epoch_axes_tick_only_whole_numbers(qtbot):
    """The runs browser's wide per-epoch comparison ticked 1.5, 2.5 … between epochs (screenshot at 1280×720)."""
    import pyqtgraph as pg

    from desktop.widgets.plots import app_plot

    epochs = app_plot("", "bal. accuracy", "epoch", whole_x=True)
    fpr = app_plot("", "true positive rate", "false positive rate")
    for plot in (epochs, fpr):
        qtbot.addWidget(plot)
    axis = epochs.getPlotItem().getAxis("bottom")
    for first, last in ((1, 6), (1, 3), (1, 2)):
        ticks = [v for _spacing, vs in axis.tickValues(first, last, 1100) for v in vs]
        assert all(float(v).is_integer() for v in ticks) and set(range(first, last + 1)) <= set(ticks)
    ticks = [v for _spacing, vs in fpr.getPlotItem().getAxis("bottom").tickValues(0, 1, 500) for v in vs]
    assert any(not float(v).is_integer() for v in ticks)               # a rate axis keeps its fractions


def test_a_plots_context_menu_is_made_on_the_first_right_click(qtbot):
    """pyqtgraph builds each view box's menu with the plot (~17 ms); the app's plots make it when asked."""
    from PySide6 import QtCore

    from desktop.widgets.plots import app_plot

    plot = app_plot("Training loss", "loss", "step")
    qtbot.addWidget(plot)
    plot.resize(300, 200)
    plot.show()
    qtbot.waitExposed(plot)
    vb = plot.getPlotItem().vb
    assert vb.menu is None and vb.menuEnabled()
    shown = []
    qtbot.waitUntil(lambda: vb.scene() is not None)
    vb.raiseContextMenu = lambda ev: shown.append(vb.getMenu(ev))     # what a right-click asks for
    qtbot.mouseClick(plot.viewport(), QtCore.Qt.MouseButton.RightButton, pos=plot.viewport().rect().center())
    qtbot.waitUntil(lambda: bool(shown))
    assert shown[0] is vb.menu and vb.menu is not None
    actions = [a.text() for a in vb.getContextMenus(None)]
    assert "View All" in actions


def test_a_dialog_no_test_arranged_returns_at_once_and_is_reported(qtbot, no_unarranged_dialogs):
    """The safety net of tests/conftest.py: offscreen, a real modal dialog would wait forever."""
    from PySide6 import QtWidgets

    button = QtWidgets.QMessageBox.StandardButton
    assert QtWidgets.QMessageBox.warning(None, "Open", "Cannot open x") == button.Ok
    assert QtWidgets.QFileDialog.getExistingDirectory(None, "Choose") == ""
    assert no_unarranged_dialogs == ["QMessageBox.warning: Open: Cannot open x",
                                     "QFileDialog.getExistingDirectory: Choose: "]
    no_unarranged_dialogs.clear()          # seen: the test passes (left there, it fails at teardown)


def test_the_predictions_table_is_not_repainted_when_a_dialog_takes_the_activation(qtbot):
    """Qt's item views repaint their whole viewport on (de)activation; opening the runs browser over a 2000-row
    predictions table cost ~50 ms of repaint for nothing (the app's palette is the same either way)."""
    from PySide6 import QtCore, QtGui, QtWidgets

    from desktop.app import create_app
    from desktop.widgets.frozen_table import FrozenColumnsTable

    create_app()                               # the app's palette: active and inactive alike
    model = QtGui.QStandardItemModel(50, 6)
    paints = []

    class Count(QtCore.QObject):
        def eventFilter(self, obj, ev):  # noqa: N802 (Qt name)
            if ev.type() == QtCore.QEvent.Type.Paint:
                paints.append(obj)
            return False

    tables = [FrozenColumnsTable(frozen=2), QtWidgets.QTableView()]       # the app's table, and Qt's own
    counter = Count()
    for table in tables:
        qtbot.addWidget(table)
        table.setModel(model)
        table.resize(400, 300)
        table.show()
        qtbot.waitExposed(table)
        table.viewport().installEventFilter(counter)
    qtbot.wait(50)
    for table in tables:
        paints.clear()
        QtWidgets.QApplication.sendEvent(table, QtCore.QEvent(QtCore.QEvent.Type.WindowDeactivate))
        qtbot.wait(50)
        tables_painted = [obj for obj in paints if obj is table.viewport()]
        if isinstance(table, FrozenColumnsTable):
            assert tables_painted == []
        else:
            assert tables_painted                 # what Qt does: the check above can tell the difference


def test_the_app_hands_pythons_gil_to_the_ui_thread_within_a_millisecond(qapp):
    """A worker thread (the scan's listing, thumbnail decoders) may hold the GIL for the switch interval each time
    the UI thread asks for it: 5 ms by default, and the UI thread asks hundreds of times a turn (bench/gui.py's
    open: 93-119 ms stalls with 5 ms, 59-66 with 1 ms)."""
    import sys

    from desktop.app import UI_SWITCH_INTERVAL_S, create_app

    sys.setswitchinterval(0.005)
    create_app()
    assert sys.getswitchinterval() == pytest.approx(UI_SWITCH_INTERVAL_S) and UI_SWITCH_INTERVAL_S <= 0.001


# -- fitted image ----------------------------------------------------------------------------------------
def test_a_fitted_image_follows_its_labels_size_up_to_its_largest_and_a_message_replaces_it(qtbot):
    from PySide6 import QtGui

    from desktop.widgets.fitted_image import FittedImage

    label = FittedImage(max_px=300, min_px=50)
    qtbot.addWidget(label)
    label.resize(200, 120)
    label.show()                      # a hidden widget gets its resize events only when shown
    qtbot.waitExposed(label)
    image = QtGui.QImage(400, 200, QtGui.QImage.Format.Format_Grayscale8)
    image.fill(128)
    label.set_image(image)
    assert (label.pixmap().width(), label.pixmap().height()) == (120, 60)   # the short side, aspect kept
    label.resize(800, 800)
    qtbot.waitUntil(lambda: label.pixmap().width() == 300)
    assert label.pixmap().height() == 150                                   # never past max_px
    label.setText("Loading…")
    label.resize(250, 250)                                                  # a resize brings no old image back
    qtbot.waitUntil(lambda: label.size().width() == 250)
    assert label.pixmap().isNull() and label.text() == "Loading…"
