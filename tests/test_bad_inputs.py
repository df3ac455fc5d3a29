"""Bad input through every path: each file of a generated corpus gets a result or a per-file error
naming it, the rest proceeds, and no exported cell can run as a formula. Prints tried/handled per path."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from core.csvcells import unescape_cell
from tests.bad_inputs import make_corpus
from tests.test_csvcells import formula_cells

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _check(path_name: str, ok: set[str], errors: dict[str, str], bad: set[str], maybe: set[str]) -> None:
    tried = bad | maybe
    handled = {n for n in bad if n in errors and errors[n]} | {n for n in maybe if n in ok or errors.get(n)}
    print(f"{path_name}: {len(tried)} bad inputs tried, {len(handled)} handled; errors named: "
          f"{sorted(errors)}")
    assert handled == tried, sorted(tried - handled)
    assert not ok & bad


def _rel(root, path) -> str:
    return str(path).split(str(root) + "/", 1)[-1]


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
    errors = {_rel(root, e["path"]): e["reason"] for e in summary["errors"]}
    from core.data.library import scan_folder

    ok = {r.rel_path for r in scan_folder(root).images}
    _check("scan --store", ok, errors, bad, maybe)


def test_entropy(corpus, tmp_path):
    from core.analysis.entropy_maps import entropy_folder_job

    root, bad, maybe = corpus
    out = tmp_path / "maps"
    s = entropy_folder_job(root, out, cell=8, radius=2)(None)
    errors = {_rel(root, p): reason for p, reason in s["errors"]}
    ok = {_rel(out, p.with_suffix("")).rsplit("_entropy", 1)[0] for p in out.rglob("*.png")}
    ok = {n for n in maybe if any(n.rsplit(".", 1)[0] in o for o in ok)}
    _check("entropy", ok, errors, bad, maybe)
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
    _check("predict", ok, errors, bad, maybe)
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
    import os

    printable = {p: os.fsencode(p).decode("utf-8", "backslashreplace") for p in files}
    lines = out.splitlines()
    errors = {_rel(root, name): line[len(f"error: {name}: "):] for name in printable.values()
              for line in lines if line.startswith(f"error: {name}: ")}
    ok = {_rel(root, name) for name in printable.values()} - set(errors)
    named = {"c/caf\\xe9.png"}      # given by name, a file whose name is not UTF-8 is read (its panel too)
    _check("reconstruct", ok, errors, bad - named, maybe | named)


def test_finetune_on_a_one_class_folder_is_a_clear_error(corpus, tmp_path, capsys):
    from core.cli import main

    root, _, _ = corpus
    assert main(["finetune", str(root), "--out", str(tmp_path / "ft"), "--init", "random", "--backbone",
                 "convnext_atto", "--image-size", "32", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "two labelled classes" in err and "Traceback" not in err
