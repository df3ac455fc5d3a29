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
from PIL import Image

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
    predict_folder(folder, out_t, ensemble=ensemble_file, num_workers=0, backend="torch",
                   precision="fp32")  # ONNX Runtime runs fp32; "auto" may pick bf16 on a CPU with AMX
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


def test_export_onnx_leaves_no_temp_file_and_a_failed_export_keeps_the_old_one(ensemble_file, tmp_path,
                                                                                 monkeypatch):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from core.inference import predict
    from core.inference.predict import OnnxEnsemble, export_onnx

    out = tmp_path / "ens.onnx"
    export_onnx(ensemble_file, out)
    assert [p.name for p in tmp_path.iterdir()] == ["ens.onnx"]         # no temp file left beside it
    good = out.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(onnx, "save", disk_full)     # the exported temp file is there: it must not stay
    with pytest.raises(OSError, match="No space left"):
        export_onnx(ensemble_file, out)
    assert out.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["ens.onnx"]
    monkeypatch.undo()
    monkeypatch.setattr(predict.OnnxEnsemble, "__call__", lambda self, x: (np.zeros((len(x), len(self.classes))),
                                                                          None))
    with pytest.raises(RuntimeError, match="ONNX export differs from PyTorch"):
        export_onnx(ensemble_file, out)
    assert out.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["ens.onnx"]
    monkeypatch.undo()
    assert OnnxEnsemble(out).names == ["A", "B"]


def test_predict_cli(ensemble_file, folder, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "cli.csv"
    assert main(["predict", str(folder), "--ensemble", str(ensemble_file), "--out", str(out), "--workers", "0",
                 "--backend", "torch", "--quiet"]) == 0
    assert len(_rows(out)) == 26
    assert "24 predicted, 2 errors" in capsys.readouterr().out


def test_channels_last_gives_the_same_probabilities(ensemble_file, folder, tmp_path):
    """EnsembleModel's per-member mean/std are 4-D buffers, so channels_last (the GPU default) works."""
    x = torch.rand(3, 3, 32, 32)
    ref_p, ref_m = load_ensemble(ensemble_file, "cpu").inference(precision="fp32", channels_last=False)(x)
    run = load_ensemble(ensemble_file, "cpu").inference(precision="fp32", channels_last=True)
    assert run.channels_last
    got_p, got_m = run(x)
    np.testing.assert_allclose(got_p, ref_p, atol=1e-6)
    np.testing.assert_allclose(got_m, ref_m, atol=1e-6)
    out_cl, out_ref = tmp_path / "cl.csv", tmp_path / "ref.csv"
    for out, cl in ((out_cl, True), (out_ref, False)):
        predict_folder(folder, out, ensemble=ensemble_file, backend="torch", precision="fp32", channels_last=cl,
                       num_workers=0)
    ref = {r["path"]: r for r in _rows(out_ref)}
    for r in _rows(out_cl):
        assert r["status"] == ref[r["path"]]["status"]
        for c in (CLASSES if r["status"] == "ok" else []):
            assert abs(float(r[f"prob_{c}"]) - float(ref[r["path"]][f"prob_{c}"])) < 1e-5


def test_low_precision_is_dropped_when_it_moves_the_outputs(ensemble_file):
    from core.inference.logits import Inference

    ens = load_ensemble(ensemble_file, "cpu")
    x = torch.rand(2, 3, 32, 32)
    ref = ens.inference(precision="fp32")(x)
    strict = Inference(ens.module, "cpu", precision="bf16", check_tol=0.0, log=lambda _m: None)
    got = strict(x)
    assert strict.precision == "fp32" and strict.max_diff_vs_fp32 > 0
    np.testing.assert_array_equal(got[1], ref[1])
    lax = Inference(ens.module, "cpu", precision="bf16", check_tol=1.0)
    lax(x)
    assert lax.precision == "bfloat16" and 0 < lax.max_diff_vs_fp32 <= 1.0


def test_predict_logits_runs_the_model_over_the_loader():
    from torch.utils.data import DataLoader, TensorDataset

    from core.inference.logits import predict_logits

    cfg = FinetuneConfig(backbone="convnext_atto", tiny=True, init="random", image_size=32)
    model, _ = build_classifier(cfg, CLASSES, lambda m: None)
    x, y = torch.rand(5, 3, 32, 32), torch.tensor([0, 1, 2, 1, 0])
    logits, labels = predict_logits(model, DataLoader(TensorDataset(x, y, torch.arange(5)), batch_size=2),
                                    torch.device("cpu"), None)
    with torch.inference_mode():
        ref = model.eval()(x).numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-5)
    np.testing.assert_array_equal(labels, y.numpy())


def test_one_softmax():
    import core.inference.ensemble as ensemble
    import core.inference.logits as logits

    assert ensemble.softmax is logits.softmax
    p = logits.softmax(np.array([[1.0, 2.0, 3.0]]), 2.0)
    np.testing.assert_allclose(p, np.exp([[0.5, 1.0, 1.5]]) / np.exp([[0.5, 1.0, 1.5]]).sum())


def test_parts_of_an_interrupted_torchrun_run_are_merged_once(ensemble_file, folder, tmp_path):
    """Rows a killed rank left in its part file (last line cut) end up in OUT once, in listing order."""
    from core.inference.predict import part_files

    ref_out = tmp_path / "ref.csv"
    predict_folder(folder, ref_out, ensemble=ensemble_file, backend="torch", precision="fp32", num_workers=0)
    ref = _rows(ref_out)
    out = tmp_path / "preds.csv"
    predict_folder(folder, out, ensemble=ensemble_file, backend="torch", precision="fp32", num_workers=0, limit=6)
    header, lines = ref_out.read_text().splitlines()[0], ref_out.read_text().splitlines()[1:]
    # rank 1 had finished rows 4..11 (4, 5 also already in OUT) and was killed while writing row 12
    (tmp_path / "preds.csv.rank1.part").write_text("\n".join([header] + lines[4:12]) + "\n" + lines[12][:15])
    (tmp_path / "preds.csv.rank0.part").write_text(header + "\n")
    s = predict_folder(folder, out, ensemble=ensemble_file, backend="torch", precision="fp32", num_workers=0)
    rows = _rows(out)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 26 and set(paths) == {r["path"] for r in ref}
    listing = list_images(folder)
    from_part = sorted({r["path"] for r in ref[4:12]} - set(paths[:6]), key=listing.index)
    assert len(from_part) == 6 and paths[6:12] == from_part          # OUT's 6, then the part's new ones in order
    assert s["already_done"] == 12 and s["predicted"] + s["errors"] == 26 - 12
    assert part_files(out) == []
    by_path = {r["path"]: r for r in ref}
    for r in rows:
        assert r["status"] == by_path[r["path"]]["status"] and r["prob_benign"] == by_path[r["path"]]["prob_benign"]


def _run_group(cmd: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``cmd`` in its own process group (torchrun and its workers); kill the whole group if it runs past
    ``timeout``."""
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{cmd[:6]} ran past {timeout} s:\n{output[-4000:]}")
    return proc.returncode, output


TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _torchrun_predict(folder: Path, ensemble: Path, out: Path, *extra: str) -> str:
    """`medssl predict` under torchrun with 2 gloo processes on the CPU."""
    rc, output = _run_group(TORCHRUN_2 + ["-m", "core.cli", "predict", str(folder), "--ensemble", str(ensemble),
                                          "--out", str(out), "--backend", "torch", "--precision", "fp32",
                                          "--workers", "0", *extra])
    assert rc == 0, output[-4000:]
    return output


@pytest.mark.slow   # two torchrun launches: ~40 s on the 2-core CI CPU
def test_predict_under_torchrun_two_processes_one_merged_resumable_output(ensemble_file, folder, tmp_path):
    """Each rank predicts its shard; OUT is one file with the rows of a 1-process run (fp32, 1e-5), and a
    second run after a partial one (--limit) adds exactly the missing rows."""
    from core.inference.predict import part_files

    one = tmp_path / "one.csv"
    predict_folder(folder, one, ensemble=ensemble_file, backend="torch", precision="fp32", num_workers=0)
    out = tmp_path / "two.csv"
    _torchrun_predict(folder, ensemble_file, out, "--limit", "9", "--batch-size", "2")
    first = _rows(out)
    assert len(first) == 9 and len({r["path"] for r in first}) == 9 and part_files(out) == []
    text = _torchrun_predict(folder, ensemble_file, out, "--batch-size", "3")
    import re

    summary = re.search(r"(\d+) predicted, (\d+) errors, (\d+) already done;.*2 processes", text)
    assert summary, text[-2000:]
    assert int(summary[1]) + int(summary[2]) == 26 - 9 and int(summary[3]) == 9   # each file on one rank only
    rows, ref = _rows(out), {r["path"]: r for r in _rows(one)}
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 26 and set(paths) == set(ref)
    assert list(rows[0].keys()) == output_columns(CLASSES, ["A", "B"]) and part_files(out) == []
    for r in rows:
        q = ref[r["path"]]
        assert r["status"] == q["status"]
        if r["status"] == "ok":
            assert r["predicted"] == q["predicted"]
            cols = [f"prob_{c}" for c in CLASSES] + [f"{n}_prob_{c}" for n in ("A", "B") for c in CLASSES]
            np.testing.assert_allclose([float(r[c]) for c in cols + ["entropy", "disagreement_js"]],
                                       [float(q[c]) for c in cols + ["entropy", "disagreement_js"]], atol=1e-5)


_KILL_RANK1 = """
import os, signal, sys
from core.inference.predict import predict_folder

class Ctx:   # rank 1 dies (SIGKILL) when asked for its third batch, after two were written
    calls = 0
    def check_cancelled(self):
        Ctx.calls += 1
        if os.environ["RANK"] == "1" and Ctx.calls == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    def progress(self, *a, **k):
        pass
    def log(self, msg):
        pass

predict_folder(sys.argv[1], sys.argv[2], ensemble=sys.argv[3], backend="torch", precision="fp32", num_workers=0,
               batch_size=2, ctx=Ctx())
"""


@pytest.mark.slow   # three torchrun launches
def test_torchrun_prediction_survives_a_killed_rank(ensemble_file, folder, tmp_path):
    """A rank killed mid-run leaves part files; the next torchrun run merges them into one complete OUT."""
    from core.inference.predict import part_files

    script = tmp_path / "kill_rank1.py"
    script.write_text(_KILL_RANK1)
    out = tmp_path / "two.csv"
    rc, output = _run_group(TORCHRUN_2 + [str(script), str(folder), str(out), str(ensemble_file)])
    assert rc != 0, output[-2000:]
    parts = part_files(out)
    assert parts and sum(len(_rows(p)) for p in parts) >= 4          # rank 1's two batches are kept
    _torchrun_predict(folder, ensemble_file, out)
    one = tmp_path / "one.csv"
    predict_folder(folder, one, ensemble=ensemble_file, backend="torch", precision="fp32", num_workers=0)
    rows, ref = _rows(out), {r["path"]: r for r in _rows(one)}
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 26 and set(paths) == set(ref) and part_files(out) == []
    for r in rows:
        if r["status"] == "ok":
            assert abs(float(r["prob_benign"]) - float(ref[r["path"]]["prob_benign"])) < 1e-5


def test_predict_csv_cells_cannot_run_as_formulas_and_resume(folder, tmp_path):
    """File names and predicted classes starting with = + - @ are escaped; a rerun reads them back as done."""
    from core.csvcells import unescape_cell
    from tests.test_csvcells import formula_cells

    classes = ["=HYPERLINK(1)", "@b", "-c"]
    torch.manual_seed(0)
    cfg = FinetuneConfig(backbone="convnext_atto", tiny=True, init="random", image_size=32)
    model, ccfg = build_classifier(cfg, classes, lambda m: None)
    save_classifier_checkpoint(tmp_path / "m" / "checkpoint-best", model, ccfg)
    ens = create_spec(tmp_path / "ens.json", [tmp_path / "m"], names=["=m"]).path
    first = folder / list_images(folder)[0]
    shutil.copy(first, first.parent / "=cmd|' calc'!A0.png")
    shutil.copy(first, first.parent / "+x.png")
    out = tmp_path / "preds.csv"
    s = predict_folder(folder, out, ensemble=ens, batch_size=8, num_workers=0, backend="torch")
    assert s["predicted"] == 26 and formula_cells(out) == []
    paths = {unescape_cell(r["path"]) for r in _rows(out)}
    assert {p for p in paths if "=cmd" in p or "+x" in p} == {
        str((first.parent / n).relative_to(folder).as_posix()) for n in ("=cmd|' calc'!A0.png", "+x.png")}
    assert {unescape_cell(r["predicted"]) for r in _rows(out) if r["status"] == "ok"} <= set(classes)
    s2 = predict_folder(folder, out, ensemble=ens, batch_size=8, num_workers=0, backend="torch")
    assert s2["predicted"] == 0 and s2["already_done"] == 28 and len(_rows(out)) == 28


def test_a_file_name_that_is_not_utf8_is_named_and_the_rest_proceeds(ensemble_file, folder, tmp_path):
    import os

    first = folder / list_images(folder)[0]
    bad = os.path.join(os.fsencode(first.parent), b"bad\xff name.png")
    shutil.copy(first, bad)
    out = tmp_path / "preds.csv"
    s = predict_folder(folder, out, ensemble=ensemble_file, batch_size=8, num_workers=0, backend="torch")
    rows = _rows(out)
    assert s["predicted"] == 24 and s["errors"] == 3 and len(rows) == 27
    named = [r for r in rows if "bad\\xff name.png" in r["path"]]
    assert len(named) == 1 and named[0]["status"] == "error" and "UTF-8" in named[0]["error"]
    s2 = predict_folder(folder, out, ensemble=ensemble_file, batch_size=8, num_workers=0, backend="torch")
    assert s2["predicted"] == s2["errors"] == 0 and len(_rows(out)) == 27


def test_running_out_of_memory_on_a_file_is_not_its_permanent_error(ensemble_file, folder, tmp_path, monkeypatch,
                                                                   caplog):
    """A MemoryError while decoding says nothing about the file: it gets no row (so no status=error that a
    rerun would skip for good), the run goes on and says so, and the next run predicts it."""
    import core.data.transforms as transforms

    victim = list_images(folder)[3]
    real_read = transforms.read_image

    def read_or_run_out(path, **kwargs):
        if Path(path).as_posix().endswith(victim):
            raise MemoryError()
        return real_read(path, **kwargs)

    monkeypatch.setattr(transforms, "open_plain_8bit", lambda path, **kwargs: None)   # decode via read_image
    monkeypatch.setattr(transforms, "read_image", read_or_run_out)
    out = tmp_path / "preds.csv"
    with caplog.at_level("INFO", logger="core.inference.predict"):
        s = predict_folder(folder, out, ensemble=ensemble_file, batch_size=5, num_workers=0, backend="torch")
    assert victim not in {r["path"] for r in _rows(out)}
    assert s["predicted"] == 23 and s["errors"] == 2 and s["retry_later"] == 1
    assert any(victim in m and "ran out of memory" in m for m in caplog.messages)
    monkeypatch.setattr(transforms, "read_image", real_read)
    s2 = predict_folder(folder, out, ensemble=ensemble_file, batch_size=5, num_workers=0, backend="torch")
    assert s2["predicted"] == 1 and s2["retry_later"] == 0
    rows = {r["path"]: r for r in _rows(out)}
    assert len(rows) == 26 and rows[victim]["status"] == "ok"


def test_a_dicom_file_without_a_suffix_is_predicted_like_the_scan_finds_it(ensemble_file, tmp_path):
    """Scanners write DICOM files without a suffix (IM0001); the one folder walk finds them by preamble, so
    prediction lists and reads the same files as the library scan."""
    from core.data.library import scan_folder
    from tests.dicom_files import write_dicom

    folder = tmp_path / "series"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("IM0001", "IM0002"):
        write_dicom(folder / name, rng.integers(0, 4096, (40, 48), dtype=np.uint16))
    Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(folder / "photo.png")
    out = tmp_path / "preds.csv"
    s = predict_folder(folder, out, ensemble=ensemble_file, batch_size=4, num_workers=0, backend="torch")
    rows = {r["path"]: r["status"] for r in _rows(out)}
    assert rows == {"IM0001": "ok", "IM0002": "ok", "photo.png": "ok"} and s["errors"] == 0
    assert sorted(rows) == [r.rel_path for r in scan_folder(folder).images]


def _data_rows(path: Path) -> int:
    """Complete rows (after the header) of a CSV file being written; 0 when it is absent."""
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.slow   # two torchrun launches and a 1-process reference run
def test_torchrun_prediction_killed_as_a_whole_resumes_without_duplicate_or_missing_rows(ensemble_file, demo_dir,
                                                                                        folder, tmp_path):
    """``torchrun ... medssl predict`` SIGKILLed as a whole (torchrun and both ranks, one process group) once
    some rows are in the part files (read from the files, never from its output); the same command run
    again gives OUT the rows of an uninterrupted 1-process run: each image once, none missing, the same
    probabilities (fp32)."""
    import os

    from core.inference.predict import part_files
    from tests.test_kill_resume import kill_command_when

    for rel in list_images(demo_dir)[1::2]:             # more images, so that a kill lands mid-way
        (folder / "more" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_dir / rel, folder / "more" / rel)
    listing = list_images(folder)
    out = tmp_path / "two.csv"
    cmd = TORCHRUN_2 + ["-m", "core.cli", "predict", str(folder), "--ensemble", str(ensemble_file), "--out", str(out),
                        "--backend", "torch", "--precision", "fp32", "--workers", "0", "--batch-size", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    kill_command_when(cmd, env, tmp_path / "killed.err", lambda: sum(_data_rows(p) for p in part_files(out)) >= 4,
                      "4 rows were in its part files")
    in_parts = sum(len(_rows(p)) for p in part_files(out))
    assert 4 <= in_parts < len(listing) and _data_rows(out) == 0     # killed mid-way, nothing merged yet

    _torchrun_predict(folder, ensemble_file, out, "--batch-size", "3")
    one = tmp_path / "one.csv"
    predict_folder(folder, one, ensemble=ensemble_file, backend="torch", precision="fp32", num_workers=0)
    rows, ref = _rows(out), {r["path"]: r for r in _rows(one)}
    paths = [r["path"] for r in rows]
    print(f"torchrun predict killed with {in_parts} of {len(listing)} rows in its part files; resumed: "
          f"{len(paths)} rows, {len(paths) - len(set(paths))} duplicate, {len(set(ref) - set(paths))} missing")
    assert len(paths) == len(set(paths)) == len(listing) and set(paths) == set(ref) and part_files(out) == []
    cols = [f"prob_{c}" for c in CLASSES] + [f"{n}_prob_{c}" for n in ("A", "B") for c in CLASSES]
    for r in rows:
        q = ref[r["path"]]
        assert (r["status"], r["predicted"], r["error"]) == (q["status"], q["predicted"], q["error"])
        if r["status"] == "ok":
            np.testing.assert_allclose([float(r[c]) for c in cols], [float(q[c]) for c in cols], atol=1e-5)
