"""Ensembles: temperature scaling, averaging, uncertainty, Grad-CAM, evaluation (tiny models, seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.inference.ensemble import (EnsembleModel, combine, create_spec, evaluate_ensemble, evaluate_ensemble_cv,
                           fit_temperature, format_table, grad_cam, js_divergence, load_ensemble, load_spec,
                           predictive_entropy, softmax)
from core.models.classifier import build_classifier
from core.train.data import load_labeled_data
from core.train.finetune import finetune
from core.train.kfold import run_kfold
from core.train.config import FinetuneConfig
from core.analysis.metrics import expected_calibration_error

CLASSES = ["benign", "malignant", "normal"]


def tiny_cfg(**kw) -> FinetuneConfig:
    base = dict(backbone="convnext_atto", tiny=True, init="random", image_size=32, epochs=1, batch_size=16,
                lr=3e-3, warmup_epochs=0.5, val_fraction=0.2, test_fraction=0.2, seed=0, num_workers=0,
                precision="fp32")  # fp32 on every CPU (bf16 autocast where a CPU has AMX)
    base.update(kw)
    return FinetuneConfig(**base)



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def runs(demo_dir, tmp_path_factory):
    """Two one-epoch runs on the same split (different seeds for the model, same split seed)."""
    root = tmp_path_factory.mktemp("ens")
    data = load_labeled_data(demo_dir)
    finetune(tiny_cfg(), data, root / "a")
    finetune(tiny_cfg(lr=1e-3), data, root / "b")
    return root


def test_temperature_scaling_lowers_ece_of_overconfident_model():
    rng = np.random.default_rng(0)
    n, c = 2000, 3
    y = rng.integers(0, c, n)
    # a decent but noisy classifier (about 70 % right) ...
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), y] += 1.5
    # ... made over-confident by scaling its logits up
    over = logits * 4.0
    t = fit_temperature(over[:1000], y[:1000])
    assert 2.0 < t < 6.0                                  # undoes most of the factor 4
    before = expected_calibration_error(softmax(over[1000:]), y[1000:])
    after = expected_calibration_error(softmax(over[1000:], t), y[1000:])
    assert before > 0.1 and after < before / 2
    # calibration never changes the predicted class
    assert (softmax(over, t).argmax(1) == over.argmax(1)).all()


def test_temperature_fit_stops_at_its_upper_limit_when_the_predictions_say_nothing():
    """Issue 17: a member got T = 20.0. That is the clamp: on validation predictions no better than a constant
    (or confidently wrong) the NLL falls all the way to T -> inf, so the fit has no finite answer."""
    from core.inference.ensemble import TEMPERATURE_LIMITS

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    assert fit_temperature(rng.normal(0, 1, (40, 3)), y) == TEMPERATURE_LIMITS[1]          # noise
    assert fit_temperature(np.eye(3)[(y + 1) % 3] * 3, y) == TEMPERATURE_LIMITS[1]         # always wrong
    informative = np.eye(3)[y] * 2 + rng.normal(0, 1, (40, 3))
    assert TEMPERATURE_LIMITS[0] < fit_temperature(informative, y) < TEMPERATURE_LIMITS[1]


def test_entropy_and_js_divergence():
    p = np.array([[[1.0, 0.0], [0.5, 0.5]], [[1.0, 0.0], [0.5, 0.5]]])      # [M=2, N=2, C=2]
    assert js_divergence(p) == pytest.approx([0.0, 0.0], abs=1e-9)          # members agree
    q = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])                              # total disagreement
    assert js_divergence(q)[0] == pytest.approx(np.log(2))
    assert predictive_entropy(np.array([[0.5, 0.5]]))[0] == pytest.approx(np.log(2))
    np.testing.assert_allclose(combine(q, [3, 1]), [[0.75, 0.25]])


def test_ensemble_of_identical_members_equals_the_member(runs, tmp_path):
    spec = create_spec(tmp_path / "same.json", [runs / "a", runs / "a"], names=["a1", "a2"], weights=[1, 2])
    ens = load_ensemble(spec)
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        p_ens, p_mem = ens.module(x)
        model = ens.module.members[0]
        single = torch.softmax(model((x - ens.module.mean[0]) / ens.module.std[0]), -1)
    torch.testing.assert_close(p_ens, single, atol=1e-6, rtol=0)
    assert js_divergence(p_mem.numpy()) == pytest.approx(np.zeros(4), abs=1e-7)
    rep = evaluate_ensemble(spec)
    assert rep.members[0].temperature == pytest.approx(rep.members[1].temperature)
    for stage in ("before", "after"):
        for key in ("accuracy", "balanced_accuracy", "ece", "nll"):
            assert getattr(rep, f"ensemble_{stage}")[key] == pytest.approx(getattr(rep.members[0], stage)[key],
                                                                           abs=1e-6)
    # temperatures were written back into the file
    saved = load_spec(tmp_path / "same.json")
    assert all(m.temperature is not None for m in saved.members)
    assert saved.members[1].weight == 2.0


def test_evaluate_two_members_per_image_and_cam(runs, tmp_path):
    spec = create_spec(tmp_path / "ens.json", [runs / "a", runs / "b"], names=["A", "B"])
    rep = evaluate_ensemble(spec, per_image=tmp_path / "per_image.csv", cam_dir=tmp_path / "cams", cam_limit=2)
    assert rep.n > 0 and len(rep.members) == 2
    for r in rep.members:
        assert 0.05 <= r.temperature <= 20
        assert r.after["accuracy"] == r.before["accuracy"]      # scaling keeps every argmax
    table = format_table(rep)
    assert "| ensemble | after |" in table and "| A | before |" in table
    lines = (tmp_path / "per_image.csv").read_text().splitlines()
    assert len(lines) == rep.n + 1
    assert "entropy" in lines[0] and "disagreement_js" in lines[0] and "A_prob_benign" in lines[0]
    cams = sorted((tmp_path / "cams").glob("*.png"))
    assert len(cams) == 2
    from PIL import Image

    assert Image.open(cams[0]).size == (32 * 4, 32)   # input | A | B | ensemble


def test_grad_cam_on_last_stage(runs):
    ens = load_ensemble(create_spec(runs / "cam.json", [runs / "a"]))
    out = ens.cam(torch.rand(3, 32, 32))
    heat = out.ensemble
    assert heat.shape == (32, 32) and heat.min() >= 0 and heat.max() <= 1 + 1e-6
    assert out.class_name in CLASSES and set(out.members) == {ens.names[0]}
    from core.inference.ensemble import cam_for_file

    split = json.loads((runs / "a" / "split.json").read_text())
    path = Path(split["root"]) / split["test"][0][0]
    full = cam_for_file(ens, path)
    from PIL import Image

    with Image.open(path) as im:
        assert full.ensemble.shape == (im.height, im.width)
    model = ens.module.members[0]
    maps = grad_cam(model, torch.rand(2, 3, 32, 32), target=[0, 1], size=(16, 16))
    assert maps.shape == (2, 16, 16) and np.isfinite(maps).all()


def test_cross_validated_ensemble(demo_dir, tmp_path):
    data = load_labeled_data(demo_dir)
    run_kfold(tiny_cfg(), data, tmp_path / "a", k=2)
    run_kfold(tiny_cfg(lr=1e-3), data, tmp_path / "b", k=2)
    spec = create_spec(tmp_path / "cv.json", [tmp_path / "a", tmp_path / "b"], names=["A", "B"])
    rep = evaluate_ensemble_cv(spec)
    assert rep["k"] == 2 and set(rep["mean_std"]) == {"A", "B", "ensemble"}
    assert rep["pooled_after"]["ensemble"]["n"] == 96
    assert len(rep["mean_std"]["A"]["temperatures"]) == 2
    after = {n: rep["mean_std"][n]["after"]["accuracy"]["mean"] for n in ("A", "B", "ensemble")}
    best = max(("A", "B"), key=after.get)
    assert rep["verdict"]["best_member"] == best and rep["verdict"]["best_member_value"] == after[best]
    assert rep["verdict"]["ensemble_value"] == after["ensemble"]
    json.dumps(rep)
    assert "± " in format_table(rep)


def test_ensemble_module_normalises_per_member():
    m1, c1 = build_classifier(tiny_cfg(), CLASSES, lambda m: None)
    ens = EnsembleModel([m1.eval(), m1.eval()], [(0.5,) * 3, (0.2,) * 3], [(0.25,) * 3, (0.3,) * 3], [1.0, 2.0],
                        [1, 1])
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        p, mem = ens(x)
        ref1 = torch.softmax(m1((x - 0.5) / 0.25), -1)
        ref2 = torch.softmax(m1((x - 0.2) / 0.3) / 2.0, -1)
    torch.testing.assert_close(mem[0], ref1)
    torch.testing.assert_close(mem[1], ref2)
    torch.testing.assert_close(p, (ref1 + ref2) / 2)


def test_ensemble_report_is_typed_and_its_json_keeps_the_file_layout(runs, tmp_path, capsys):
    """evaluate_ensemble returns an EnsembleReport (per-image arrays as fields, no side channel in the
    report); the JSON report written by `medssl ensemble` is its to_dict()."""
    from core.cli import main
    from core.inference.ensemble import EnsembleReport

    spec = create_spec(tmp_path / "ens.json", [runs / "a", runs / "b"], names=["A", "B"], weights=[1, 3])
    rep = evaluate_ensemble(spec)
    assert isinstance(rep, EnsembleReport)
    n = rep.n
    assert rep.labels_n.shape == (n,) and rep.probs_nc.shape == (n, 3) and rep.member_probs_mnc.shape == (2, n, 3)
    np.testing.assert_allclose(rep.probs_nc, combine(rep.member_probs_mnc, [1, 3]))
    assert rep.mean_js == pytest.approx(float(js_divergence(rep.member_probs_mnc, [1, 3]).mean()))
    d = rep.to_dict()
    assert set(d) == {"split", "n", "classes", "members", "ensemble", "uncertainty", "unreadable", "verdict"}
    assert d["unreadable"] == [] and rep.unreadable == {}
    best = max(rep.members, key=lambda m: m.after["accuracy"])
    verdict = rep.verdict()
    assert (verdict.best_member, verdict.best_member_value) == (best.name, best.after["accuracy"])
    assert verdict.beats == (rep.ensemble_after["accuracy"] > best.after["accuracy"])
    assert verdict.source == f"the test split ({n} images)" and d["verdict"] == verdict.to_dict()
    assert verdict.sentence() in format_table(rep)
    assert [m["name"] for m in d["members"]] == ["A", "B"] and set(d["ensemble"]) == {"before", "after"}
    json.dumps(d)
    assert main(["ensemble", str(tmp_path / "ens.json"), "--report", str(tmp_path / "r.json")]) == 0
    written = json.loads((tmp_path / "r.json").read_text())
    assert set(written) == set(d) and written["n"] == n and "_probs" not in written
    assert "A: T=" in capsys.readouterr().out


def test_cached_verdict_is_the_built_ensembles_and_runs_no_model(runs, tmp_path, monkeypatch):
    import shutil

    import core.models.classifier as classifier
    from core.inference.ensemble import cached_verdict

    built = evaluate_ensemble(create_spec(tmp_path / "ens.json", [runs / "a", runs / "b"], names=["A", "B"]))

    def no_model(*_a, **_k):
        raise AssertionError("a model was run: the cached logits are enough")

    monkeypatch.setattr(classifier, "load_classifier", no_model)
    assert cached_verdict([runs / "a", runs / "b"], ["A", "B"]) == built.verdict()
    bare = tmp_path / "bare"
    shutil.copytree(runs / "a" / "checkpoint-best", bare / "checkpoint-best")   # a checkpoint, no cached logits
    assert cached_verdict([bare, runs / "b"], ["A", "B"]) is None


@pytest.mark.parametrize("member, reason", [
    ({"temperature": -1.0}, "temperature must be a finite number > 0"),
    ({"temperature": 0}, "temperature must be a finite number > 0"),
    ({"temperature": "NaN"}, "temperature must be a finite number > 0"),
    ({"weight": 0}, "weight must be a finite number > 0"),
    ({"weight": float("inf")}, "weight must be a finite number > 0"),
    ({"weight": "heavy"}, "weight must be a finite number > 0"),
])
def test_ensemble_values_are_validated(tmp_path, member, reason):
    path = tmp_path / "ens.json"
    path.write_text(json.dumps({"members": [{"checkpoint": "a", **member}]}))
    with pytest.raises(ValueError, match=reason) as err:
        load_spec(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("text, reason", [
    ('{"members": [', "invalid JSON at line 1"),
    ('[1, 2]', "a JSON object with 'members'"),
    ('{"members": {"a": 1}}', "'members' must be a list"),
    ('{"members": [{"weight": 1}]}', "member 0 has no 'checkpoint'"),
])
def test_malformed_ensemble_json_is_a_clear_error(tmp_path, text, reason):
    path = tmp_path / "ens.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=reason) as err:
        load_spec(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("change, reason", [
    ({"std": [0.2, 0.0, 0.2]}, "std must be 3 finite numbers > 0"),
    ({"mean": [0.5, float("nan"), 0.5]}, "mean must be 3 finite numbers"),
    ({"image_size": 1_000_000}, "image_size must be a whole number"),
    ({"image_size": -32}, "image_size must be a whole number"),
])
def test_checkpoint_values_are_validated(tmp_path, change, reason):
    from core.models.classifier import load_classifier, save_classifier_checkpoint

    model, ccfg = build_classifier(tiny_cfg(), CLASSES, lambda m: None)
    ckpt = tmp_path / "run" / "checkpoint-best"
    save_classifier_checkpoint(ckpt, model, ccfg)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ValueError, match=reason) as err:
        load_classifier(ckpt)
    assert str(ckpt) in str(err.value)


def test_members_outside_the_folder_are_checked_and_a_moved_ensemble_still_loads(tmp_path):
    """The policy of the module docstring: members outside the file's folder are allowed (the window's
    runs/ensemble-N/ensemble.json -> ../finetune-M); a path to something that is not a classifier checkpoint
    (../../x, an absolute folder elsewhere) is refused naming the file and the member; moving the ensemble's
    folder without its members still loads (its absolute place), moving the project with both too."""
    from core.models.classifier import save_classifier_checkpoint

    model, ccfg = build_classifier(tiny_cfg(), CLASSES, lambda m: None)
    project = tmp_path / "project"
    save_classifier_checkpoint(project / "runs" / "finetune-1" / "checkpoint-best", model, ccfg)
    path = project / "runs" / "ensemble-2" / "ensemble.json"
    create_spec(path, [project / "runs" / "finetune-1"])
    assert json.loads(path.read_text())["members"][0]["checkpoint"] == "../finetune-1"
    assert load_ensemble(path).names == ["finetune-1"]

    moved = tmp_path / "elsewhere" / "ensemble-2"                    # the ensemble's folder alone
    moved.parent.mkdir()
    path.parent.rename(moved)
    assert load_ensemble(moved / "ensemble.json").names == ["finetune-1"]
    whole = tmp_path / "moved-project"                               # the project with both
    project.rename(whole)
    shutil.copytree(moved, whole / "runs" / "ensemble-2")
    assert load_ensemble(whole / "runs" / "ensemble-2" / "ensemble.json").names == ["finetune-1"]

    stranger = tmp_path / "stranger"
    (stranger / "x").mkdir(parents=True)
    (stranger / "x" / "config.json").write_text('{"not": "a checkpoint"}')
    (stranger / "x" / "model.safetensors").write_bytes(b"junk")
    outside = stranger / "ens.json"
    for member, reason in (("../../x", "does not exist"), (str(stranger / "x"), "not a MedSSL classifier"),
                           ("/etc", "no classifier checkpoint")):
        outside.write_text(json.dumps({"members": [{"checkpoint": member, "name": "m"}]}))
        with pytest.raises(ValueError if reason != "does not exist" else FileNotFoundError, match=reason) as err:
            load_ensemble(outside)
        assert str(outside) in str(err.value) and "member m" in str(err.value)
