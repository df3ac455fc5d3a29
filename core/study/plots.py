"""The study report's figures, drawn with matplotlib (no display needed) and returned as PNG bytes."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from core.analysis.metrics import reliability_bins

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def roc_png(y: np.ndarray, probs_by_model: dict[str, np.ndarray], classes: Sequence[str]) -> bytes:
    """Macro-average one-vs-rest ROC curve of each model (pooled out-of-fold predictions)."""
    from sklearn.metrics import auc, roc_curve

    fig = _figure(5.2, 4.4)
    ax = fig.add_subplot()
    grid = np.linspace(0, 1, 201)
    for k, (name, probs) in enumerate(probs_by_model.items()):
        tprs = []
        for c in range(len(classes)):
            pos = (y == c).astype(int)
            if 0 < pos.sum() < len(y):
                fpr, tpr, _ = roc_curve(pos, probs[:, c])
                tprs.append(np.interp(grid, fpr, tpr))
        if not tprs:
            continue
        mean_tpr = np.mean(tprs, axis=0)
        mean_tpr[0] = 0.0
        ax.plot(grid, mean_tpr, color=COLORS[k % len(COLORS)], lw=1.8,
                label=f"{name} (AUC {auc(grid, mean_tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title="ROC, macro-average one-vs-rest")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def reliability_png(y: np.ndarray, before: np.ndarray, after: np.ndarray, name: str, n_bins: int = 10) -> bytes:
    """Reliability diagram of one model before and after calibration (bar = accuracy per confidence bin)."""
    fig = _figure(7.6, 3.6)
    for k, (title, probs) in enumerate((("before calibration", before), ("after calibration", after))):
        ax = fig.add_subplot(1, 2, k + 1)
        bins = reliability_bins(probs, y, n_bins)
        centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
        accs = [b["accuracy"] if b["count"] else 0.0 for b in bins]
        ax.bar(centers, accs, width=1.0 / n_bins, edgecolor="#333333", color="#7fb3d5", label="accuracy")
        ax.plot([0, 1], [0, 1], color="#d62728", lw=1, ls="--", label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=f"{name}: {title}")
        if k == 0:
            ax.set_ylabel("accuracy")
            ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def confusion_png(matrices: dict[str, np.ndarray], classes: Sequence[str]) -> bytes:
    """One confusion matrix per model (rows = true class, columns = predicted), counts in the cells."""
    n = len(matrices)
    fig = _figure(2.9 * n + 0.4, 3.1)
    for k, (name, cm) in enumerate(matrices.items()):
        ax = fig.add_subplot(1, n, k + 1)
        cm = np.asarray(cm)
        ax.imshow(cm, cmap="Blues", origin="upper")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=9,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=30, fontsize=8)
        ax.set_yticks(range(len(classes)), classes if k == 0 else [""] * len(classes), fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
        if k == 0:
            ax.set_ylabel("true", fontsize=8)
    return _png(fig)
