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
