"""`medssl study` end to end on the phantom demo data with tiny models, the folds' grouping guarantee, and
resuming (a rerun skips every finished step)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data.duplicates import DuplicateGroup, DuplicateReport
from core.jobs import EventKind
from core.pretrain.trainer import read_checkpoint_config
from core.study.runner import CONTROL, ENSEMBLE, MEMBER_A, MEMBER_B, StudyConfig, duplicate_aware_folds, study_job
from core.train.data import LabeledData, Sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_study(demo_dir, out, **kw) -> StudyConfig:
    base = dict(out=str(out), data=str(demo_dir), budget="tiny", k=3, member_a_init="random", precision="fp32",
                num_workers=0, n_boot=50)
    base.update(kw)
    return StudyConfig(**base)


def run_logged(cfg: StudyConfig) -> tuple[dict, list[str]]:
    job = study_job(cfg)
    logs: list[str] = []
    job.subscribe(lambda e: logs.append(e.message) if e.kind == EventKind.LOG else None)
    return job.run(), logs


def test_folds_never_split_a_case_or_a_near_duplicate_group():
    # 60 images of 30 cases; near-duplicate groups join images of different cases (a chain across 3 cases)
    samples = [Sample(Path(f"/d/{i}.png"), f"{i}.png", ("a", "b", "c")[i % 3], f"case{i // 2}") for i in range(60)]
    data = LabeledData(Path("/d"), samples, ["a", "b", "c"])
    groups = [DuplicateGroup(["1.png", "2.png"]), DuplicateGroup(["3.png", "10.png", "41.png"]),
              DuplicateGroup(["20.png", "59.png"])]
    report = DuplicateReport(groups, 60, 3, 10, 0.75)
    for seed in range(5):
        fold = duplicate_aware_folds(data, report, 3, seed)
        assert sorted(set(fold)) == [0, 1, 2]
        of = {s.rel_path: f for s, f in zip(samples, fold)}
        # the chain: 0-1 (case 0), 1~2, 2-3 (case 1), 3~10~41, 10-11, 40-41
        for g in groups:
            assert len({of[m] for m in g.members}) == 1
        for c in range(30):
            assert of[f"{2 * c}.png"] == of[f"{2 * c + 1}.png"]
        assert len({of[f"{i}.png"] for i in (0, 1, 2, 3, 10, 11, 40, 41)}) == 1


def test_study_end_to_end_and_rerun_skips_finished_steps(demo_dir, tmp_path):
    out = tmp_path / "study"
    result, logs = run_logged(tiny_study(demo_dir, out))
    page = result["report"]
    assert Path(page) == out / "report" / "report.html" and Path(page).is_file()
    rep = json.loads((out / "report" / "report.json").read_text())
    ens_acc = rep["mean_std"][ENSEMBLE]["accuracy"]["mean"]
    assert result["ensemble_accuracy"] == pytest.approx(ens_acc)
    best = max((MEMBER_A, MEMBER_B), key=lambda n: rep["mean_std"][n]["accuracy"]["mean"])
    assert result["best_member"] == best
    assert result["ensemble_beats_best_member"] == ("yes" if ens_acc > rep["mean_std"][best]["accuracy"]["mean"]
                                                    else "no")
    from core.inference.verdict import EnsembleVerdict

    verdict = EnsembleVerdict.from_metrics(result)        # what the window reads back from the runs table
    assert verdict.source == "the held-out test folds (mean over 3)" and verdict.sentence() in result["verdict"]
    assert [m["name"] for m in rep["models"]] == [MEMBER_A, MEMBER_B, CONTROL, ENSEMBLE]
    assert rep["k"] == 3 and len(rep["per_fold"][ENSEMBLE]) == 3
    dups = json.loads((out / "duplicates.json").read_text())
    assert rep["data"]["duplicate_groups"] == len(dups["groups"]) > 0
    assert rep["data"]["pretraining"].startswith("strict")
    assert any(n.startswith("Ensemble weights (A, B) per fold: fold 0: 0.50, 0.50") for n in rep["notes"])
    assert rep["data"]["fold_guarantee"].startswith(f"Checked on the folds used: 0 of {len(dups['groups'])} "
                                                    f"near-duplicate groups and 0 of ")
    assert {(c["a"], c["b"]) for c in rep["comparisons"]} == {(ENSEMBLE, MEMBER_A), (ENSEMBLE, MEMBER_B),
                                                              (MEMBER_B, CONTROL)}
    # strict pretraining: each fold's MAE saw that fold's training images only, entropy and random alike
    fold = json.loads((out / "folds.json").read_text())["fold"]
    for f in range(3):
        test = {r for r, k in fold.items() if k == f}
        for mode, mask in (("entropy", "high"), ("random", "random")):
            c = read_checkpoint_config(out / "pretrain" / f"{mode}-fold{f}")
            assert c["config"]["options"]["entropy_mode"] == mask
            assert set(c["config"]["files"]) == set(fold) - test and c["data"]["n_images"] == len(fold) - len(test)
        split = json.loads((out / MEMBER_B / f"fold{f}" / "split.json").read_text())
        assert {r for r, _ in split["test"]} == test
    # a member's fold in the report is that fold's fine-tuning run (a temperature keeps the argmax)
    for f in range(3):
        m = json.loads((out / MEMBER_A / f"fold{f}" / "metrics.json").read_text())
        assert rep["per_fold"][MEMBER_A][f]["accuracy"] == pytest.approx(m["test"]["accuracy"])
    html = Path(page).read_text()
    assert "Paired differences" in html and "data:image/png;base64," in html and "Grad-CAM" in html
    assert any("fine-tuning member B" in m for m in logs)

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name in ("metrics.json", "model.safetensors")}
    again, logs2 = run_logged(tiny_study(demo_dir, out, n_boot=60))
    assert {k: v for k, v in again.items() if k != "verdict"} == {k: v for k, v in result.items() if k != "verdict"}
    assert not any("fine-tuning member" in m or "pretraining" in m or "near-duplicate" in m for m in logs2)
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    with pytest.raises(ValueError, match="other settings"):
        study_job(tiny_study(demo_dir, out, seed=1)).run()


def test_study_cli_transductive_fitted_weights(demo_dir, tmp_path):
    from core.cli import main

    out = tmp_path / "st"
    assert main(["study", str(demo_dir), "--out", str(out), "--budget", "tiny", "--kfold", "2", "--transductive",
                 "--no-control", "--ensemble-weights", "fitted", "--member-a-init", "random", "--precision",
                 "fp32", "--workers", "0", "--n-boot", "50", "--panels", "1", "--quiet"]) == 0
    rep = json.loads((out / "report" / "report.json").read_text())
    assert [m["name"] for m in rep["models"]] == [MEMBER_A, MEMBER_B, ENSEMBLE]
    assert rep["data"]["pretraining"].startswith("transductive") and rep["data"]["ensemble_weights"] == "fitted"
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["entropy-all"]
    c = read_checkpoint_config(out / "pretrain" / "entropy-all")
    assert c["data"]["n_images"] == len(json.loads((out / "folds.json").read_text())["fold"])
    assert "--transductive" in rep["command"] and "--ensemble-weights fitted" in rep["command"]


def test_member_a_imagenet_weights_missing_names_the_command(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSSL_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch"))
    with pytest.raises(FileNotFoundError, match="medssl weights get"):
        study_job(tiny_study(demo_dir, tmp_path / "s", member_a_init="imagenet",
                             overrides={"backbone_a": "convnext_atto", "tiny": False})).run()
    with pytest.raises(ValueError, match="tiny budget's models have no ImageNet weights"):
        study_job(tiny_study(demo_dir, tmp_path / "s2", member_a_init="imagenet")).run()
    # B's MAE starting from ImageNet weights is checked before any work as well
    with pytest.raises(FileNotFoundError, match="member B's MAE"):
        study_job(tiny_study(demo_dir, tmp_path / "s3", overrides={"pretrain_init": "imagenet",
                                                                  "tiny": False})).run()
    assert not (tmp_path / "s3" / "folds.json").exists()


def test_study_rejects_unknown_settings(demo_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown budget settings"):
        tiny_study(demo_dir, tmp_path, overrides={"epoch": 3}).settings()


@pytest.mark.parametrize("source", ["project", "folder"])
def test_a_study_fold_rerun_by_hand_gives_the_same_numbers(demo_dir, tmp_path, source):
    import shutil

    from core.cli import main
    from core.paths import default_store_path
    from core.study.runner import finetune_command

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    if source == "project":
        assert main(["scan", str(data), "--store", "--json"]) == 0
        cfg = tiny_study(None, tmp_path / "st", data=None, project=str(default_store_path(data)), k=2,
                         control=False, panels=0)
    else:       # the folds travel in OUT/folds.json (medssl finetune --folds-file)
        cfg = tiny_study(data, tmp_path / "st", k=2, control=False, panels=0)
    run_logged(cfg)
    rep = json.loads((tmp_path / "st" / "report" / "report.json").read_text())
    assert ("--project" if source == "project" else "--folds-file") in " ".join(rep["notes"])
    for member, init in ((MEMBER_A, None), (MEMBER_B, str(tmp_path / "st" / "pretrain" / "entropy-fold1"))):
        by_hand = tmp_path / f"hand-{member}"
        assert main(finetune_command(cfg, member, 1, str(by_hand), init) + ["--quiet"]) == 0
        study_fold = tmp_path / "st" / member / "fold1"
        assert (json.loads((by_hand / "fold1" / "metrics.json").read_text())["test"]
                == json.loads((study_fold / "metrics.json").read_text())["test"])
        assert (by_hand / "fold1" / "logits_test.csv").read_text() == (study_fold / "logits_test.csv").read_text()


def test_folds_file_maps_samples_and_rejects_foreign_files(demo_dir, tmp_path):
    from core.data.splits import write_folds_file
    from core.train.data import load_labeled_data
    from core.train.finetune import folds_from_file

    data = load_labeled_data(demo_dir)
    path = tmp_path / "folds.json"
    write_folds_file(path, {data.samples[0].rel_path: 0, data.samples[1].rel_path: 2}, 3, 0)
    fold_of = folds_from_file(path, data, 3)
    assert fold_of[:2] == [0, 2] and set(fold_of[2:]) == {None}
    with pytest.raises(ValueError, match="3-fold split; pass --kfold 3"):   # checked by read_folds_file
        folds_from_file(path, data, 5)
    write_folds_file(path, {"elsewhere/x.png": 1}, 3, 0)
    with pytest.raises(ValueError, match="folds.json: none of its images is in the data"):
        folds_from_file(path, data, 3)
