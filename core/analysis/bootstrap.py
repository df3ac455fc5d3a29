"""How sure are we that model A beats model B on these images? Paired bootstrap confidence intervals.

Both models predicted the same images (the pooled out-of-fold test predictions of a study), so the
difference of a metric is resampled image by image: draw N images with replacement, compute the metric for
both models on the same draw, keep the difference; the 2.5 and 97.5 percentiles of 2000 draws are the
95 % interval. Resampling within each fold keeps every fold's share of the images (stratified bootstrap).
An interval that contains 0 says the data cannot tell the two apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from sklearn import metrics as skm

from core.analysis.metrics import macro_auc_ovr

Metric = Callable[[np.ndarray, np.ndarray], float]      # (y_true [N], probs [N, C]) -> value


def _accuracy(y: np.ndarray, probs: np.ndarray) -> float:
    return float(skm.accuracy_score(y, probs.argmax(1)))


def _balanced_accuracy(y: np.ndarray, probs: np.ndarray) -> float:
    return float(skm.balanced_accuracy_score(y, probs.argmax(1)))


def _macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    value = macro_auc_ovr(y, probs)
    return float("nan") if value is None else value


#: the same definitions as :func:`core.analysis.metrics.classification_metrics` (draws missing a class skip AUC)
METRICS: dict[str, Metric] = {"accuracy": _accuracy, "balanced_accuracy": _balanced_accuracy,
                              "roc_auc_ovr": _macro_auc}


@dataclass
class PairedDifference:
    metric: str
    a: str
    b: str
    value_a: float
    value_b: float
    difference: float          # a - b on all images
    low: float                 # 95 % interval of the difference
    high: float
    n_boot: int

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return f"{self.a} better"
        if self.high < 0:
            return f"{self.b} better"
        return "no clear difference"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def paired_bootstrap(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, metric: str, *,
                     a: str = "A", b: str = "B", strata: Sequence[int] | None = None, n_boot: int = 2000,
                     seed: int = 0, level: float = 0.95) -> PairedDifference:
    y = np.asarray(y)
    probs_a, probs_b = np.asarray(probs_a, np.float64), np.asarray(probs_b, np.float64)
    if not (len(y) == len(probs_a) == len(probs_b)):
        raise ValueError(f"paired bootstrap needs the same images for both models: {len(y)}, {len(probs_a)}, "
                         f"{len(probs_b)} rows")
    fn = METRICS[metric]
    strata = np.zeros(len(y), int) if strata is None else np.asarray(strata)
    groups = [np.nonzero(strata == s)[0] for s in np.unique(strata)]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        d = fn(y[idx], probs_a[idx]) - fn(y[idx], probs_b[idx])
        if np.isfinite(d):
            diffs.append(d)
    va, vb = fn(y, probs_a), fn(y, probs_b)
    tail = (1 - level) / 2 * 100
    low, high = (np.percentile(diffs, [tail, 100 - tail]) if diffs else (float("nan"), float("nan")))
    return PairedDifference(metric, a, b, va, vb, va - vb, float(low), float(high), len(diffs))
