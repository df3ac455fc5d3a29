"""Where an ensemble is chosen, the window says whether it beats its best member, and where that was measured."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


@pytest.fixture
def project(tmp_path):
    from core.inference.verdict import judge
    from core.project.store import ProjectStore

    store = ProjectStore(tmp_path / "project.db")
    for name, acc in (("weak", 0.781), ("strong", 0.9)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "ensemble.json").write_text("{}")
        v = judge({"A": 0.802, "B": 0.7}, acc, "the test split (50 images)")
        rid = store.add_run("ensemble", name, {}, run_dir=run_dir, state="finished")
        store.update_run(rid, metrics={**v.to_metrics(), "verdict": v.sentence()})
    old = store.add_run("ensemble", "old", {}, run_dir=tmp_path / "old", state="finished")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "ensemble.json").write_text("{}")
    yield SimpleNamespace(store=store, paths=None, items=[], old=old)
    store.close()


def test_predict_dialog_says_plainly_when_the_chosen_ensemble_does_not_beat_its_best_member(qtbot, project, tmp_path):
    from desktop.widgets.job_dialogs import PredictDialog

    dlg = PredictDialog(project, None)
    qtbot.addWidget(dlg)
    texts = {}
    for i in range(dlg.ensemble.count()):
        dlg.ensemble.setCurrentIndex(i)
        texts[dlg.ensemble.itemText(i).split(" (")[0]] = dlg.verdict.text()
    assert texts["#2 strong"].endswith("ensemble 90.0 % vs best member A 80.2 % accuracy — the ensemble beats its "
                                        "best member A.")
    assert ("On the test split (50 images): ensemble 78.1 % vs best member A 80.2 % accuracy — the ensemble does NOT "
            "beat its best member A. Predicting with A alone") in texts["#1 weak"]
    assert "no comparison with its members recorded" in texts[f"#{project.old} old"]
    other = tmp_path / "elsewhere.json"
    other.write_text("{}")
    dlg.ensemble_file.setText(str(other))
    assert "not built in this project" in dlg.verdict.text()


def test_ensemble_dialog_lists_the_verdicts_of_earlier_ensembles(qtbot, project):
    from desktop.widgets.job_dialogs import EnsembleDialog

    dlg = EnsembleDialog(project, None)
    qtbot.addWidget(dlg)
    lines = dlg.verdicts.text().splitlines()
    assert len(lines) == 3 and any("#1 weak: On the test split (50 images)" in ln and "does NOT beat" in ln
                                   for ln in lines)
