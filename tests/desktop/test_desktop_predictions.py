"""Predictions page (pytest-qt, offscreen): per-member columns, filters, CSV export, confusion/ROC,
"suggest next to label" ordering by disagreement, click -> viewer; CSV import of `medssl predict` rows."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


@pytest.fixture
def window(demo_window):
    return demo_window


CLASSES = ["benign", "malignant", "normal"]


def fake_run(win, n_unlabeled=4):
    """A finished prediction run with two members; the first n images lose their labels."""
    from core.analysis.active import uncertainty

    project, store = win.project, win.project.store
    items = sorted(project.items, key=lambda it: it.image_id)
    for it in items[:n_unlabeled]:
        store.set_label(it.image_id, None)
    rng = np.random.default_rng(0)
    rows, disagreement = [], {}
    for k, it in enumerate(items):
        a = rng.dirichlet(np.ones(3) * 2)
        b = a if k % 2 else rng.dirichlet(np.ones(3) * 0.3)     # odd rows: members agree
        ens = (a + b) / 2
        u = uncertainty(ens[None], np.stack([a[None], b[None]]))
        disagreement[it.image_id] = float(u["disagreement"][0])
        rows.append({"image_id": it.image_id, "label": CLASSES[int(ens.argmax())],
                     "probs": {"ensemble": dict(zip(CLASSES, ens.tolist())),
                               "members": {"A-imagenet": dict(zip(CLASSES, a.tolist())),
                                           "B-mae": dict(zip(CLASSES, b.tolist()))}},
                     "uncertainty": {"entropy": float(u["entropy"][0]), "disagreement": disagreement[it.image_id]}})
    rid = store.add_run("predict", "ensemble on demo", {"ensemble": ""}, state="finished")
    store.add_predictions(rid, rows)
    project.rescan()
    return rid, items, disagreement


def test_table_has_member_columns_filters_and_exports(qtbot, window, tmp_path):
    rid, items, _ = fake_run(window)
    qtbot.waitUntil(lambda: window.project.scan_complete and window.project.has_predictions(), timeout=30000)
    page = window.predictions
    window.show_page("predictions")                             # a hidden page reads its rows when shown
    with qtbot.waitSignal(page.rowsLoaded, timeout=30000):      # rows are read in a worker
        page.refresh()
    assert page.run_combo.currentData() == rid
    m = page.model
    headers = [m.headerData(c, __import__("PySide6").QtCore.Qt.Orientation.Horizontal) for c in range(m.columnCount())]
    for c in CLASSES:
        assert f"p({c})" in headers and f"A-imagenet: p({c})" in headers and f"B-mae: p({c})" in headers
    assert {"Label", "Prediction", "Entropy", "Disagreement", "Correct"} <= set(headers)
    assert m.rowCount() == len(items)
    page.show_combo.setCurrentIndex(page.show_combo.findData("unlabeled"))
    assert page.proxy.rowCount() == 4
    page.show_combo.setCurrentIndex(page.show_combo.findData("incorrect"))
    wrong = [r for r in m.rows if r.correct is False]
    assert page.proxy.rowCount() == len(wrong)
    page.show_combo.setCurrentIndex(page.show_combo.findData("all"))
    col = headers.index("Disagreement")
    page.table.sortByColumn(col, __import__("PySide6").QtCore.Qt.SortOrder.DescendingOrder)
    vals = [float(page.proxy.index(i, col).data()) for i in range(page.proxy.rowCount())]
    assert vals == sorted(vals, reverse=True)
    page.search.setText(items[5].name)
    assert page.proxy.rowCount() == 1
    page.search.setText("")
    from desktop.pages.predictions import export_csv

    out = tmp_path / "preds.csv"
    assert export_csv(out, m, page.proxy) == len(items)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(items) and "B-mae: p(benign)" in rows[0] and rows[0]["path"]


def test_suggest_next_orders_unlabeled_by_disagreement_and_opens_viewer(qtbot, window):
    rid, items, disagreement = fake_run(window, n_unlabeled=6)
    qtbot.waitUntil(lambda: window.project.scan_complete and window.project.has_predictions(), timeout=30000)
    page = window.predictions
    window.show_page("predictions")                             # a hidden page reads its rows when shown
    with qtbot.waitSignal(page.rowsLoaded, timeout=30000):      # rows are read in a worker
        page.refresh()
    ids = page.suggest()
    unlabeled = [it.image_id for it in items[:6]]
    assert set(ids) == set(unlabeled)
    # members that disagree come first: every disagreeing image ranks above every agreeing one
    dis = [disagreement[i] for i in ids]
    n_dis = sum(d > 1e-9 for d in dis)
    assert all(d > 1e-9 for d in dis[:n_dis]) and all(d <= 1e-9 for d in dis[n_dis:])
    assert n_dis >= 2                                       # (entropy only breaks near-ties: core.analysis.active)
    assert page.proxy.rowCount() == len(ids)
    assert [page.model.rows[page.proxy.mapToSource(page.proxy.index(i, 0)).row()].image_id
            for i in range(len(ids))] == ids
    # fed to the annotation flow: the first suggestion is open in the viewer, Ctrl+Shift+N goes on
    assert window.current_page() == "viewer" and window.viewer.item.image_id == ids[0]
    assert window.viewer.position.text() == f"suggestion 1 / {len(ids)}"     # not its place in the library
    window.viewer.assign_index(1)
    window.next_suggested()
    assert window.viewer.item.image_id == ids[1]
    assert window.viewer.position.text() == f"suggestion 2 / {len(ids)}"
    window.navigate(+1)                                      # stepping on through the library: its counter
    assert window.viewer.position.text().split(" / ")[1] == str(len(window.library.model.rows))
    # double-click in the table opens that image
    window.show_page("predictions")
    page.show_combo.setCurrentIndex(page.show_combo.findData("all"))
    page._open(page.proxy.index(3, 0))
    assert window.current_page() == "viewer"


def test_confusion_and_roc(qtbot, window):
    from desktop.pages.predictions import roc_curve

    from desktop.bridge.annotation import set_label

    _rid, items, _ = fake_run(window, n_unlabeled=1)
    qtbot.waitUntil(lambda: window.project.scan_complete and window.project.has_predictions(), timeout=30000)
    page = window.predictions
    window.show_page("predictions")                             # a hidden page reads its rows when shown
    with qtbot.waitSignal(page.rowsLoaded, timeout=30000):      # rows are read in a worker
        page.refresh()
    view = page.charts
    with qtbot.waitSignal(view.drawn, timeout=30000):           # computed in a worker once the tab shows
        page.tabs.setCurrentWidget(view)
    n = len(window.project.items)
    assert view.matrix is not None and view.matrix.sum() == n - 1
    set_label(window.project, window.project.by_id[items[0].image_id], "benign")     # labelled in the viewer
    qtbot.waitUntil(lambda: view.matrix.sum() == n, timeout=5000)                   # counted at once
    assert [view.source.itemText(i) for i in range(view.source.count())] == ["Ensemble", "Member A-imagenet",
                                                                               "Member B-mae"]
    ens = view.matrix.copy()
    # the colour drawn in the cell of (true i, predicted j) is row i's share of prediction j
    from PySide6 import QtCore

    norm = ens / np.maximum(1, ens.sum(1, keepdims=True))
    img = view.cm_image.image
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            px = view.cm_image.mapFromParent(QtCore.QPointF(j + 0.5, i + 0.5))
            x, y = int(px.x()), int(px.y())
            shown = img[y, x] if view.cm_image.axisOrder == "row-major" else img[x, y]
            assert shown == pytest.approx(norm[i, j])
    with qtbot.waitSignal(view.drawn, timeout=30000):
        view.source.setCurrentIndex(2)
    assert view.matrix.sum() == ens.sum()
    assert set(view.aucs) == set(CLASSES)
    fpr, tpr, auc = roc_curve(np.array([0.9, 0.8, 0.3, 0.1]), np.array([True, True, False, False]))
    assert auc == pytest.approx(1.0) and fpr[0] == 0 and tpr[-1] == 1
    _, _, auc = roc_curve(np.array([0.1, 0.2, 0.8, 0.9]), np.array([True, True, False, False]))
    assert auc == pytest.approx(0.0)
    from desktop.pages.predictions import ROC_POINTS, thin_curve

    rng = np.random.default_rng(1)
    fpr, tpr, auc = roc_curve(rng.random(20000), rng.random(20000) < 0.5)
    tf, tt, ta = thin_curve(fpr, tpr, auc)                  # what is drawn: few points, same ends and AUC
    assert len(fpr) > ROC_POINTS >= len(tf) and ta == auc
    assert (tf[0], tt[0], tf[-1], tt[-1]) == (fpr[0], tpr[0], fpr[-1], tpr[-1])


def _tiny_ensemble(root: Path, names: list[str]) -> Path:
    """Untrained tiny members (storing predictions does not care whether they learned anything)."""
    import torch

    from core.inference.ensemble import create_spec
    from core.train.config import FinetuneConfig
    from core.models.classifier import build_classifier, save_classifier_checkpoint

    for i, name in enumerate(names):
        torch.manual_seed(i)
        model, ccfg = build_classifier(FinetuneConfig(backbone="convnext_atto", tiny=True, init="random",
                                                      image_size=32), CLASSES, lambda m: None)
        save_classifier_checkpoint(root / f"member{i}" / "checkpoint-best", model, ccfg)
    return create_spec(root / "ens.json", [root / f"member{i}" for i in range(len(names))], names=names).path


def test_prediction_run_stores_typed_records_from_arrays(qtbot, window, tmp_path):
    """`medssl predict` rows reach the store from the arrays (no CSV parsed back), also for a member whose
    name looks like a CSV column (``x_prob_y``), and the page reads them as typed records."""
    from core.inference.predict import output_columns, predict_folder

    ens_file = _tiny_ensemble(tmp_path, ["m0", "x_prob_y"])
    items = window.project.items
    store = window.project.store
    rid = store.add_run("predict", "arrays", {"ensemble": str(ens_file)}, state="finished")
    out = tmp_path / "p.csv"
    s = predict_folder(window.project.paths.folder, out, ensemble=ens_file, backend="torch", precision="fp32",
                       num_workers=0, store=store, run_id=rid)
    assert s["stored"] == len(items) == len(store.predictions(rid))
    p = store.predictions(rid)[0]
    assert set(p.probs["members"]) == {"m0", "x_prob_y"}
    assert set(p.uncertainty) == {"entropy", "disagreement"}
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == output_columns(CLASSES, ["m0", "x_prob_y"])
        csv_rows = {r["path"]: r for r in reader}
    by_id = {it.image_id: it for it in items}
    for rec in store.prediction_records(rid):
        row = csv_rows[by_id[rec.image_id].rel_path]
        assert rec.predicted == row["predicted"] == max(rec.probs, key=rec.probs.get)
        for c in CLASSES:
            assert rec.probs[c] == pytest.approx(float(row[f"prob_{c}"]), abs=1e-6)
            assert rec.members["x_prob_y"][c] == pytest.approx(float(row[f"x_prob_y_prob_{c}"]), abs=1e-6)
        assert rec.entropy == pytest.approx(float(row["entropy"]), abs=1e-6)
        assert rec.disagreement == pytest.approx(float(row["disagreement_js"]), abs=1e-6)
    page = window.predictions
    window.show_page("predictions")                             # a hidden page reads its rows when shown
    with qtbot.waitSignal(page.rowsLoaded, timeout=30000):      # rows are read in a worker
        page.refresh()
    page.run_combo.setCurrentIndex(page.run_combo.findData(rid))
    qtbot.waitUntil(lambda: len(page.model.rows) == len(items), timeout=20000)
    assert page.model.members == ["m0", "x_prob_y"] and page.model.classes == CLASSES


def test_exported_csv_cells_cannot_run_as_formulas(qtbot, tmp_path):
    from desktop.pages.predictions import PredictionsModel, PredRow, export_csv
    from tests.test_csvcells import formula_cells

    m = PredictionsModel()
    m.set_data([PredRow(1, "=cmd|' /C calc'!A0.png", "=cmd|' /C calc'!A0.png", "@SUM(A1)", "-x",
                        {"-x": 0.75, "+y": 0.25}, {"=m": {"-x": 0.75, "+y": 0.25}}, -0.0, 0.0)],
               ["-x", "+y"], ["=m"])
    out = tmp_path / "export.csv"
    assert export_csv(out, m) == 1
    assert formula_cells(out) == []


def test_showing_the_start_and_predictions_pages_imports_nothing_heavy(small_demo, tmp_path):
    """Importing sklearn on the UI thread froze the first show of Predictions / Confusion & ROC for seconds;
    timm (and with it torchvision, torch._dynamo, sympy: ~1 300 modules), imported by the start page's
    weights check in a worker, left ~200 000 objects that every later full garbage collection walked, 40-110
    ms stalls during a scan (bench/gui.py). After the start-up preload (as desktop.app.main does behind its
    splash), showing these pages imports none of them."""
    import os
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "demo"
    shutil.copytree(small_demo, folder)
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from pathlib import Path
from desktop.app import create_app, preload_engine
app = create_app()
preload_engine()
before = set(sys.modules)
from PySide6 import QtCore
from desktop.main_window import MainWindow
from desktop.settings import Settings
import bench.gui as bench
win = MainWindow(Settings(Path({str(tmp_path)!r}) / "d.ini"))
win.show()
assert bench.wait(lambda: win.start.weights.installed is not None, 60)    # the weights check has answered
win.open_path({str(folder)!r})
assert bench.wait(lambda: win.project.scan_complete, 60)
bench.add_prediction_run(win.project.store)
win.predictions.refresh()
win.show_page("predictions")
win.predictions.tabs.setCurrentWidget(win.predictions.charts)
assert bench.wait(lambda: win.predictions.charts.matrix is not None, 60)
heavy = ("sklearn", "scipy", "timm", "torchvision", "sympy", "huggingface_hub")
late = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in heavy)
print("LATE", late)
win.close()
"""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MEDSSL_DATA_DIR=str(tmp_path / "data"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert "LATE []" in out.stdout, out.stdout + out.stderr


def test_a_large_run_fills_the_table_in_batches_and_the_charts_off_the_ui_thread(qtbot, window, monkeypatch):
    """10 000 rows set at once, sorted by the proxy and charted on the UI thread froze the first show of the
    page for seconds (bench/gui.py): the page now shows the columns first, appends the rows a batch per
    event-loop turn, and computes the confusion matrix in a worker, only once its tab is visible."""
    import threading

    import desktop.pages.predictions as predictions

    monkeypatch.setattr(predictions, "FILL_BATCH", 5)
    threads = []
    confusion = predictions.confusion
    monkeypatch.setattr(predictions, "confusion", lambda *a: threads.append(threading.current_thread()) or
                        confusion(*a))
    _rid, items, _ = fake_run(window, n_unlabeled=0)
    qtbot.waitUntil(lambda: window.project.scan_complete and window.project.has_predictions(), timeout=30000)
    page, model = window.predictions, window.predictions.model
    resets, inserts = [], []
    model.modelReset.connect(lambda: resets.append(model.rowCount()))
    model.rowsInserted.connect(lambda _p, first, last: inserts.append(last - first + 1))
    window.show_page("predictions")
    with qtbot.waitSignal(page.rowsLoaded, timeout=30000):
        page.refresh()
    assert resets == [0] and model.columnCount() > 0                    # columns first, no row yet
    assert len(inserts) == -(-len(items) // 5) and max(inserts) == 5 and sum(inserts) == len(items)
    names = [page.proxy.index(i, 1).data() for i in range(page.proxy.rowCount())]
    assert len(names) == len(items) and names == sorted(names, key=predictions.natural_key)
    assert threads == [] and page.charts.matrix is None                 # the hidden tab computed nothing
    with qtbot.waitSignal(page.charts.drawn, timeout=30000):
        page.tabs.setCurrentWidget(page.charts)
    assert page.charts.matrix.sum() == len(items)
    assert threads and threading.main_thread() not in threads


def test_a_hidden_page_reads_its_run_when_it_is_shown(qtbot, window, monkeypatch):
    """Reopening a 10 000-image project with the Predictions page hidden filled its table beside the scan and
    the thumbnails (bench/gui.py's warm reopen: 95-129 ms stalls); the rows are read once the page is shown."""
    import desktop.pages.predictions as predictions

    rid, items, _ = fake_run(window, n_unlabeled=0)
    qtbot.waitUntil(lambda: window.project.scan_complete and window.project.has_predictions(), timeout=30000)
    window.show_page("library")
    reads = []
    load_rows = predictions.load_rows
    monkeypatch.setattr(predictions, "load_rows", lambda *a: reads.append(a[1]) or load_rows(*a))
    page = window.predictions
    window.project.rescan()                                     # storeReady: the page refreshes, hidden
    qtbot.waitUntil(lambda: window.project.scan_complete, timeout=30000)
    page.refresh()
    qtbot.wait(200)
    assert reads == [] and page.run_combo.currentData() == rid  # the run is offered, its rows not read
    with qtbot.waitSignal(page.rowsLoaded, timeout=30000):
        window.show_page("predictions")
    assert reads == [rid] and page.model.rowCount() == len(items)
    window.show_page("library")
    window.show_page("predictions")                             # shown again, nothing new: no second read
    qtbot.wait(200)
    assert reads == [rid]


def test_the_table_answers_from_its_cell_cache_and_a_label_change_recomputes_the_row(qtbot):
    """A paint asks each visible cell for ~7 roles: answered from a per-row cache (one paint of the table cost
    ~90 ms of UI thread when every answer was computed); a changed label must not show the cached text."""
    from PySide6 import QtCore

    from desktop.pages.predictions import PredictionsModel, PredRow

    m = PredictionsModel()
    m.set_data([PredRow(1, "a.png", "benign/a.png", None, "benign", {"benign": 0.7, "malignant": 0.3}),
                PredRow(2, "b.png", "malignant/b.png", "malignant", "benign", {"benign": 0.6, "malignant": 0.4})],
               ["benign", "malignant"], [])
    m.show_more(10)
    role = QtCore.Qt.ItemDataRole
    label, correct, p_benign, name = (next(i for i, c in enumerate(m.columns) if c[1] == k)
                                      for k in ("label", "correct", "prob", "name"))
    assert m.data(m.index(0, label)) == "—" and m.data(m.index(0, correct)) == ""
    assert m.data(m.index(1, p_benign)) == "0.600" and m.data(m.index(1, correct)) == "✗"
    assert m.data(m.index(1, p_benign), role.BackgroundRole) is not None
    assert m.data(m.index(1, name), role.ToolTipRole) == "malignant/b.png"
    assert m.data(m.index(1, name), role.DecorationRole) is None
    changed = []
    m.dataChanged.connect(lambda a, b: changed.append((a.row(), b.row())))
    m.rows[0].label = "benign"
    m.row_changed(0)
    assert changed == [(0, 0)]
    assert m.data(m.index(0, label)) == "benign" and m.data(m.index(0, correct)) == "✓"


def _grab_table(qtbot, delegate_for, selected_row: int = 1):
    """A predictions table (3 classes, 2 members, one long name in a narrow column) painted by the delegate
    ``delegate_for(model, table)`` gives (None: Qt's standard one), as an RGB array."""
    from PySide6 import QtGui

    from desktop.pages.predictions import PredictionsFilter, PredictionsModel, PredRow
    from desktop.widgets.frozen_table import FrozenColumnsTable

    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        p = rng.dirichlet(np.ones(3))
        name = "a long file name that cannot fit its column.png" if i == 2 else f"case {i}.png"
        rows.append(PredRow(i, name, name, CLASSES[i % 3] if i % 4 else None, CLASSES[int(p.argmax())],
                            dict(zip(CLASSES, p.tolist())),
                            {m: dict(zip(CLASSES, rng.dirichlet(np.ones(3)).tolist())) for m in ("A", "B")},
                            entropy=0.5, disagreement=0.1))
    model = PredictionsModel()
    model.set_data(rows, CLASSES, ["A", "B"])
    model.show_more(len(rows))
    proxy = PredictionsFilter()
    proxy.setSourceModel(model)
    table = FrozenColumnsTable(frozen=2)
    table.setModel(proxy)
    table.verticalHeader().setDefaultSectionSize(24)
    table.setWordWrap(False)
    qtbot.addWidget(table)
    if delegate_for is not None:
        delegate = delegate_for(model, table)
        table.setItemDelegate(delegate)
        table.frozen.setItemDelegate(delegate)
    table.setColumnWidth(1, 90)
    table.resize(900, 340)
    table.show()
    qtbot.waitExposed(table)
    table.selectRow(selected_row)
    img = table.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
    arr = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())
    return arr[:, : img.width() * 3].reshape(img.height(), img.width(), 3).astype(np.int16)


def test_the_table_paints_its_cells_as_the_standard_delegate_does(qtbot, window):
    """``CellDelegate`` (the page's fast painter) shows what Qt's standard delegate shows: shading, class
    colours, selection, right-aligned numbers, an elided long name; a delegate that paints only backgrounds, or
    the wrong row selected, is told apart."""
    from desktop.pages.predictions import CellDelegate

    assert isinstance(window.predictions.table.itemDelegate(), CellDelegate)
    standard = _grab_table(qtbot, None)
    fast = _grab_table(qtbot, lambda model, table: CellDelegate(model, table))

    class BackgroundsOnly(CellDelegate):
        def _static(self, key, font, metrics=None):
            return super()._static("", font, metrics)

    blank = _grab_table(qtbot, lambda model, table: BackgroundsOnly(model, table))
    other_row = _grab_table(qtbot, lambda model, table: CellDelegate(model, table), selected_row=3)
    assert standard.shape == fast.shape

    def differ(a, b) -> float:      # the share of pixels whose colour differs visibly
        return float((np.abs(a - b).max(axis=2) > 48).mean())

    assert differ(standard, fast) < 0.002         # measured: 0.0 (the same pixels)
    assert differ(standard, blank) > 0.02 and differ(standard, other_row) > 0.02     # measured: 0.046, 0.14


def test_the_charts_draw_on_turns_of_their_own(qtbot):
    """Shown, the Confusion & ROC tab draws its matrix and its curves each on a later event-loop turn
    (a 0 ms timer ticks in between), so no turn carries the tab's first show, the matrix and the curves at once
    (bench/gui.py's confusion_roc: one 65 ms stall when they did). The worker's queued result often landed on a
    turn of its own before too, so this guards the order; the bench measures the stall."""
    from PySide6 import QtCore

    from desktop.pages.predictions import ConfusionRocView, PredRow

    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        p = rng.dirichlet(np.ones(3))
        rows.append(PredRow(i, f"{i}.png", f"{i}.png", CLASSES[i % 3], CLASSES[int(p.argmax())],
                            dict(zip(CLASSES, p.tolist()))))
    view = ConfusionRocView()
    qtbot.addWidget(view)
    ticks, at = [0], {}
    tick = QtCore.QTimer(view, interval=0)
    tick.timeout.connect(lambda: ticks.__setitem__(0, ticks[0] + 1))
    for name in ("_draw", "_draw_roc"):
        step = getattr(view, name)
        setattr(view, name, lambda numbers, step=step, name=name: (at.setdefault(name, ticks[0]), step(numbers)))
    view.set_data(rows, CLASSES, [])        # hidden: nothing computed yet
    assert not at
    tick.start()
    with qtbot.waitSignal(view.drawn, timeout=20000):
        view.show()
        at["shown"] = ticks[0]
    tick.stop()
    assert at["shown"] < at["_draw"] < at["_draw_roc"]
    assert view.matrix.sum() == len(rows) and len(view.aucs) == len(CLASSES)
