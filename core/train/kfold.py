"""k-fold cross-validation of fine-tuning: ``RUN/fold<i>/`` each a fine-tuning run (test = the held-out
fold, val = a case-grouped stratified part of the other folds for early stopping), ``RUN/kfold.json``
(the fold spec) and ``RUN/cv.json`` (per-fold metrics, mean ± std, pooled out-of-fold metrics). Finished
folds are skipped when the command is run again."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.analysis.metrics import classification_metrics, summarize_folds
from core.inference.logits import read_logits, softmax
from core.atomic import write_json_atomic
from core.train.checkpoint import read_json
from core.train.config import FinetuneConfig
from core.train.data import ImageCache, LabeledData
from core.train.distributed import barrier, setup_distributed
from core.train.finetune import finetune

__all__ = ["run_kfold", "summarize_cv", "fold_dirs", "is_kfold_run"]


def fold_dirs(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    marker = run_dir / "kfold.json"
    if not marker.is_file():
        return []
    k = read_json(marker)["k"]
    return [run_dir / f"fold{i}" for i in range(k)]


def is_kfold_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "kfold.json").is_file()


def run_kfold(cfg: FinetuneConfig, data: LabeledData, run_dir: str | Path, k: int = 5, *, resume: bool = False,
              ctx=None, folds: Sequence[int] | None = None, fold_of: Sequence[int | None] | None = None) -> dict:
    """k-fold cross-validation (stratified, grouped by case); fold i tests on held-out fold i.
    ``fold_of``: a given fold per sample (a split saved in the project store; None = left out)."""
    from core.data.splits import kfold_indices, split_indices

    run_dir = Path(run_dir)
    rank = setup_distributed(cfg.device).rank
    marker = run_dir / "kfold.json"
    n_in_folds = len(data.samples) if fold_of is None else sum(f is not None for f in fold_of)
    spec = {"k": k, "seed": cfg.seed, "val_fraction": cfg.val_fraction, "n": n_in_folds, "classes": data.classes}
    if marker.is_file():
        prev = read_json(marker)
        if {kk: prev.get(kk) for kk in spec} != spec:
            raise ValueError(f"{run_dir} holds a different k-fold run ({prev}); use another --out")
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a k-fold run; pass --resume to continue it")
    barrier()   # every rank has checked the marker before rank 0 writes it
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(marker, spec, indent=1)
        write_json_atomic(run_dir / "config.json", cfg.to_dict(), indent=1)
    barrier()
    labels, groups = data.labels(), data.groups()
    if fold_of is None:
        splits = kfold_indices(labels, groups, k=k, seed=cfg.seed)
    else:
        fold_arr = np.asarray([-1 if f is None else f for f in fold_of])
        splits = [(np.flatnonzero((fold_arr != f) & (fold_arr >= 0)), np.flatnonzero(fold_arr == f))
                  for f in range(k)]
    fits = len(data.samples) * 3 * (cfg.image_size ** 2) * 2.4 <= cfg.cache_mb * 2**20
    cache = ImageCache(data.samples, cfg.image_size, keep=fits, ctx=ctx)
    results = []
    for f, (train_idx, test_idx) in enumerate(splits):
        if folds is not None and f not in folds:
            continue
        if ctx is not None:
            ctx.log(f"--- fold {f + 1}/{k} ---")
        inner = split_indices([labels[i] for i in train_idx], [groups[i] for i in train_idx],
                              val_fraction=cfg.val_fraction, test_fraction=0.0, seed=cfg.seed + f)
        parts = {"train": [data.samples[train_idx[i]] for i in inner["train"]],
                 "val": [data.samples[train_idx[i]] for i in inner["val"]],
                 "test": data.subset(test_idx)}
        fold_cfg = FinetuneConfig.from_dict({**cfg.to_dict(), "seed": cfg.seed})
        res = finetune(fold_cfg, data, run_dir / f"fold{f}", parts=parts, resume=resume, ctx=ctx, cache=cache,
                       split_extra={"fold": f, "k": k})
        results.append(res)
    barrier()
    return summarize_cv(run_dir) if rank == 0 else {"run_dir": str(run_dir), "k": k, "rank": rank}


def summarize_cv(run_dir: str | Path) -> dict:
    """cv.json: per-fold test metrics, mean ± std over folds, pooled out-of-fold metrics."""
    run_dir = Path(run_dir)
    folds = fold_dirs(run_dir)
    per_fold, pooled_logits, pooled_y = [], [], []
    classes = None
    for d in folds:
        mp = d / "metrics.json"
        if not mp.is_file():
            continue
        m = read_json(mp)
        classes = m["classes"]
        per_fold.append({"fold": int(d.name[4:]), "best_epoch": m.get("best_epoch"),
                         "val": _scalars(m.get("val")), "test": _scalars(m.get("test"))})
        lp = d / "logits_test.csv"
        if lp.is_file():
            _, labs, lg = read_logits(lp)
            pooled_logits.append(lg)
            pooled_y += [classes.index(x) for x in labs]
    out: dict[str, Any] = {"run_dir": str(run_dir), "k": len(folds), "folds_done": len(per_fold),
                           "per_fold": per_fold,
                           "test_mean_std": summarize_folds([p["test"] for p in per_fold if p["test"]])}
    if pooled_logits:
        out["pooled_out_of_fold"] = classification_metrics(np.asarray(pooled_y), softmax(
            np.concatenate(pooled_logits)), classes)
    write_json_atomic(run_dir / "cv.json", out, indent=1)
    return out


def _scalars(m: dict | None) -> dict:
    if not m:
        return {}
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) or v is None}


