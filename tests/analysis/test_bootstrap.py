"""Paired bootstrap intervals: a clearly better model, two equal ones, and the metric definitions."""

from __future__ import annotations

import numpy as np
import pytest

from core.analysis.bootstrap import paired_bootstrap
from core.analysis.metrics import classification_metrics


def _probs(y: np.ndarray, correct: float, rng) -> np.ndarray:
    """Softmax-ish rows that put the most mass on the true class for a ``correct`` share of the images."""
    n, c = len(y), 3
    p = rng.dirichlet(np.ones(c), size=n)
    hit = rng.random(n) < correct
    p[hit] = 0.1 / (c - 1)
    p[hit, y[hit]] = 0.9
    return p


def test_clearly_better_model_has_an_interval_above_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    good, bad = _probs(y, 0.9, rng), _probs(y, 0.5, rng)
    d = paired_bootstrap(y, good, bad, "accuracy", a="good", b="bad", n_boot=500)
    assert 0 < d.low < d.difference < d.high and d.verdict == "good better"
    assert d.value_a == pytest.approx(classification_metrics(y, good, ["x", "y", "z"])["accuracy"])


def test_same_model_gives_an_interval_around_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    p = _probs(y, 0.7, rng)
    q = p[:, [0, 1, 2]] + rng.normal(0, 1e-3, p.shape)
    d = paired_bootstrap(y, p, q, "roc_auc_ovr", strata=np.arange(300) % 5, n_boot=300)
    assert d.low <= 0 <= d.high and d.verdict == "no clear difference"
    assert d.value_a == pytest.approx(classification_metrics(y, p, ["x", "y", "z"])["roc_auc_ovr"])


def test_refuses_unpaired_predictions():
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(np.zeros(5, int), np.ones((5, 3)) / 3, np.ones((4, 3)) / 3, "accuracy")
