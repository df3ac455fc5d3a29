"""The ensemble verdict: a tie is not a win, the sentence says NOT plainly, and runs keep it in their metrics."""

from __future__ import annotations

from core.inference.verdict import EnsembleVerdict, judge, run_verdict, split_source
from core.project.runs import Run, RunResult


def test_judge_picks_the_best_member_and_a_tie_does_not_beat_it():
    v = judge({"A": 0.802, "B": 0.75, "C": None}, 0.781, "the validation split (50 images)")
    assert (v.best_member, v.best_member_value, v.beats) == ("A", 0.802, False)
    assert v.sentence() == ("On the validation split (50 images): ensemble 78.1 % vs best member A 80.2 % "
                            "accuracy — the ensemble does NOT beat its best member A.")
    assert not judge({"A": 0.8}, 0.8, "x").beats
    assert judge({"A": 0.8, "B": 0.7}, 0.81, "x").sentence().endswith("the ensemble beats its best member A.")


def test_nothing_to_say_without_numbers():
    assert judge({"A": None}, 0.9, "x") is None and judge({"A": 0.8}, None, "x") is None
    assert EnsembleVerdict.from_metrics({"ensemble_accuracy": 0.9}) is None        # an older run: no verdict


def test_split_source_names_the_images():
    assert split_source("val", 12) == "the validation split (12 images)"
    assert split_source("test", 3) == "the test split (3 images)"


def test_a_finished_ensemble_run_keeps_its_verdict_in_the_runs_table():
    """The ensemble job's result carries the flat keys; RunResult keeps them; run_verdict reads them back."""
    v = judge({"A": 0.9, "B": 0.6}, 0.7, "the test split (10 images)", "A+B")
    result = {"ensemble": {"after": {"accuracy": 0.7}}, **v.to_metrics(), "verdict": v.sentence()}
    metrics = RunResult.of("ensemble", result).metrics
    assert metrics["ensemble_beats_best_member"] == "no" and metrics["verdict"] == v.sentence()
    run = Run(1, "ensemble", "e", {}, "finished", 0.0, 1.0, metrics, None)
    assert run_verdict(run) == v
    assert EnsembleVerdict.from_dict(v.to_dict()) == v
