"""Classification metrics (scikit-learn) plus calibration (expected calibration error).

Everything takes ``y_true`` as integer class indices ``[N]`` and ``probs`` as class probabilities
``[N, C]`` (rows sum to 1), with ``classes`` naming the C columns. The result is a plain JSON-able dict
so it can be written per run / per fold and compared side by side.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from sklearn import metrics as skm

__all__ = ["classification_metrics", "expected_calibration_error", "reliability_bins", "nll",
           "per_class_auc", "macro_auc_ovr", "summarize_folds", "fold_mean", "SUMMARY_KEYS"]

# Scalar metrics worth a mean ± std over folds and a column in comparison tables.
SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "ece", "nll")


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> list[dict]:
    """Equal-width confidence bins: per bin count, mean confidence and accuracy (for reliability plots)."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins (lo, hi]; confidence 0 cannot happen for a probability vector's max
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n,
                    "confidence": float(conf[sel].mean()) if n else None,
                    "accuracy": float(correct[sel].mean()) if n else None})
    return out


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over equal-width confidence bins of |accuracy - confidence| * share."""
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    if n == 0:
        return float("nan")
    ece = 0.0
    for b in reliability_bins(probs, y_true, n_bins):
        if b["count"]:
            ece += b["count"] / n * abs(b["accuracy"] - b["confidence"])
    return float(ece)


def nll(probs: np.ndarray, y_true: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(probs) == 0:
        return float("nan")
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def per_class_auc(y_true: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC AUC of each class; None where the class is absent (or is every image)."""
    out = []
    for i in range(probs.shape[1]):
        pos = (y_true == i).astype(int)
        out.append(_clean(skm.roc_auc_score(pos, probs[:, i])) if 0 < pos.sum() < len(y_true) else None)
    return out


def macro_auc_ovr(y_true: np.ndarray, probs: np.ndarray, aucs: list[float | None] | None = None) -> float | None:
    """Mean of the per-class one-vs-rest AUCs over the classes present; None with fewer than two."""
    aucs = [a for a in (per_class_auc(y_true, probs) if aucs is None else aucs) if a is not None]
    return float(np.mean(aucs)) if len(aucs) >= 2 else None


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str], *,
                           n_bins: int = 15) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/F1, one-vs-rest ROC AUC
    (macro and per class; None where a class is absent), confusion matrix (rows = true, cols = predicted),
    ECE and NLL."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(classes)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"probs must be [N, {n_classes}], got {probs.shape}")
    if len(y_true) != len(probs):
        raise ValueError(f"{len(y_true)} labels but {len(probs)} probability rows")
    labels = list(range(n_classes))
    y_pred = probs.argmax(axis=1)
    out: dict = {"n": int(len(y_true)), "classes": list(classes)}
    if len(y_true) == 0:
        return out
    present = sorted(set(y_true.tolist()))
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected on small folds, handled (macro over present)
        warnings.simplefilter("ignore", UserWarning)
        return _fill(out, y_true, probs, y_pred, classes, labels, present, n_bins)


def _fill(out, y_true, probs, y_pred, classes, labels, present, n_bins) -> dict:
    out["accuracy"] = float(skm.accuracy_score(y_true, y_pred))
    # balanced accuracy over the classes present in y_true (sklearn's definition)
    out["balanced_accuracy"] = float(skm.balanced_accuracy_score(y_true, y_pred))
    out["macro_f1"] = float(skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    aucs = per_class_auc(y_true, probs)
    out["per_class"] = {name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                               "support": int(sup[i]), "roc_auc": aucs[i]} for i, name in enumerate(classes)}
    out["roc_auc_ovr"] = macro_auc_ovr(y_true, probs, aucs)
    out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    out["ece"] = expected_calibration_error(probs, y_true, n_bins)
    out["nll"] = nll(probs, y_true)
    return out


def summarize_folds(fold_metrics: Sequence[dict], keys: Sequence[str] = SUMMARY_KEYS) -> dict:
    """Mean and standard deviation (ddof=1 where > 1 fold) of scalar metrics across folds."""
    out = {}
    for key in keys:
        vals = [m.get(key) for m in fold_metrics if m.get(key) is not None]
        if not vals:
            continue
        arr = np.asarray(vals, dtype=np.float64)
        out[key] = {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
                    "n": int(len(arr)), "values": [float(v) for v in arr]}
    return out


def fold_mean(summary: dict | None, key: str) -> float | None:
    """The mean over folds of ``key`` in a :func:`summarize_folds` table; None when no fold had it."""
    return ((summary or {}).get(key) or {}).get("mean")


# -- uncertainty of an ensemble (shared by core.inference.ensemble and core.analysis.active) ---------------------------------
def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """H(p) in nats per row: [..., C] -> [...]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=-1)


def js_divergence(member_probs: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Generalised (weighted) Jensen–Shannon divergence of the members, nats: [M, N, C] -> [N]."""
    p = np.asarray(member_probs, dtype=np.float64)
    w = np.ones(p.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mix = np.tensordot(w, p, axes=1)
    return np.maximum(predictive_entropy(mix) - np.tensordot(w, predictive_entropy(p), axes=1), 0.0)
