"""Batch folder prediction: resume after a kill, error rows, JSON lines, ONNX export (tiny models)."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.inference.ensemble import create_spec, load_ensemble
from core.models.classifier import build_classifier, save_classifier_checkpoint
from core.train.config import FinetuneConfig
from core.inference.predict import list_images, output_columns, predict_folder

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["benign", "malignant", "normal"]



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def ensemble_file(tmp_path_factory) -> Path:
    """Two untrained tiny members (prediction does not care whether they learned anything)."""
    root = tmp_path_factory.mktemp("pred")
    for i, name in enumerate(("a", "b")):
        torch.manual_seed(i)
        cfg = FinetuneConfig(backbone="convnext_atto", tiny=True, init="random", image_size=32)
        model, ccfg = build_classifier(cfg, CLASSES, lambda m: None)
        save_classifier_checkpoint(root / name / "checkpoint-best", model, ccfg)
    spec = create_spec(root / "ens.json", [root / "a", root / "b"], names=["A", "B"])
    spec.members[0].temperature, spec.members[1].temperature = 1.5, 0.8
    spec.save()
    return root / "ens.json"


@pytest.fixture
def folder(demo_dir, tmp_path) -> Path:
    """A copy of 24 demo images (no masks) plus two broken files."""
    out = tmp_path / "imgs"
    for rel in list_images(demo_dir)[::4]:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_dir / rel, out / rel)
    (out / "broken").mkdir()
    (out / "broken" / "not_an_image.png").write_bytes(b"this is not a PNG file at all")
    png = (demo_dir / list_images(demo_dir)[0]).read_bytes()
    (out / "broken" / "truncated.png").write_bytes(png[: len(png) // 3])
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_predict_csv_and_error_rows(ensemble_file, folder, tmp_path):
    out = tmp_path / "preds.csv"
    s = predict_folder(folder, out, ensemble=ensemble_file, batch_size=5, num_workers=0, backend="torch",
                      precision="fp32")  # the reference below is fp32; "auto" may pick bf16 on a CPU with AMX
    rows = _rows(out)
    n_images = len(list_images(folder))
    assert len(rows) == n_images == 26 and s["predicted"] == 24 and s["errors"] == 2
    errors = {r["path"]: r for r in rows if r["status"] == "error"}
    assert set(errors) == {"broken/not_an_image.png", "broken/truncated.png"}
    assert all(r["error"] for r in errors.values())
    ok = [r for r in rows if r["status"] == "ok"]
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in ok])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert all(r["predicted"] in CLASSES for r in ok)
    assert list(rows[0].keys()) == output_columns(CLASSES, ["A", "B"])
    # the same numbers as the ensemble applied by hand (temperatures included)
    ens = load_ensemble(ensemble_file)
    x = torch.stack([ens.load_image(folder / r["path"]) for r in ok[:3]])
    ref, members = ens.predict(x)
    np.testing.assert_allclose(probs[:3], ref, atol=2e-6)
    mem_a = np.array([[float(r[f"A_prob_{c}"]) for c in CLASSES] for r in ok[:3]])
    np.testing.assert_allclose(mem_a, members[0], atol=2e-6)
    # a second run adds nothing
    s2 = predict_folder(folder, out, ensemble=ensemble_file, batch_size=5, num_workers=0, backend="torch")
    assert s2["predicted"] == 0 and s2["already_done"] == 26 and len(_rows(out)) == 26


def test_predict_jsonl_with_workers(ensemble_file, folder, tmp_path):
    out = tmp_path / "preds.jsonl"
    predict_folder(folder, out, ensemble=ensemble_file, batch_size=8, num_workers=2, backend="torch")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 26 and len({r["path"] for r in rows}) == 26
    ok = [r for r in rows if r["status"] == "ok"]
    assert set(ok[0]["probs"]) == set(CLASSES) and set(ok[0]["members"]) == {"A", "B"}
    assert "entropy" in ok[0] and "disagreement_js" in ok[0]
    assert sum(r["status"] == "error" for r in rows) == 2


_SLOW_RUN = """
import sys, time
import core.inference.predict as p
orig = p.load_8bit
def slow(path):
    time.sleep(0.15)
    return orig(path)
p.load_8bit = slow
p.predict_folder(sys.argv[1], sys.argv[2], ensemble=sys.argv[3], batch_size=2, num_workers=0, backend="torch")
"""


def test_predict_resumes_after_kill_without_duplicates(ensemble_file, folder, tmp_path):
    out = tmp_path / "preds.csv"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, str(folder), str(out), str(ensemble_file)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if out.exists() and len(out.read_text().splitlines()) >= 5:   # header + >= 2 batches
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = _rows(out)
    assert 0 < len(before) < 26
    # also simulate a write cut in the middle of a line
    with open(out, "a", encoding="utf-8") as fh:
        fh.write("benign/half_written.png,ok,beni")
    s = predict_folder(folder, out, ensemble=ensemble_file, batch_size=4, num_workers=0, backend="torch")
    rows = _rows(out)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 26
    assert set(paths) == set(list_images(folder))
    assert s["already_done"] == len(before) and s["predicted"] + s["errors"] == 26 - len(before)


def test_output_with_other_columns_is_refused(ensemble_file, folder, tmp_path):
    out = tmp_path / "preds.csv"
    out.write_text("path,status,something_else\n")
    with pytest.raises(ValueError, match="other columns"):
        predict_folder(folder, out, ensemble=ensemble_file, num_workers=0, backend="torch")


def test_export_onnx_matches_torch(ensemble_file, folder, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from core.inference.predict import OnnxEnsemble, export_onnx

    path = export_onnx(ensemble_file, tmp_path / "ens.onnx")
    runner = OnnxEnsemble(path)
    assert runner.classes == CLASSES and runner.names == ["A", "B"]
    ens = load_ensemble(ensemble_file)
    x = torch.rand(3, 3, 32, 32)
    ref, ref_m = ens.predict(x)
    got, got_m = runner(x)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(got_m, ref_m, atol=1e-5)
    out_t, out_o = tmp_path / "t.csv", tmp_path / "o.csv"
    predict_folder(folder, out_t, ensemble=ensemble_file, num_workers=0, backend="torch")
    predict_folder(folder, out_o, onnx=path, num_workers=0)
    # backend="auto" exports once into a cache beside the ensemble file and reuses it
    out_a = tmp_path / "a.csv"
    s = predict_folder(folder, out_a, ensemble=ensemble_file, num_workers=0, backend="onnx")
    assert s["backend"] == "onnxruntime"
    assert len(list((ensemble_file.parent / ".medssl-onnx").glob("*.onnx"))) == 1
    pt = {r["path"]: r for r in _rows(out_t)}
    for r in _rows(out_o):
        assert r["status"] == pt[r["path"]]["status"]
        if r["status"] == "ok":
            assert abs(float(r["prob_benign"]) - float(pt[r["path"]]["prob_benign"])) < 1e-4


def test_predict_cli(ensemble_file, folder, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "cli.csv"
    assert main(["predict", str(folder), "--ensemble", str(ensemble_file), "--out", str(out), "--workers", "0",
                 "--backend", "torch", "--quiet"]) == 0
    assert len(_rows(out)) == 26
    assert "24 predicted, 2 errors" in capsys.readouterr().out
