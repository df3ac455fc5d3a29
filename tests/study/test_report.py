"""The study report: numbers equal to the metrics computed directly, plain verdicts, a page that renders."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from core.analysis.metrics import classification_metrics
from core.study.report import write_report
from study_fixtures import CLASSES, made_up_outcome


def test_report_numbers_match_the_metrics(tmp_path):
    outcome = made_up_outcome()
    page = write_report(outcome, tmp_path, n_boot=200)
    rep = json.loads((tmp_path / "report.json").read_text())
    f0 = outcome.folds[0]
    direct = classification_metrics(f0.y, f0.probs["B"], CLASSES)
    assert rep["per_fold"]["B"][0]["accuracy"] == pytest.approx(direct["accuracy"])
    accs = [classification_metrics(f.y, f.probs["A+B"], CLASSES)["accuracy"] for f in outcome.folds]
    assert rep["mean_std"]["A+B"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert rep["mean_std"]["A+B"]["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert {(c["a"], c["b"], c["metric"]) for c in rep["comparisons"]} >= {("A+B", "A", "accuracy"),
                                                                              ("B", "random-MAE", "roc_auc_ovr")}
    assert all(c["low"] <= c["difference"] <= c["high"] for c in rep["comparisons"])
    text = page.read_text()
    assert "near-duplicate groups" in text and "4 (9 images; 1 with conflicting labels)" in text
    assert text.count("data:image/png;base64,") >= 4 and "medssl study DATA --out OUT" in text


def test_report_says_when_the_ensemble_does_not_beat_its_best_member(tmp_path):
    write_report(made_up_outcome(ensemble_wins=False), tmp_path, n_boot=100)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert any("does NOT beat its best member A" in v for v in rep["verdicts"]), rep["verdicts"]
    assert "does NOT beat its best member A" in (tmp_path / "report.html").read_text()


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(tmp_path):
    page = write_report(made_up_outcome(), tmp_path, n_boot=100)
    shot = tmp_path / "shot.png"
    out = subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), out.stderr
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.std() > 10                       # text, tables and plots, not a blank page
    assert (img < 100).mean() > 0.005           # dark ink somewhere (text, curves)


def test_study_verdict_reads_fold_means_and_skips_missing_numbers():
    from core.study.report import study_verdict

    summary = {"A": {"accuracy": {"mean": 0.7, "std": 0.1, "n": 3}}, "B": {"roc_auc_ovr": {"mean": 0.9}},
               "A+B": {"accuracy": {"mean": 0.75, "std": 0.05, "n": 3}}}
    verdict = study_verdict(summary, "A+B", ["A", "B", "C"])     # B has no accuracy, C no row at all
    assert (verdict.best_member, verdict.best_member_value, verdict.ensemble_value) == ("A", 0.7, 0.75)
    assert verdict.source == "the held-out test folds (mean over 3)"
    assert study_verdict({"A": summary["A"]}, "A+B", ["A"]) is None
