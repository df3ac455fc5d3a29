"""Levers measured on a finished study's own checkpoints, without retraining: the best-validation checkpoint vs
the last epoch's, each with and without averaging the image and its mirror, for every member and the
equal-weight A+B ensemble (test folds; softmax without calibration, argmax; mean ± std over folds).

    python scripts/study_levers.py studies/busi-cpu2

Probabilities are averaged over the two views here (``finetune --tta hflip`` averages logits). A checkpoint
already trained with ``tta: hflip`` is its own flip average, so its two columns agree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.transforms import eval_transform, load_rgb  # noqa: E402
from core.models.classifier import load_classifier  # noqa: E402

MEMBERS = ("A", "B", "random-MAE")


def fold_probs(study: Path, fold: int) -> tuple[np.ndarray, dict]:
    split = json.loads((study / "A" / f"fold{fold}" / "split.json").read_text())
    classes = split["classes"]
    y = np.array([classes.index(label) for _, label in split["test"]])
    images = [load_rgb(Path(split["root"]) / rel) for rel, _ in split["test"]]
    probs = {}
    for member in MEMBERS:
        for ckpt in ("best", "last"):
            model, cfg = load_classifier(study / member / f"fold{fold}" / f"checkpoint-{ckpt}")
            tf = eval_transform(cfg["image_size"], cfg["mean"], cfg["std"], cfg.get("interpolation", "bicubic"))
            x = torch.stack([tf(im) for im in images])
            with torch.inference_mode():
                p = torch.softmax(model(x), 1).numpy()
                p_mirror = torch.softmax(model(torch.flip(x, dims=(-1,))), 1).numpy()
            probs[(member, ckpt, False)], probs[(member, ckpt, True)] = p, (p + p_mirror) / 2
    for ckpt in ("best", "last"):
        for flip in (False, True):
            probs[("A+B", ckpt, flip)] = (probs[("A", ckpt, flip)] + probs[("B", ckpt, flip)]) / 2
    return y, probs


def main() -> None:
    study = Path(sys.argv[1])
    k = int(json.loads((study / "folds.json").read_text())["k"])
    scores: dict = {}
    for fold in range(k):
        y, probs = fold_probs(study, fold)
        for key, p in probs.items():
            scores.setdefault(key, []).append(((p.argmax(1) == y).mean(), roc_auc_score(y, p, multi_class="ovr")))
        print(f"fold {fold} done", file=sys.stderr, flush=True)
    out = {}
    for (member, ckpt, flip), v in sorted(scores.items()):
        v = np.array(v)
        name = f"{member} {ckpt}{' + flip' if flip else ''}"
        out[name] = {"accuracy": round(float(v[:, 0].mean()), 4), "accuracy_std": round(float(v[:, 0].std(ddof=1)), 4),
                     "roc_auc_ovr": round(float(v[:, 1].mean()), 4)}
        print(f"{name:24s} acc {v[:, 0].mean() * 100:.1f} ± {v[:, 0].std(ddof=1) * 100:.1f}  AUC {v[:, 1].mean():.3f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
