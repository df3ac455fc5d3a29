"""A study's report: one self-contained HTML page a person reads, and the same numbers as JSON.

Input is the study's outcome (:class:`StudyOutcome`): for every fold the test labels and each model's
test probabilities (after and before calibration), plus what the study knows about its data and set-up.
Everything shown is computed here from those arrays — per-fold and mean ± std metrics, paired bootstrap
intervals, ROC curves, reliability diagrams, confusion matrices — so the page and the JSON cannot disagree.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core.atomic import write_json_atomic, write_text_atomic
from core.analysis.bootstrap import paired_bootstrap
from core.analysis.metrics import classification_metrics, fold_mean, summarize_folds
from core.inference.verdict import EnsembleVerdict, judge
from core.study import plots

TABLE_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "ece", "nll")
COMPARE_KEYS = ("accuracy", "balanced_accuracy", "roc_auc_ovr")
LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro F1",
          "roc_auc_ovr": "ROC AUC", "ece": "ECE", "nll": "NLL"}


@dataclass
class FoldOutcome:
    fold: int
    y: np.ndarray                                   # [N] class index of each test image
    probs: dict[str, np.ndarray]                    # model -> [N, C], calibrated
    probs_uncalibrated: dict[str, np.ndarray] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)  # the test images (relative paths)
    extra: dict = field(default_factory=dict)       # how the fold's ensemble was made (weights, temperature)


@dataclass
class ModelInfo:
    name: str
    kind: str                     # "member" | "ensemble"
    description: str
    members: list[str] = field(default_factory=list)


@dataclass
class Panel:
    title: str
    png: Path


@dataclass
class StudyOutcome:
    title: str
    classes: list[str]
    models: list[ModelInfo]
    folds: list[FoldOutcome]
    comparisons: list[tuple[str, str]]              # (a, b): is a better than b?
    data: dict                                      # images, duplicates, grouping, pretraining mode...
    config: dict
    command: str
    seconds: float
    panels: list[Panel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _pooled(outcome: StudyOutcome, name: str, calibrated: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, probs, fold index) of all folds' test images, in fold order."""
    ys, ps, fs = [], [], []
    for f in outcome.folds:
        table = f.probs if calibrated else (f.probs_uncalibrated or f.probs)
        ys.append(f.y)
        ps.append(table[name])
        fs.append(np.full(len(f.y), f.fold))
    return np.concatenate(ys), np.concatenate(ps), np.concatenate(fs)


def summarize(outcome: StudyOutcome, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Every number the report shows, as a JSON-able dict."""
    names = [m.name for m in outcome.models]
    per_fold = {n: [classification_metrics(f.y, f.probs[n], outcome.classes) for f in outcome.folds] for n in names}
    uncal = {n: [classification_metrics(f.y, (f.probs_uncalibrated or f.probs)[n], outcome.classes)
                 for f in outcome.folds] for n in names}
    summary = {n: summarize_folds(per_fold[n], TABLE_KEYS) for n in names}
    for n in names:
        summary[n]["ece_uncalibrated"] = summarize_folds(uncal[n], ("ece",)).get("ece")
    pooled = {}
    for n in names:
        y, p, _ = _pooled(outcome, n)
        m = classification_metrics(y, p, outcome.classes)
        pooled[n] = {k: m.get(k) for k in TABLE_KEYS} | {"confusion_matrix": m["confusion_matrix"], "n": m["n"]}
    comparisons = []
    for a, b in outcome.comparisons:
        y, pa, folds = _pooled(outcome, a)
        _, pb, _ = _pooled(outcome, b)
        for key in COMPARE_KEYS:
            comparisons.append(paired_bootstrap(y, pa, pb, key, a=a, b=b, strata=folds, n_boot=n_boot,
                                                seed=seed).to_dict())
    return {"title": outcome.title, "classes": outcome.classes, "data": outcome.data,
            "models": [m.__dict__ for m in outcome.models], "k": len(outcome.folds),
            "mean_std": summary, "pooled": pooled,
            "per_fold": {n: [{k: m.get(k) for k in TABLE_KEYS} | {"n": m["n"]} for m in per_fold[n]] for n in names},
            "comparisons": comparisons, "verdicts": _verdicts(outcome, summary, comparisons),
            "notes": outcome.notes, "config": outcome.config, "command": outcome.command,
            "seconds": outcome.seconds}


def _verdicts(outcome: StudyOutcome, summary: dict, comparisons: list[dict]) -> list[str]:
    """Plain sentences: does each ensemble beat its best member (mean accuracy), and is that sure?"""
    out = []
    for ens in (m for m in outcome.models if m.kind == "ensemble"):
        verdict = study_verdict(summary, ens.name, ens.members)
        if verdict is None:
            continue
        interval = next((c for c in comparisons if c["a"] == ens.name and c["b"] == verdict.best_member
                         and c["metric"] == "accuracy"), None)
        sure = (f" Paired 95 % interval of the difference {100 * interval['low']:+.1f} to "
                f"{100 * interval['high']:+.1f} points: {interval['verdict']}.") if interval else ""
        advice = "" if verdict.beats else (f" Prefer {verdict.best_member} alone, or weigh the members on "
                                           f"validation.")
        out.append(verdict.sentence() + sure + advice)
    return out


def study_verdict(summary: dict, ensemble: str, members: Sequence[str]) -> EnsembleVerdict | None:
    """The ensemble against its best member, by accuracy averaged over the held-out folds (``summary`` =
    the mean ± std table of :func:`summarize`)."""
    k = (summary.get(ensemble, {}).get("accuracy") or {}).get("n")
    where = f"the held-out test folds (mean over {k})" if k else "the held-out test folds (mean)"
    return judge({n: fold_mean(summary.get(n), "accuracy") for n in members},
                 fold_mean(summary.get(ensemble), "accuracy"), where, ensemble)

# ---------------------------------------------------------------------------------------------------- html
CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d2127; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d4da; padding: 0.3em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f2f4f7; }
.verdict { background: #fff7e0; border-left: 4px solid #e0a84b; padding: 0.6em 0.9em; margin: 0.5em 0; }
.verdict.good { background: #eaf6ee; border-left-color: #5fbf7f; }
.muted { color: #667085; } pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; } figure { margin: 1em 0; } figcaption { color: #667085; font-size: 0.9em; }
.panels { display: flex; flex-wrap: wrap; gap: 1em; } .panels figure { flex: 1 1 300px; }
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(stat: dict | None, percent: bool) -> str:
    if not stat:
        return "–"
    scale = 100 if percent else 1
    digits = 1 if percent else 3
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    def cell(c: str) -> str:
        numeric = c[:1].isdigit() or c[:2] in ("+0", "-0", "[+", "[-") or c[:1] in "+-−–"
        return f"<td class='num'>{html.escape(c)}</td>" if numeric else f"<td>{html.escape(c)}</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def render_html(outcome: StudyOutcome, summary: dict) -> str:
    names = [m.name for m in outcome.models]
    percent = {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "ece"}
    parts = [f"<h1>{html.escape(outcome.title)}</h1>",
             f"<p class='muted'>{len(outcome.folds)}-fold cross-validation · {summary['pooled'][names[0]]['n']} "
             f"test images in all · {outcome.seconds / 60:.1f} min</p>"]
    for v in summary["verdicts"]:
        good = " good" if "beats its best member" in v else ""
        parts.append(f"<div class='verdict{good}'>{html.escape(v)}</div>")
    d = outcome.data
    facts = [("images", str(d.get("n_images", "?"))), ("classes", ", ".join(outcome.classes)),
             ("folds grouped by", d.get("grouping", "case")),
             ("near-duplicate groups", f"{d.get('duplicate_groups', 0)} ({d.get('duplicate_images', 0)} images; "
                                       f"{d.get('conflicting_groups', 0)} with conflicting labels)"),
             ("member B pretraining", d.get("pretraining", "–"))]
    parts.append("<h2>Data and protocol</h2>" + _table(("", ""), facts))
    if d.get("fold_guarantee"):
        parts.append(f"<p>{html.escape(d['fold_guarantee'])}</p>")
    rows = []
    for m in outcome.models:
        s = summary["mean_std"][m.name]
        rows.append([m.name, m.description] + [_fmt(s.get(k), k in percent) for k in TABLE_KEYS]
                    + [_fmt(s.get("ece_uncalibrated"), True)])
    parts.append("<h2>Results (mean ± std over folds, %; after calibration)</h2>"
                 + _table(["model", "what"] + [LABELS[k] for k in TABLE_KEYS] + ["ECE before cal."], rows))
    fold_rows = []
    for i, f in enumerate(outcome.folds):
        fold_rows.append([f"fold {f.fold}", str(len(f.y))]
                         + [f"{100 * summary['per_fold'][n][i]['accuracy']:.1f} / "
                            + (f"{summary['per_fold'][n][i]['roc_auc_ovr']:.3f}"
                               if summary['per_fold'][n][i]['roc_auc_ovr'] is not None else "–") for n in names])
    parts.append("<h2>Per fold (accuracy % / ROC AUC)</h2>" + _table(["fold", "test images"] + names, fold_rows))
    comp_rows = [[f"{c['a']} − {c['b']}", LABELS[c["metric"]],
                  f"{100 * c['value_a']:.1f}", f"{100 * c['value_b']:.1f}", f"{100 * c['difference']:+.1f}",
                  f"[{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]", c["verdict"]]
                 for c in summary["comparisons"] if not math.isnan(c["low"])]
    parts.append("<h2>Paired differences (pooled test images, 95 % bootstrap interval, points)</h2>"
                 + _table(["comparison", "metric", "a", "b", "a − b", "95 % interval", "verdict"], comp_rows))
    y = np.concatenate([f.y for f in outcome.folds])
    probs = {n: _pooled(outcome, n)[1] for n in names}
    parts.append("<h2>ROC curves</h2><figure>" + _img(plots.roc_png(y, probs, outcome.classes), "ROC curves")
                 + "<figcaption>Pooled out-of-fold test predictions.</figcaption></figure>")
    for m in outcome.models:
        if m.kind == "ensemble" or m is outcome.models[0]:
            before = _pooled(outcome, m.name, calibrated=False)[1]
            parts.append(f"<h2>Calibration: {html.escape(m.name)}</h2><figure>"
                         + _img(plots.reliability_png(y, before, probs[m.name], m.name), f"reliability {m.name}")
                         + "</figure>")
    cms = {n: np.asarray(summary["pooled"][n]["confusion_matrix"]) for n in names}
    parts.append("<h2>Confusion matrices (pooled)</h2><figure>" + _img(plots.confusion_png(cms, outcome.classes),
                                                                        "confusion matrices") + "</figure>")
    if outcome.panels:
        parts.append("<h2>What the models see</h2><div class='panels'>" + "".join(
            f"<figure>{_img(p.png.read_bytes(), p.title)}<figcaption>{html.escape(p.title)}</figcaption></figure>"
            for p in outcome.panels) + "</div>")
    for note in outcome.notes:
        parts.append(f"<p class='muted'>{html.escape(note)}</p>")
    parts.append("<h2>Reproduce</h2><pre>" + html.escape(outcome.command) + "</pre>"
                 + "<h2>Configuration</h2><pre>" + html.escape(json.dumps(outcome.config, indent=1)) + "</pre>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>" + html.escape(outcome.title)
            + f"</title><style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>")


def write_report(outcome: StudyOutcome, out_dir: str | Path, *, n_boot: int = 2000) -> Path:
    """``out_dir/report.html`` and ``out_dir/report.json``; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(outcome, n_boot=n_boot)
    page = out / "report.html"
    write_json_atomic(out / "report.json", summary, indent=1, default=float)
    write_text_atomic(page, render_html(outcome, summary))
    return page
