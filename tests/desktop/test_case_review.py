"""The per-case view (a case's images side by side, MICLe's positive pairs, a plain state without case ids)
and the review mode (step through disputed predictions, settle each with one key, undo)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


def test_case_view_shows_the_images_of_one_case_and_micles_pairs(qtbot, demo_window):
    win = demo_window
    item = next(it for it in win.project.items if it.case_id)
    win.open_item(item)
    dlg = win.show_case()
    qtbot.addWidget(dlg)
    mates = [it for it in win.project.items if it.case_id == item.case_id]
    assert len(mates) == 2 and dlg.combo.currentData() == item.case_id
    assert sorted(dlg.strip.item(i).toolTip() for i in range(dlg.strip.count())) == sorted(m.rel_path for m in mates)
    qtbot.waitUntil(lambda: "MICLe positives" in dlg.pairs.text(), timeout=30000)
    a, b = sorted(m.name for m in mates)
    assert f"1 pairs — {a} ↔ {b}" in dlg.pairs.text() or f"1 pairs — {b} ↔ {a}" in dlg.pairs.text()
    other = dlg.combo.findData(next(c for c in dlg.cases if c != item.case_id))
    dlg.combo.setCurrentIndex(other)
    assert all(dlg.cases[dlg.combo.currentData()][0].rel_path != m.rel_path for m in mates)
    dlg.strip.itemActivated.emit(dlg.strip.item(0))
    assert win.current_page() == "viewer" and win.viewer.item.case_id == dlg.combo.currentData()


def test_case_view_without_case_ids_says_so(qtbot, main_window, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("benign", "normal"):                       # BUSI's layout: class folders, no manifest
        (tmp_path / "busi-like" / cls).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(
                tmp_path / "busi-like" / cls / f"{cls} ({k}).png")
    main_window.open_path(tmp_path / "busi-like")
    qtbot.waitUntil(lambda: main_window.project.ready and main_window.project.scan_complete, timeout=60000)
    dlg = main_window.show_case()
    qtbot.addWidget(dlg)
    assert dlg.strip.count() == 0 and not dlg.combo.isEnabled()
    assert dlg.state.text().startswith("No case ids in this project") and "manifest.csv" in dlg.state.text()


def add_disputed_predictions(store, items, classes):
    """Image 0: sure and wrong against its label; image 1: members split; the rest: sure and right."""
    ids = [it.image_id for it in items]
    c = len(classes)
    truth = [classes.index(it.label) for it in items]
    sure = np.full((len(ids), c), 0.01)
    sure[np.arange(len(ids)), truth] = 1 - 0.01 * (c - 1)
    sure[0] = np.roll(sure[0], 1)                         # confidently another class than the label
    members = np.stack([sure, sure.copy()])
    members[1, 1] = np.roll(members[1, 1], 1)
    probs = members.mean(0)
    ent = -(probs * np.log(probs)).sum(1)
    rid = store.add_run("predict", "disputed", {}, state="finished")
    store.add_prediction_arrays(rid, ids, classes, ["m1", "m2"], probs, members, ent, np.zeros(len(ids)))
    return rid, classes[int(np.argmax(sure[0]))]


def test_review_steps_through_disputed_predictions_and_labels_with_one_key(qtbot, demo_window):
    from PySide6 import QtCore, QtTest

    from core.analysis.active import DISAGREES_WITH_LABEL, MEMBERS_DISAGREE

    win = demo_window
    store = win.project.store
    items = [it for it in win.project.items if it.label]
    classes = win.project.class_names()
    _rid, predicted = add_disputed_predictions(store, items, classes)
    dlg = win.show_review()
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: bool(dlg.queue), timeout=30000)
    assert [c.image_id for c in dlg.queue][:2] == [items[0].image_id, items[1].image_id]
    assert dlg.queue[0].reasons[0] == DISAGREES_WITH_LABEL and MEMBERS_DISAGREE in dlg.queue[1].reasons
    assert "1 / " in dlg.position.text() and DISAGREES_WITH_LABEL in dlg.reasons.text()
    old = items[0].label
    dlg.activateWindow()
    QtTest.QTest.keyClick(dlg, QtCore.Qt.Key.Key_Return)             # accept the ensemble's class
    assert store.current_label(items[0].image_id) == predicted != old and dlg.pos == 1
    assert [e.label for e in store.label_history(items[0].image_id)][-1] == predicted
    QtTest.QTest.keyClick(dlg, QtCore.Qt.Key.Key_Z, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert store.current_label(items[0].image_id) == old and dlg.pos == 0          # back on the undone image
    QtTest.QTest.keyClick(dlg, QtCore.Qt.Key.Key_Space)                # keep the label, next
    QtTest.QTest.keyClick(dlg, QtCore.Qt.Key.Key_1)                    # correct the second to the first class
    assert store.current_label(items[1].image_id) == classes[0] and dlg.pos == 2


def test_review_stays_on_an_image_whose_label_the_full_disk_refused(qtbot, demo_window, warnings):
    """Review mode moved on to the next image even when the store refused the label: the person saw the
    next case, believing the last one decided. It stays, says so, and moves on once the label is saved (or
    when the label is already what was chosen)."""
    from PySide6 import QtCore, QtTest

    from tests.full_disk import fill_disk, free_space, write_until_full

    win = demo_window
    store = win.project.store
    items = [it for it in win.project.items if it.label]
    _rid, predicted = add_disputed_predictions(store, items, win.project.class_names())
    dlg = win.show_review()
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: bool(dlg.queue), timeout=30000)
    old = items[0].label
    fill_disk(store._conn())
    write_until_full(lambda i: win.project.write_label(items[-1].image_id, (old, predicted)[i % 2]))
    dlg.activateWindow()
    QtTest.QTest.keyClick(dlg, QtCore.Qt.Key.Key_Return)
    assert dlg.pos == 0 and store.current_label(items[0].image_id) == old
    assert len(warnings) == 1 and items[0].name in warnings[0] and "disk is full" in warnings[0]
    free_space(store._conn())
    QtTest.QTest.keyClick(dlg, QtCore.Qt.Key.Key_Return)
    assert dlg.pos == 1 and store.current_label(items[0].image_id) == predicted
    QtTest.QTest.keyClick(dlg, QtCore.Qt.Key.Key_Left)
    QtTest.QTest.keyClick(dlg, QtCore.Qt.Key.Key_Return)              # already that label: next
    assert dlg.pos == 1


def test_review_shows_a_small_image_at_the_dialogs_size_and_a_large_one_fitted(qtbot, tmp_path):
    """A 128 px phantom sat as a stamp in the middle of the review dialog (screenshots at 1280×720)."""
    import numpy as np
    from PIL import Image

    from desktop.pages.review import IMAGE_PX, load_review_image

    Image.fromarray(np.zeros((64, 128), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((1000, 500), np.uint8)).save(tmp_path / "tall.png")
    small, tall = load_review_image(str(tmp_path / "small.png")), load_review_image(str(tmp_path / "tall.png"))
    assert (small.width(), small.height()) == (IMAGE_PX, IMAGE_PX // 2)
    assert (tall.width(), tall.height()) == (IMAGE_PX // 2, IMAGE_PX)


def test_review_fits_a_1280x720_screen_with_its_texts_below_the_image(qtbot, demo_window):
    """The image was held at 480 px: the dialog needed ~690 px of height, and on a 1280×720 screen the window
    manager squeezed it so the texts lay over the image (screenshot 13_review). The image now takes the room
    the dialog leaves it."""
    win = demo_window
    items = [it for it in win.project.items if it.label]
    add_disputed_predictions(win.project.store, items, win.project.class_names())
    dlg = win.show_review()
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: dlg.image.pixmap() is not None and not dlg.image.pixmap().isNull(), timeout=30000)
    dlg.resize(520, 560)                          # what a 720 px screen leaves below title bar and panel
    qtbot.waitUntil(lambda: dlg.height() == 560, timeout=5000)
    qtbot.waitUntil(lambda: dlg.image.pixmap().height() <= dlg.image.height(), timeout=5000)
    image, details = dlg.image.geometry(), dlg.details.geometry()
    assert image.bottom() < details.top() and details.bottom() < dlg.height()
    assert dlg.image.pixmap().width() <= image.width() and dlg.image.pixmap().height() > 200
