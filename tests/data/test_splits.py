"""Splits: grouped by case, stratified by label, k-fold coverage, determinism, unlabelled handling."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from core.data.splits import kfold_indices, read_folds_file, split_indices, unlabelled_indices, write_folds_file


def dataset(n_cases: int = 120, seed: int = 0):
    """Cases of 1-4 images, one label per case, imbalanced classes, some images without a case id."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for c in range(n_cases):
        label = rng.choice(["normal", "benign", "malignant"], p=[0.5, 0.3, 0.2])
        for _ in range(rng.integers(1, 5)):
            labels.append(str(label))
            groups.append(f"case{c}")
    for i in range(30):  # no case id: each image is its own group
        labels.append(["normal", "benign", "malignant"][i % 3])
        groups.append(None)
    for _ in range(10):  # unlabelled
        labels.append(None)
        groups.append(f"case{rng.integers(n_cases)}")
    return labels, groups


def proportions(labels, idx):
    counts = Counter(labels[i] for i in idx)
    return {k: counts[k] / len(idx) for k in ("normal", "benign", "malignant")}


def test_split_grouped_stratified_and_complete():
    labels, groups = dataset()
    parts = split_indices(labels, groups, val_fraction=0.15, test_fraction=0.15, seed=0)
    assert set(parts) == {"train", "val", "test"}
    labelled = {i for i, y in enumerate(labels) if y is not None}
    all_idx = np.concatenate(list(parts.values()))
    assert len(all_idx) == len(set(all_idx.tolist())) == len(labelled)  # disjoint and complete
    assert set(all_idx.tolist()) == labelled  # unlabelled excluded
    assert set(unlabelled_indices(labels).tolist()).isdisjoint(all_idx.tolist())

    # no case in two parts
    case_parts: dict[str, set[str]] = {}
    for part, idx in parts.items():
        for i in idx:
            if groups[i] is not None:
                case_parts.setdefault(groups[i], set()).add(part)
    assert all(len(p) == 1 for p in case_parts.values())

    # sizes roughly as asked, class proportions roughly kept
    n = len(labelled)
    for part, frac in (("val", 0.15), ("test", 0.15)):
        assert abs(len(parts[part]) / n - frac) < 0.06, (part, len(parts[part]), n)
    overall = proportions(labels, sorted(labelled))
    for part in ("train", "val", "test"):
        prop = proportions(labels, parts[part])
        for k in overall:
            assert abs(prop[k] - overall[k]) < 0.12, (part, k, prop, overall)


def test_split_deterministic_by_seed():
    labels, groups = dataset()
    a = split_indices(labels, groups, seed=1)
    b = split_indices(labels, groups, seed=1)
    c = split_indices(labels, groups, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    assert all(a[k].dtype == np.int64 for k in a)


def test_split_edge_cases():
    labels = ["a", "b", "a", "b"]
    parts = split_indices(labels, ["g"] * 4)  # one case only: everything in train
    assert parts["train"].tolist() == [0, 1, 2, 3] and len(parts["val"]) == len(parts["test"]) == 0
    parts = split_indices(labels * 10, None, val_fraction=0.0, test_fraction=0.25)
    assert len(parts["val"]) == 0 and len(parts["test"]) == 10
    with pytest.raises(ValueError):
        split_indices(labels, None, val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError):
        split_indices(labels, ["g"] * 3)


def test_kfold_covers_every_index_once():
    labels, groups = dataset(seed=3)
    folds = kfold_indices(labels, groups, k=5, seed=0)
    assert len(folds) == 5
    labelled = [i for i, y in enumerate(labels) if y is not None]
    val_all = np.concatenate([va for _, va in folds])
    assert sorted(val_all.tolist()) == labelled  # every labelled index exactly once in val
    overall = proportions(labels, labelled)
    for train, val in folds:
        assert set(train.tolist()).isdisjoint(val.tolist())
        assert sorted(train.tolist() + val.tolist()) == labelled
        tr_cases = {groups[i] for i in train if groups[i] is not None}
        va_cases = {groups[i] for i in val if groups[i] is not None}
        assert tr_cases.isdisjoint(va_cases)
        prop = proportions(labels, val)
        assert all(abs(prop[k] - overall[k]) < 0.12 for k in overall)


def test_kfold_deterministic_and_errors():
    labels, groups = dataset(seed=4)
    a = kfold_indices(labels, groups, k=4, seed=7)
    b = kfold_indices(labels, groups, k=4, seed=7)
    c = kfold_indices(labels, groups, k=4, seed=8)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))
    with pytest.raises(ValueError):
        kfold_indices(["a", "b", "a"], ["g1", "g1", "g2"], k=5)


def test_folds_file_round_trip_and_checks(tmp_path):
    path = tmp_path / "folds.json"
    write_folds_file(path, {"a/1.png": 0, "b/2.png": np.int64(2)}, 3, 7)
    assert json.loads(path.read_text()) == {"k": 3, "seed": 7, "fold": {"a/1.png": 0, "b/2.png": 2}}
    assert read_folds_file(path, 3) == {"a/1.png": 0, "b/2.png": 2}
    with pytest.raises(ValueError, match="3-fold split; pass --kfold 3"):
        read_folds_file(path, 5)
    for bad in (7, -1, True, "1", 1.0):
        path.write_text(json.dumps({"k": 3, "fold": {"a/1.png": bad}}))
        with pytest.raises(ValueError, match="folds.json: fold numbers must be 0..2"):
            read_folds_file(path, 3)
    for text in ("{not json", json.dumps({"fold": {}}), json.dumps({"k": 3, "fold": [1, 2]}), json.dumps([1])):
        path.write_text(text)
        with pytest.raises(ValueError, match="folds.json: not a folds file"):
            read_folds_file(path, 3)
    with pytest.raises(ValueError, match="missing.json: not a folds file"):
        read_folds_file(tmp_path / "missing.json", 3)
