"""Train/val/test splits and k-fold cross-validation, stratified by label and grouped by case.

Grouping: all images of one case (patient / study, ``case_id``) land in the same part, so a model is
never evaluated on a patient it has seen in training. Images with no case id (None or "") are each their
own group. Stratification keeps each part's class proportions close to the whole set's; with groups this
is best effort (scikit-learn's ``StratifiedGroupKFold`` greedy assignment), exact only for large sets.

Unlabelled images (label None) are excluded: they appear in no returned index array (they cannot be
used for supervised training or evaluation, and stratifying on "unlabelled" would be meaningless). Use
them for self-supervised pretraining; take them with ``unlabelled_indices(labels)``.

Everything is deterministic for a given seed and input order. Indices are positions into the ``labels``
sequence you passed (int64, sorted ascending).

A study's k-fold split travels as ``folds.json`` (``{"k": K, "seed": S, "fold": {rel_path: i}}``):
:func:`write_folds_file` writes it, :func:`read_folds_file` is its one reader (the study continuing, and
``medssl finetune --folds-file`` rerunning one of its folds).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from core.atomic import write_json_atomic

__all__ = ["split_indices", "kfold_indices", "unlabelled_indices", "group_ids", "write_folds_file",
           "read_folds_file"]

_MAX_FOLDS = 20  # finest fold count used to approximate a fraction


def unlabelled_indices(labels: Sequence[object]) -> np.ndarray:
    """Positions whose label is None (excluded from every split)."""
    return np.asarray([i for i, y in enumerate(labels) if y is None], dtype=np.int64)


def group_ids(groups: Sequence[object] | None, n: int) -> np.ndarray:
    """Integer group id per image; a missing case id (None, "" or NaN) makes an image its own group."""
    if groups is None:
        return np.arange(n, dtype=np.int64)
    if len(groups) != n:
        raise ValueError(f"labels and groups differ in length ({n} vs {len(groups)})")
    codes: dict[object, int] = {}
    out = np.empty(n, dtype=np.int64)
    for i, g in enumerate(groups):
        if g is None or g == "" or (isinstance(g, float) and g != g):
            key: object = ("__no_case__", i)
        else:
            key = ("case", str(g))
        out[i] = codes.setdefault(key, len(codes))
    return out


def _encode(labels: Sequence[object], groups: Sequence[object] | None):
    labels = list(labels)
    g_all = group_ids(groups, len(labels))
    keep = np.asarray([i for i, y in enumerate(labels) if y is not None], dtype=np.int64)
    names = sorted({str(labels[i]) for i in keep})
    code = {n: k for k, n in enumerate(names)}
    y = np.asarray([code[str(labels[i])] for i in keep], dtype=np.int64)
    return keep, y, g_all[keep]


def _best_folds(fraction: float, n_groups: int) -> tuple[int, int]:
    """(n_splits, n_taken): taking ``n_taken`` of ``n_splits`` folds approximates ``fraction``."""
    best = None
    for n in range(2, max(2, min(_MAX_FOLDS, n_groups)) + 1):
        m = min(n - 1, max(1, round(fraction * n)))
        err = abs(m / n - fraction)
        if err <= 0.01:  # close enough: fewest folds (coarser folds balance classes better)
            return n, m
        if best is None or err < best[0]:
            best = (err, n, m)
    return best[1], best[2]


def _holdout(y: np.ndarray, g: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask (over y) of a group-disjoint, stratified held-out part of about ``fraction``."""
    held = np.zeros(len(y), dtype=bool)
    n_groups = len(np.unique(g))
    if fraction <= 0 or len(y) == 0 or n_groups < 2:
        return held
    n_splits, n_taken = _best_folds(fraction, n_groups)
    try:
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            # "least populated class has only N members": expected for rare classes, handled best effort
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            folds = [test for _, test in cv.split(np.zeros(len(y)), y, g)]
    except ValueError:
        # every class smaller than n_splits: stratification impossible, fall back to a grouped random split
        gss = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        _, test = next(gss.split(np.zeros(len(y)), y, g))
        held[test] = True
        return held
    for test in folds[:n_taken]:
        held[test] = True
    return held


def split_indices(labels: Sequence[object], groups: Sequence[object] | None, *, val_fraction: float = 0.15,
                  test_fraction: float = 0.15, seed: int = 0) -> dict[str, np.ndarray]:
    """Split labelled images into ``{'train', 'val', 'test'}`` index arrays, grouped by case.

    ``labels[i]`` is image i's class (None = unlabelled, excluded), ``groups[i]`` its case id (None = own
    group; ``groups=None`` means every image is its own group). The test part is carved first
    (``test_fraction`` of the labelled images), then val from the rest so that it is ``val_fraction`` of
    the whole. Fractions are approximate: parts are made of whole cases and chosen as k of n
    ``StratifiedGroupKFold`` folds. A fraction of 0 gives an empty part; with fewer than two cases
    everything goes to train.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    keep, y, g = _encode(labels, groups)
    test_mask = _holdout(y, g, test_fraction, seed)
    rest = np.flatnonzero(~test_mask)
    val_rel = val_fraction / (1.0 - test_fraction) if test_fraction < 1 else 0.0
    val_mask_rest = _holdout(y[rest], g[rest], min(val_rel, 0.99), seed + 1)
    val_mask = np.zeros(len(y), dtype=bool)
    val_mask[rest[val_mask_rest]] = True
    train_mask = ~(test_mask | val_mask)
    return {part: np.sort(keep[mask]).astype(np.int64)
            for part, mask in (("train", train_mask), ("val", val_mask), ("test", test_mask))}


def kfold_indices(labels: Sequence[object], groups: Sequence[object] | None, k: int = 5,
                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train_idx, val_idx) pairs from ``StratifiedGroupKFold(k, shuffle=True, random_state=seed)``.

    Every labelled index is in exactly one val fold; no case is split across train and val. Unlabelled
    images are excluded. Raises ValueError when there are fewer cases than folds.
    """
    if k < 2:
        raise ValueError("k must be at least 2")
    keep, y, g = _encode(labels, groups)
    n_groups = len(np.unique(g))
    if n_groups < k:
        raise ValueError(f"{k}-fold needs at least {k} cases with labels, found {n_groups}")
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        try:
            folds = list(cv.split(np.zeros(len(y)), y, g))
        except ValueError as exc:
            raise ValueError(f"cannot make {k} stratified folds: {exc}") from exc
    return [(np.sort(keep[tr]).astype(np.int64), np.sort(keep[va]).astype(np.int64)) for tr, va in folds]


def write_folds_file(path: str | Path, fold: Mapping[str, int], k: int, seed: int) -> Path:
    """Write a k-fold split (``fold``: image path relative to the data root -> fold number) as ``folds.json``."""
    return write_json_atomic(path, {"k": int(k), "seed": int(seed), "fold": {r: int(f) for r, f in fold.items()}},
                             indent=1)


def read_folds_file(path: str | Path, k: int) -> dict[str, int]:
    """The ``{rel_path: fold}`` of a ``folds.json``, checked: JSON of the expected shape, made for ``k`` folds,
    every fold number in 0..k-1. ValueError naming the file and what is wrong."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        fold, saved_k = dict(saved["fold"]), int(saved["k"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a folds file ({exc})") from None
    if saved_k != k:
        raise ValueError(f"{path} holds a {saved_k}-fold split; pass --kfold {saved_k}")
    if any(isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < k for f in fold.values()):
        raise ValueError(f"{path}: fold numbers must be 0..{k - 1}")
    return fold
