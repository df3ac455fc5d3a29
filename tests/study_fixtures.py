"""A made-up study outcome (3 folds, two members, a control, an ensemble) for the report tests."""

from __future__ import annotations

import numpy as np

from core.study.report import FoldOutcome, ModelInfo, StudyOutcome

CLASSES = ["benign", "malignant", "normal"]


def _probs(y, correct, rng, sharp=0.85):
    p = rng.dirichlet(np.ones(3), size=len(y))
    hit = rng.random(len(y)) < correct
    p[hit] = (1 - sharp) / 2
    p[hit, y[hit]] = sharp
    return p


def made_up_outcome(ensemble_wins: bool = True) -> StudyOutcome:
    rng = np.random.default_rng(0)
    folds = []
    for f in range(3):
        y = rng.integers(0, 3, 60)
        a, b, r = _probs(y, 0.85, rng), _probs(y, 0.6, rng), _probs(y, 0.55, rng)
        ens = (a + b) / 2 if ensemble_wins else (0.3 * a + 0.7 * b)
        folds.append(FoldOutcome(f, y, {"A": a, "B": b, "random-MAE": r, "A+B": ens},
                                 {"A": a ** 2 / (a ** 2).sum(1, keepdims=True), "B": b, "random-MAE": r, "A+B": ens},
                                 [f"img{f}_{i}.png" for i in range(60)]))
    models = [ModelInfo("A", "member", "ImageNet convnext_tiny"), ModelInfo("B", "member", "entropy-guided MAE"),
              ModelInfo("random-MAE", "member", "random-mask MAE, equal compute"),
              ModelInfo("A+B", "ensemble", "average of A and B", ["A", "B"])]
    return StudyOutcome("Study: made-up data", CLASSES, models, folds, [("A+B", "A"), ("A+B", "B"), ("B", "random-MAE")],
                        {"n_images": 180, "grouping": "case and near-duplicate group", "duplicate_groups": 4,
                         "duplicate_images": 9, "conflicting_groups": 1, "pretraining": "per fold (strict)"},
                        {"epochs": 3}, "medssl study DATA --out OUT", 123.0)
