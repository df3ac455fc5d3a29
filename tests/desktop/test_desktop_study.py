"""The Study dialog and the Studies list (pytest-qt, offscreen): a tiny study launched from the Train menu's
dialog runs as a "study" run of the project, and the list shows its result and opens its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


def test_study_from_the_dialog_then_listed_with_its_report(qtbot, demo_window, monkeypatch):
    from PySide6 import QtGui

    from desktop.widgets.study_dialog import StudyDialog

    win = demo_window
    dlg = StudyDialog(win.project, win.settings, win)
    qtbot.addWidget(dlg)
    assert dlg.weights_offer.isVisibleTo(dlg)            # member A's ImageNet weights: looked up, offered
    dlg.budget.setCurrentIndex(dlg.budget.findData("tiny"))
    dlg.member_a.setCurrentIndex(dlg.member_a.findData("random"))
    assert not dlg.weights_offer.isVisibleTo(dlg)
    dlg.k.setValue(2)
    dlg.control.setChecked(False)
    dlg.n_boot.setValue(100)
    dlg.set_device("cpu")
    dlg.name.setText("tiny-study")
    dlg._accept()
    assert dlg.result() == dlg.DialogCode.Accepted
    rid = win.launch_study(dlg)
    qtbot.waitUntil(lambda: win.jobs.entries[rid].state in ("finished", "failed"), timeout=600000)
    run = win.project.store.get_run(rid)
    assert run.state == "finished", run.error
    assert run.kind == "study" and run.config["budget"] == "tiny" and run.config["k"] == 2
    assert run.config["n_boot"] == 100
    report = Path(run.metrics["report"])
    assert report.is_file() and report.parent.parent == Path(run.run_dir)
    rep = json.loads((report.parent / "report.json").read_text())
    assert [m["name"] for m in rep["models"]] == ["A", "B", "A+B"]

    opened = []
    monkeypatch.setattr(QtGui.QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    studies = win.show_studies()
    qtbot.addWidget(studies)
    row = studies.table.topLevelItem(0)
    assert row.text(0) == f"#{rid} tiny-study" and row.text(1) == "finished"
    beats = run.metrics["ensemble_beats_best_member"]
    assert row.text(4) == ("yes" if beats == "yes" else f"NO: prefer {run.metrics['best_member']}")
    assert studies.verdict.text() == run.metrics["verdict"]
    assert studies.open_button.isEnabled() and studies.open_report()
    assert opened == [str(report)]
    again = StudyDialog(win.project, win.settings, win)            # the dialog remembers the settings
    qtbot.addWidget(again)
    assert again.k.value() == 2 and again.budget.currentData() == "tiny" and not again.control.isChecked()


def test_duplicates_view_finds_groups_shows_labels_and_stores_the_choice(qtbot, main_window, small_demo, tmp_path):
    import shutil

    from PIL import Image
    from PySide6 import QtWidgets

    folder = tmp_path / "demo"
    shutil.copytree(small_demo, folder)
    original = next(p for p in sorted((folder / "benign").glob("*.png")) if "_mask" not in p.name)
    img = Image.open(original)
    img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.BICUBIC).save(folder / "malignant" / "copy.png")
    for k in (2, 5):                                     # a group of four: more than one row of tiles
        img.resize((img.width * k // 4, img.height * k // 4), Image.BICUBIC).save(folder / "benign" / f"copy{k}.png")
    main_window.open_path(folder)
    qtbot.waitUntil(lambda: main_window.project.ready and main_window.project.scan_complete, timeout=30000)
    dlg = main_window.show_duplicates()
    qtbot.addWidget(dlg)
    assert dlg.groups.count() == 0
    dlg.find()
    qtbot.waitUntil(lambda: dlg.find_button.isEnabled(), timeout=60000)
    store = main_window.project.store
    rel = {main_window.project.by_id[i].rel_path: i for g in store.duplicate_groups() for i in g}
    assert {f"benign/{original.name}", "malignant/copy.png"} <= set(rel)
    row = next(i for i, g in enumerate(store.duplicate_groups()) if rel["malignant/copy.png"] in g)
    dlg.groups.setCurrentRow(row)
    assert "labels disagree" in dlg.groups.item(row).text()
    texts = [w.text() for w in dlg.tiles.findChildren(QtWidgets.QLabel)]
    assert "label: malignant" in texts and "label: benign" in texts
    # every image of the group is in sight without scrolling sideways (rows of TILES_PER_ROW)
    dlg.show()
    qtbot.waitExposed(dlg)
    assert len(store.duplicate_groups()[row]) >= 4
    viewport = dlg.tiles.parentWidget()
    assert dlg.tiles_layout.sizeHint().width() <= viewport.width()
    copy_id = rel["malignant/copy.png"]
    box = dlg.choice_boxes[copy_id]
    box.setCurrentIndex(box.findData("exclude"))
    assert store.excluded_image_ids() == {copy_id} and (folder / "malignant" / "copy.png").is_file()
    again = main_window.show_duplicates()               # the choice is in the project
    qtbot.addWidget(again)
    again.groups.setCurrentRow(row)
    assert again.choice_boxes[copy_id].currentData() == "exclude"

