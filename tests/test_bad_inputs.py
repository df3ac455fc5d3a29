"""Bad input through every path: each file of a generated corpus gets a result or a per-file error
naming it, the rest proceeds, and no exported cell can run as a formula. Prints tried/handled per path."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from core.csvcells import unescape_cell
from tests.bad_inputs import check_handled, good_images, make_corpus, make_two_class_corpus, rel_to, tree
from tests.test_csvcells import formula_cells
from tests.test_kill_resume import PRETRAIN_ARGS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    bad, maybe = make_corpus(root)
    return root, bad, maybe


def test_scan_and_scan_store(corpus, tmp_path, capsys):
    from core.cli import main

    root, bad, maybe = corpus
    assert main(["scan", str(root), "--json", "--store"]) == 0
    summary = json.loads(capsys.readouterr().out)
    errors = {rel_to(root, e["path"]): e["reason"] for e in summary["errors"]}
    from core.data.library import scan_folder

    ok = {r.rel_path for r in scan_folder(root).images}
    check_handled("scan --store", ok, errors, bad, maybe)
    assert [len(group) for group in summary["identical_files"]] == [6]     # plain.png's copies, listed


def test_entropy(corpus, tmp_path):
    from core.analysis.entropy_maps import entropy_folder_job

    root, bad, maybe = corpus
    out = tmp_path / "maps"
    s = entropy_folder_job(root, out, cell=8, radius=2)(None)
    errors = {rel_to(root, p): reason for p, reason in s["errors"]}
    ok = {rel_to(out, p.with_suffix("")).rsplit("_entropy", 1)[0] for p in out.rglob("*.png")}
    ok = {n for n in maybe if any(n.rsplit(".", 1)[0] in o for o in ok)}
    check_handled("entropy", ok, errors, bad, maybe)
    assert s["n_written"] == len(maybe - set(errors))
    assert formula_cells(out / "errors.csv") == []


def test_predict(corpus, tmp_path):
    from core.inference.ensemble import create_spec
    from core.inference.predict import predict_folder
    from core.models.classifier import build_classifier, save_classifier_checkpoint
    from core.train.config import FinetuneConfig

    root, bad, maybe = corpus
    torch.manual_seed(0)
    model, ccfg = build_classifier(FinetuneConfig(backbone="convnext_atto", tiny=True, init="random",
                                                  image_size=32), ["=a", "b"], lambda m: None)
    save_classifier_checkpoint(tmp_path / "m" / "checkpoint-best", model, ccfg)
    ens = create_spec(tmp_path / "ens.json", [tmp_path / "m"]).path
    out = tmp_path / "preds.csv"
    predict_folder(root, out, ensemble=ens, batch_size=4, num_workers=0, backend="torch")
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    ok = {unescape_cell(r["path"]) for r in rows if r["status"] == "ok"}
    errors = {unescape_cell(r["path"]): r["error"] for r in rows if r["status"] == "error"}
    check_handled("predict", ok, errors, bad, maybe)
    assert formula_cells(out) == []
    again = predict_folder(root, out, ensemble=ens, batch_size=4, num_workers=0, backend="torch")
    assert again["predicted"] == again["errors"] == 0


def test_manifest_with_missing_escaping_and_formula_rows(corpus, capsys):
    from core.data.library import scan_folder

    root, bad, maybe = corpus
    (root / "manifest.csv").write_text("path,label\n../../etc/passwd,x\nnope.png,y\n"
                                       "c/plain.png,\"=cmd|' /C calc'!A0\"\n", encoding="utf-8")
    result = scan_folder(root)
    reasons = {str(e.path): e.reason for e in result.errors}
    assert any("passwd" in p and "outside" in r for p, r in reasons.items())
    assert any(p.endswith("nope.png") and "does not exist" in r for p, r in reasons.items())
    assert all("etc" not in r.rel_path for r in result.images)
    assert {r.rel_path: r.label for r in result.images}["c/plain.png"] == "=cmd|' /C calc'!A0"
    (root / "manifest.csv").write_text("label\nx\n", encoding="utf-8")          # no 'path' column
    assert any("no 'path' column" in e.reason for e in scan_folder(root).errors)


def test_reconstruct(corpus, demo_dir, tmp_path, capsys):
    from core.cli import main
    from core.models.backbones import TINY_CONVNEXT
    from core.pretrain.config import TrainConfig
    from core.pretrain.trainer import train

    root, bad, maybe = corpus
    run = tmp_path / "mae"
    train(TrainConfig(method="mae", data=str(demo_dir), out=str(run), backbone="convnext_atto",
                      timm_kwargs=TINY_CONVNEXT, image_size=64, epochs=1, batch_size=32, warmup_epochs=0,
                      probe_size=8, max_steps=1, precision="fp32", options={"decoder_width": 16}))
    files = sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())
    files = [p for p in files if p.name != "manifest.csv"]
    capsys.readouterr()
    assert main(["reconstruct", str(run), *map(str, files), "--out", str(tmp_path / "panels")]) == 1
    out = capsys.readouterr().out
    printable = {p: os.fsencode(p).decode("utf-8", "backslashreplace") for p in files}
    lines = out.splitlines()
    errors = {rel_to(root, name): line[len(f"error: {name}: "):] for name in printable.values()
              for line in lines if line.startswith(f"error: {name}: ")}
    ok = {rel_to(root, name) for name in printable.values()} - set(errors)
    named = {"c/caf\\xe9.png"}      # given by name, a file whose name is not UTF-8 is read (its panel too)
    check_handled("reconstruct", ok, errors, bad - named, maybe | named)


def test_finetune_on_a_one_class_folder_is_a_clear_error(corpus, tmp_path, capsys):
    from core.cli import main

    root, _, _ = corpus
    assert main(["finetune", str(root), "--out", str(tmp_path / "ft"), "--init", "random", "--backbone",
                 "convnext_atto", "--image-size", "32", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "two labelled classes" in err and "Traceback" not in err


def logged_errors(text: str, root: Path, names: set[str], prefix: str) -> dict[str, str]:
    """``{name: reason}`` of the log lines ``PREFIX ROOT/NAME: REASON``."""
    errors = {}
    for line in text.splitlines():
        for name in names:
            head = f"{prefix}{root}/{name}: "
            if line.startswith(head):
                errors[name] = line[len(head):]
    return errors




def pretraining_corpus(root: Path, method: str) -> tuple[set[str], set[str]]:
    """The corpus plus eight good images, laid out as ``method`` reads a folder: MICLe gets cases and the
    multimodal method cases of two modalities from a manifest.csv that lists every bad file too."""
    bad, maybe = make_corpus(root)
    maybe |= {f"c/{n}" for n in good_images(root / "c", 8)}
    if method in ("micle", "multimodal"):
        listed = sorted(n for n in bad | maybe if "\\x" not in n)       # a manifest is UTF-8: not caf\xe9
        rows = [f'"{n}",,case-{i // 2},{("US", "MRI")[i % 2] if method == "multimodal" else ""}'
                for i, n in enumerate(listed)]
        (root / "manifest.csv").write_text("path,label,case_id,modality\n" + "\n".join(rows) + "\n",
                                           encoding="utf-8")
    return bad, maybe


@pytest.mark.parametrize("method", list(PRETRAIN_ARGS))
def test_pretraining(method, tmp_path, data_dir, capsys):
    """Each method trains on the readable images and names every other file with its reason in RUN/job.log."""
    from core.cli import main
    from core.train.checkpoint import read_json

    root = tmp_path / "corpus"
    bad, maybe = pretraining_corpus(root, method)
    before = tree(root)
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["pretrain", method, str(root), "--out", str(run), "--tiny", "--backbone", "convnext_atto",
                 "--precision", "fp32", "--workers", "0", *PRETRAIN_ARGS[method], "--epochs", "1",
                 "--batch-size", "4", "--warmup-epochs", "0", "--max-steps", "1"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    log = job_log(run)                                 # the run's own log file, as the CLI showed it
    errors = logged_errors(log, root, bad | maybe, "skipped ")
    n_images = read_json(run / "checkpoint-last" / "config.json")["data"]["n_images"]
    assert n_images == len(maybe - set(errors))
    check_handled(f"pretrain {method}", maybe - set(errors), errors, bad, maybe)
    if method in ("micle", "multimodal"):                   # the manifest's cases (and modalities) were used
        pairs = next(line for line in log.splitlines() if line.startswith("pairs '"))
        print(pairs)
        assert " 0 cases" not in pairs and "same_case" in pairs, pairs
        assert method == "micle" or "2 modalities" in pairs, pairs
    assert (run / "encoder.safetensors").is_file()
    assert tree(root) == before                       # nothing written into the image folder
    assert {p.name for p in tmp_path.iterdir()} <= {"corpus", "run", "userdata"}   # nor beside it


@pytest.fixture
def two_class_corpus(tmp_path):
    root = tmp_path / "corpus"
    bad, maybe = make_two_class_corpus(root)
    return root, bad, maybe


def finetune_args(root: Path, out: Path) -> list[str]:
    return ["finetune", str(root), "--out", str(out), "--init", "random", "--tiny", "--backbone", "convnext_atto",
            "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--warmup-epochs", "0", "--workers", "0",
            "--precision", "fp32", "--quiet"]


def job_log(run: Path) -> str:
    """The log messages a job wrote to RUN/job.log, one a line."""
    with open(run / "job.log", encoding="utf-8") as fh:
        return "\n".join(e["message"] for e in map(json.loads, fh) if e["kind"] == "log")


def split_names(run: Path) -> set[str]:
    """The images a fine-tuning run's split.json put in train, val or test."""
    from core.train.checkpoint import read_json

    split = read_json(run / "split.json")
    return {rel for part in ("train", "val", "test") for rel, _label in split[part]}


def test_finetune(two_class_corpus, tmp_path, data_dir, capsys):
    """A two-class copy of the corpus: every bad file of both classes logged with its reason, the rest split
    and trained; the exported logits cannot run as formulas."""
    from core.cli import main

    root, bad, maybe = two_class_corpus
    (root / "manifest.csv").write_text("path,label\n../../etc/passwd,a\nmissing.png,b\n", encoding="utf-8")
    bad = bad | {"missing.png"}
    before = tree(root)
    run = tmp_path / "ft"
    capsys.readouterr()
    assert main(finetune_args(root, run)) == 0
    assert "Traceback" not in capsys.readouterr().err
    log = job_log(run)
    errors = logged_errors(log, root, bad | maybe, "skipped ")
    assert "skipped ../../etc/passwd: listed in manifest.csv (line 2) but outside" in log
    used = split_names(run)
    check_handled("finetune", used, errors, bad, maybe)
    assert used == maybe - set(errors)
    for part in ("val", "test"):
        assert formula_cells(run / f"logits_{part}.csv") == []
    assert tree(root) == before
    assert {p.name for p in tmp_path.iterdir()} <= {"corpus", "ft", "userdata"}


@pytest.mark.parametrize("cached", [False, True], ids=["images-read", "logits-cached"])
def test_ensemble(cached, two_class_corpus, tmp_path, data_dir, capsys):
    """Two members fine-tuned on the two-class corpus; then files of their val/test split are spoilt with the
    corpus's bad files. Images read (cached logits removed): the ensemble names each spoilt image with its
    reason in its log and report and evaluates the rest. Logits cached (the images are not read for them):
    the Grad-CAM of each spoilt test image is named as not made, the others are made."""
    import shutil

    from core.cli import main
    from core.train.checkpoint import read_json

    root, bad, maybe = two_class_corpus
    members = [tmp_path / "m0", tmp_path / "m1"]
    for m in members:
        assert main([*finetune_args(root, m), "--val-fraction", "0.3", "--test-fraction", "0.3"]) == 0
    split = read_json(members[0] / "split.json")
    evaluated = [rel for part in ("val", "test") for rel, _ in split[part]]
    test_rel = {rel for rel, _ in split["test"]}
    kinds = sorted(n for n in bad if n.startswith("a/") and "\\x" not in n and "loop" not in n)  # file contents
    spoilt = dict(zip(evaluated[::2], kinds))
    assert len(spoilt) == len(kinds) and set(spoilt) & test_rel and set(spoilt) - test_rel    # val and test have some
    for rel, source in spoilt.items():
        (root / rel).unlink()
        shutil.copyfile(root / source, root / rel)
    if not cached:
        for m in members:
            for logits in m.glob("logits_*.csv"):
                logits.unlink()
    before = tree(root)
    capsys.readouterr()
    assert main(["ensemble", str(tmp_path / "ens.json"), "--members", *map(str, members), "--per-image",
                 str(tmp_path / "per_image.csv"), "--cam", str(tmp_path / "cam")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    report = read_json(tmp_path / "ens.report.json")
    rows = {unescape_cell(r["path"]) for r in csv.DictReader(open(tmp_path / "per_image.csv", encoding="utf-8"))}
    cams = len(list((tmp_path / "cam").glob("*_cam.png")))
    if cached:
        errors = logged_errors(err, root, test_rel, "no Grad-CAM for ")
        check_handled("ensemble --cam", test_rel - set(errors), errors, set(spoilt) & test_rel, test_rel - set(spoilt))
        assert rows == test_rel and report["unreadable"] == [] and cams == len(test_rel - set(spoilt))
    else:
        errors = logged_errors(err, root, set(evaluated), "skipped ")
        assert {e["path"]: e["reason"] for e in report["unreadable"]} == {r: errors[r] for r in errors
                                                                          if r in test_rel}
        check_handled("ensemble", rows, errors, set(spoilt), test_rel - set(spoilt))
        assert rows == test_rel - set(spoilt) and report["n"] == len(rows) == cams
    assert formula_cells(tmp_path / "per_image.csv") == []
    assert tree(root) == before
    assert {p.name for p in tmp_path.iterdir()} <= {"corpus", "m0", "m1", "ens.json", "ens.report.json",
                                                   "per_image.csv", "cam", "userdata"}


def test_study(two_class_corpus, tmp_path, data_dir, capsys):
    """The tiny study on the two-class corpus: every bad file named with its reason in the study's job.log,
    the folds (and the report's image count) hold exactly the readable images, the report is written."""
    from core.cli import main
    from core.train.checkpoint import read_json

    root, bad, maybe = two_class_corpus
    before = tree(root)
    out = tmp_path / "study"
    capsys.readouterr()
    assert main(["study", str(root), "--out", str(out), "--budget", "tiny", "--kfold", "2", "--transductive",
                 "--no-control", "--member-a-init", "random", "--precision", "fp32", "--workers", "0",
                 "--n-boot", "50", "--panels", "1", "--quiet"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    errors = logged_errors(job_log(out), root, bad | maybe, "skipped ")
    folds = set(read_json(out / "folds.json")["fold"])
    check_handled("study", folds, errors, bad, maybe)
    assert folds == maybe - set(errors)
    assert read_json(out / "report" / "report.json")["data"]["n_images"] == len(folds)
    assert (out / "report" / "report.html").is_file()
    assert tree(root) == before
    assert {p.name for p in tmp_path.iterdir()} <= {"corpus", "study", "userdata"}
