"""Fine-tuning: a pretrained (or random) timm backbone becomes a classifier; k-fold cross-validation.

One run::

    RUN/split.json                   data root, classes, rel paths of train / val / test
    RUN/checkpoint-last/             model.safetensors + config.json + optimizer.pt (resume state)
    RUN/checkpoint-best/             model.safetensors + config.json (best validation balanced accuracy)
    RUN/history.jsonl                one JSON line per epoch (loss, lr, validation metrics)
    RUN/metrics.json                 validation and test metrics of the best checkpoint
    RUN/logits_val.csv, logits_test.csv   the best checkpoint's logits (ensembles reuse them)
    RUN/job.log, job.json            the job's event log and state (core.jobs)

k-fold: ``RUN/fold<i>/`` each as above (test = the held-out fold, val = a case-grouped stratified part of
the other folds for early stopping), plus ``RUN/cv.json`` (per-fold metrics, mean ± std, pooled
out-of-fold metrics). Finished folds are skipped when the command is run again.

Checkpoint ``config.json`` holds everything needed to rebuild the model (:func:`load_classifier`):
backbone name, timm kwargs, classes, image size, normalisation, interpolation, init source.

Resume rules (as in pretraining): ``resume=True`` continues from ``checkpoint-last`` (weights, optimiser,
schedule position, early-stopping state) and refuses a checkpoint whose model config differs;
``init_weights`` only loads weights (a pretraining checkpoint, ImageNet file or another classifier). A run
folder that already has a checkpoint is never silently overwritten.

Training: AdamW, layer-wise lr decay (timm's layer groups), per-iteration cosine schedule with linear
warm-up, label smoothing, class-balanced sampling (or class-weighted loss), early stopping on validation
balanced accuracy, the NaN guard, ``--precision`` and the distributed set-up of ``core.train`` (shared with
pretraining). Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank runs on ``cuda:LOCAL_RANK`` (or the CPU with
gloo), the model is wrapped in DDP and every rank draws its slice of the same global sample order; rank 0
writes files.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from core.analysis.metrics import classification_metrics, summarize_folds
from core.models.backbones import create_backbone
from core.train.checkpoint import (REQUIRED, find_checkpoint_dir, repair_checkpoint_dir,
                                   resolve_classifier_checkpoint, write_checkpoint_dir)
from core.train.distributed import all_reduce_sum, barrier, setup_distributed, teardown_distributed, unwrap
from core.train.nan_guard import NanGuard
from core.train.precision import Precision, make_grad_scaler, resolve_precision
from core.train.rng import capture_rng_state, restore_rng_state, seed_everything
from core.train.schedule import lr_at, param_groups, set_lr
from core.inference.logits import predict_logits, read_logits, softmax_np, write_logits
from core.train.config import FinetuneConfig
from core.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, TrainTransform, load_rgb, normalize,
                             resize_pil, to_float_tensor)

log = logging.getLogger(__name__)

CKPT_FORMAT = "medssl-classifier"
CKPT_VERSION = 1
INIT_CHOICES = ("imagenet", "pretrained", "random")

__all__ = ["Sample", "LabeledData", "load_labeled_data", "finetune", "run_kfold",
           "finetune_job", "load_classifier", "read_split", "build_classifier",
           "is_kfold_run", "fold_dirs", "CKPT_FORMAT"]


# --------------------------------------------------------------------------------------------------- data
@dataclass
class Sample:
    path: Path
    rel_path: str
    label: str | None
    group: str | None = None       # case id; None = its own group
    image_id: int | None = None    # the project store's id, when the image came from a store


@dataclass
class LabeledData:
    root: Path | None
    samples: list[Sample]          # labelled only
    classes: list[str]

    def labels(self) -> list[str]:
        return [s.label for s in self.samples]

    def groups(self) -> list[str | None]:
        return [s.group for s in self.samples]

    def subset(self, idx: Sequence[int]) -> list[Sample]:
        return [self.samples[i] for i in idx]


def load_labeled_data(folder: str | Path | None = None, *, project: str | Path | None = None,
                      ctx=None) -> LabeledData:
    """Labelled images from a folder (``core.data.library.scan_folder``: class = sub-folder / manifest) or from
    a project store. Group = case id; images without one are grouped by content hash, so exact duplicate
    files (BUSI has one with two labels) never straddle a split."""
    if project is not None:
        from core.project.store import ProjectStore

        store = ProjectStore(project)
        try:
            labels = store.labels()
            rows = store.images()
            classes = list(store.classes())
        finally:
            store.close()
        samples = [Sample(Path(r.abs_path), r.rel_path, labels.get(r.id), r.case_id or f"sha:{r.content_hash}",
                          r.id) for r in rows]
        root = None
        if rows:   # the image folder the rel paths are relative to
            first = Path(rows[0].abs_path)
            root = first.parents[len(Path(rows[0].rel_path).parts) - 1]
    else:
        if folder is None:
            raise ValueError("give an image folder or --project")
        from core.data.library import scan_folder

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a folder")
        res = scan_folder(folder, ctx=ctx)
        if ctx is not None:
            for err in res.errors[:20]:
                ctx.log(f"skipped {err.path}: {err.reason}")
            for group in res.label_conflicts():
                ctx.log("identical files with different labels (both kept; they share a split part unless their "
                        "case ids differ): "
                        + " = ".join(f"{r.rel_path} ({r.label})" for r in group))
        samples = [Sample(Path(r.path), r.rel_path, r.label, r.case_id or f"sha:{r.content_hash}")
                   for r in res.images]
        classes = list(res.classes)
        root = Path(res.root)
    samples = [s for s in samples if s.label is not None]
    used = sorted({s.label for s in samples})
    classes = [c for c in classes if c in used] + [c for c in used if c not in classes]
    if len(classes) < 2:
        raise ValueError(f"need at least two labelled classes, found {classes or 'none'}")
    return LabeledData(root, samples, classes)


class ImageCache:
    """Decoded images kept in memory as uint8: a square ``train_size`` version for augmentation and the
    exact evaluation input (``size x size``, the eval transform's resize). Grey images keep one channel."""

    def __init__(self, samples: Sequence[Sample], size: int, interpolation: str = "bicubic", *,
                 keep: bool = True, ctx=None):
        self.size = size
        self.train_size = int(round(size * 1.15))
        self.interpolation = interpolation
        self.keep = keep
        self.train: dict[str, np.ndarray] = {}
        self.eval: dict[str, np.ndarray] = {}
        if keep:
            n = len(samples)
            for i, s in enumerate(samples):
                if ctx is not None:
                    ctx.check_cancelled()
                    if i % 25 == 0:
                        ctx.progress(i, n, message="decoding images")
                self._decode(s)

    @staticmethod
    def _squeeze(arr: np.ndarray) -> np.ndarray:
        if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            return np.ascontiguousarray(arr[..., 0])
        return arr

    def _decode(self, s: Sample) -> tuple[np.ndarray, np.ndarray]:
        key = str(s.path)
        if key in self.train:
            return self.train[key], self.eval[key]
        img = load_rgb(s.path)
        tr = self._squeeze(np.asarray(resize_pil(img, self.train_size, self.interpolation)))
        ev = self._squeeze(np.asarray(resize_pil(img, self.size, self.interpolation)))
        if self.keep:
            self.train[key], self.eval[key] = tr, ev
        return tr, ev

    def get(self, s: Sample, train: bool) -> np.ndarray:
        tr, ev = self._decode(s)
        return tr if train else ev


class ClassifierDataset(Dataset):
    def __init__(self, samples: Sequence[Sample], class_index: dict[str, int], cache: ImageCache, *,
                 train: bool, mean=IMAGENET_MEAN, std=IMAGENET_STD, aug: AugmentConfig | None = None):
        self.samples = list(samples)
        self.class_index = class_index
        self.cache = cache
        self.train = train
        self.mean, self.std = tuple(mean), tuple(std)
        self.tf = TrainTransform(cache.size, aug, mean, std) if train else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, str]):
        """``item``: an index, or (index, draw seed) from :class:`_EpochSampler` for training draws."""
        i, draw_seed = item if isinstance(item, tuple) else (item, None)
        s = self.samples[i]
        x = to_float_tensor(self.cache.get(s, self.train))
        if self.train:
            if draw_seed is not None:   # the augmentation of a draw does not depend on rank or worker
                random.seed(draw_seed)
            x = self.tf(x)
        else:
            x = normalize(x, self.mean, self.std)
        return x, self.class_index[s.label], i


def balanced_order(labels: np.ndarray, n_classes: int, n_draws: int, seed: int) -> np.ndarray:
    """Indices drawn with replacement so that every class is equally likely (class-balanced sampling)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = 1.0 / np.maximum(counts[labels], 1.0)
    g = torch.Generator().manual_seed(int(seed))
    return torch.multinomial(torch.as_tensor(w), n_draws, replacement=True, generator=g).numpy()


class _EpochSampler(torch.utils.data.Sampler):
    """Per-epoch order (shuffled or class-balanced), identical on every rank; rank r takes r::world. Each
    draw carries a seed from (seed, epoch, position in the global order) for its augmentation, so that N
    processes train on exactly the images one process with the same global batch sees."""

    def __init__(self, labels: np.ndarray, n_classes: int, *, balanced: bool, seed: int, rank: int = 0,
                 world: int = 1):
        self.labels, self.n_classes, self.balanced = labels, n_classes, balanced
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        n = len(self.labels)
        seed = self.seed * 1000003 + self.epoch
        if self.balanced:
            order = balanced_order(self.labels, self.n_classes, n, seed)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
        return order[:(n // self.world) * self.world]

    def __iter__(self):
        order = self._order()
        return iter((int(order[pos]), f"{self.seed}:{self.epoch}:{pos}")
                    for pos in range(self.rank, len(order), self.world))

    def __len__(self) -> int:
        return len(self.labels) // self.world


# -------------------------------------------------------------------------------------------------- model
def _check_config(cfg: dict, where: Path) -> None:
    if cfg.get("format") != CKPT_FORMAT:
        raise ValueError(f"{where}: not a MedSSL classifier checkpoint (format {cfg.get('format')!r})")
    if int(cfg.get("format_version", 0)) > CKPT_VERSION:
        raise ValueError(f"{where}: checkpoint format {cfg['format_version']} is newer than this MedSSL")
    for key in ("backbone", "timm_kwargs", "classes", "num_classes", "image_size", "mean", "std"):
        if key not in cfg:
            raise ValueError(f"{where}: config.json lacks '{key}'")
    if len(cfg["classes"]) != int(cfg["num_classes"]):
        raise ValueError(f"{where}: {len(cfg['classes'])} classes listed but num_classes = {cfg['num_classes']}")


def load_classifier(ckpt: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a fine-tuned classifier from its checkpoint folder (or run folder); eval mode."""
    from safetensors.torch import load_file

    ckpt = resolve_classifier_checkpoint(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    _check_config(cfg, ckpt)
    model = create_backbone(cfg["backbone"], num_classes=int(cfg["num_classes"]),
                            in_chans=int(cfg.get("in_chans", 3)), **cfg["timm_kwargs"])
    sd = load_file(str(ckpt / "model.safetensors"))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{ckpt}: weights do not match the model described by config.json ({exc})") from None
    cfg["checkpoint"] = str(ckpt)
    return model.eval().to(device), cfg


def load_matching_weights(model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> dict:
    """Load tensors whose names (after stripping a wrapper prefix) and shapes match; the head may differ.
    Raises when less than 90 % of the backbone's tensors are found."""
    target = model.state_dict()
    prefixes = ("", "module.", "encoder.", "backbone.", "model.", "module.encoder.")
    best: dict[str, torch.Tensor] = {}
    for pre in prefixes:
        cand = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
        cand = {k: v for k, v in cand.items() if k in target and v.shape == target[k].shape}
        if len(cand) > len(best):
            best = cand
    heads = {k for k in target if k.startswith(("head.fc.", "classifier.", "fc.", "head.weight", "head.bias"))}
    body = [k for k in target if k not in heads and not k.endswith("num_batches_tracked")]
    found = [k for k in body if k in best]
    if len(found) < 0.9 * len(body):
        raise ValueError(f"{what}: only {len(found)} of {len(body)} backbone tensors match this model "
                         f"(another backbone or timm kwargs?)")
    model.load_state_dict(best, strict=False)
    return {"tensors_loaded": len(best), "backbone_tensors": len(body)}


def pretrained_metadata(path: str | Path) -> dict:
    """What a pretraining checkpoint says about itself: method, backbone, timm_kwargs, image_size,
    mean, std (from ``encoder.safetensors`` metadata or the checkpoint's config.json); {} if unknown."""
    from core.pretrain.config import RENAMED_KEYS

    p = Path(path)
    cands = [p / "config.json", p / "checkpoint-last" / "config.json"] if p.is_dir() else [p.parent / "config.json"]
    meta: dict[str, Any] = {}
    enc = p / "encoder.safetensors" if p.is_dir() else p
    if enc.is_file() and enc.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(enc), framework="pt") as fh:
            raw = dict(fh.metadata() or {})
        for k, v in raw.items():
            k = RENAMED_KEYS.get(k, k)
            try:
                meta[k] = json.loads(v) if k in ("timm_kwargs", "mean", "std", "image_size") else v
            except ValueError:
                meta[k] = v
    for c in cands:
        if c.is_file() and not meta.get("backbone"):
            try:
                cfg = json.loads(c.read_text())
            except ValueError:
                continue
            inner = {RENAMED_KEYS.get(k, k): v for k, v in cfg.get("config", cfg).items()}
            for k in ("method", "backbone", "timm_kwargs", "image_size", "mean", "std"):
                if k in inner:
                    meta[k] = inner[k]
    return meta


def _load_pretrained_init(model: nn.Module, path: Path) -> dict:
    """Weights from a checkpoint of this project: a pretraining run / checkpoint / ``encoder.safetensors``
    (``core.pretrain.load_encoder_weights``: strict except the head), or a fine-tuned classifier of this
    project (its backbone; the head too when the class count matches)."""
    info: dict[str, Any] = {"path": str(path)}
    try:
        cls_ckpt = resolve_classifier_checkpoint(path)
        cls_cfg = json.loads((cls_ckpt / "config.json").read_text())
    except (FileNotFoundError, ValueError):
        cls_cfg = None
    if cls_cfg is not None and cls_cfg.get("format") == CKPT_FORMAT:
        from safetensors.torch import load_file

        info.update({"kind": "classifier", "file": str(cls_ckpt / "model.safetensors"),
                     "mean": cls_cfg["mean"], "std": cls_cfg["std"]})
        info.update(load_matching_weights(model, load_file(info["file"]), info["file"]))
        return info
    from core.pretrain import load_encoder_weights

    rep = load_encoder_weights(model, path)
    meta = pretrained_metadata(path)
    info.update({"kind": "pretraining", "file": rep.get("source", str(path)), "tensors_loaded": rep.get("loaded"),
                 "head_kept_fresh": rep.get("kept"), "pretrain": meta})
    if meta.get("mean") and meta.get("std"):
        info["mean"], info["std"] = list(meta["mean"]), list(meta["std"])
    return info


def build_classifier(cfg: FinetuneConfig, classes: Sequence[str], log_fn: Callable[[str], None] = print
                     ) -> tuple[nn.Module, dict]:
    """The model for ``cfg`` with its initial weights, and the checkpoint config describing it."""
    kwargs = cfg.model_kwargs()
    model = create_backbone(cfg.backbone, num_classes=len(classes), **kwargs)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if cfg.init == "imagenet":
        from core.models.weights import load_imagenet_weights

        rep = load_imagenet_weights(model, cfg.backbone, cfg.init_weights)
        init = rep.to_dict()
        mean, std = rep.mean or mean, rep.std or std
        log_fn(f"init: ImageNet weights from {rep.source.describe()} ({rep.loaded} tensors; head reset)")
    elif cfg.init == "pretrained":
        if not cfg.init_weights:
            raise ValueError("--init pretrained needs --init-weights PATH (a pretraining run or checkpoint)")
        init = {"source": "pretrained", **_load_pretrained_init(model, Path(cfg.init_weights))}
        if init.get("mean") and init.get("std"):
            mean, std = tuple(init["mean"]), tuple(init["std"])
        what = (init.get("pretrain") or {}).get("method") or init.get("kind")
        log_fn(f"init: {what} weights from {init.get('file')} ({init.get('tensors_loaded')} tensors)")
    elif cfg.init == "random":
        init = {"source": "random"}
        log_fn("*" * 78)
        log_fn("* WARNING: RANDOM INITIALISATION - no pretrained weights are used for this model.  *")
        log_fn("* Expect much lower accuracy on small medical data sets than with ImageNet or MAE.  *")
        log_fn("*" * 78)
    else:
        raise ValueError(f"unknown init {cfg.init!r}; choose from {INIT_CHOICES}")
    if cfg.init != "random":
        _reset_head(model)
    ckpt_cfg = {
        "format": CKPT_FORMAT, "format_version": CKPT_VERSION, "task": "classification",
        "backbone": cfg.backbone, "timm_kwargs": kwargs, "in_chans": 3,
        "num_classes": len(classes), "classes": list(classes), "image_size": int(cfg.image_size),
        "mean": list(mean), "std": list(std), "interpolation": "bicubic", "resize": "squash",
        "init": init,
    }
    return model, ckpt_cfg


def _reset_head(model: nn.Module) -> None:
    """Small fresh classifier (N(0, 0.01), zero bias) on top of pretrained features. timm's EfficientNet
    head init (uniform +-1/sqrt(classes)) gives 3-class logits of size ~10 on ImageNet features."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=0.01)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def save_checkpoint(dirpath: Path, model: nn.Module, ckpt_cfg: dict, state: dict | None = None) -> None:
    """A classifier checkpoint folder (model.safetensors, config.json, optimizer.pt = resume state), atomically."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}

    def write(tmp: Path) -> None:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(ckpt_cfg, indent=1))
        if state is not None:
            torch.save(state, tmp / "optimizer.pt")

    write_checkpoint_dir(dirpath, write)


def _same_model(a: dict, b: dict) -> list[str]:
    return [k for k in ("backbone", "timm_kwargs", "classes", "image_size", "in_chans") if a.get(k) != b.get(k)]


# ---------------------------------------------------------------------------------------------- training
def write_split(run_dir: Path, data: LabeledData, parts: dict[str, list[Sample]], extra: dict | None = None) -> None:
    d = {"root": str(data.root) if data.root else None, "classes": data.classes, **(extra or {})}
    for name, samples in parts.items():
        d[name] = [[s.rel_path, s.label] for s in samples]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "split.json").write_text(json.dumps(d, indent=0))


def read_split(run_dir: str | Path) -> dict:
    """``split.json`` of a run: root, classes and [rel_path, label] lists per part."""
    run_dir = Path(run_dir)
    for p in (run_dir / "split.json", run_dir.parent / "split.json"):
        if p.is_file():
            return json.loads(p.read_text())
    raise FileNotFoundError(f"{run_dir}: no split.json (not a fine-tuning run folder?)")


RESUME_FILES = REQUIRED + ("optimizer.pt",)
NAN_HINT = "lower --lr, or try --precision fp32"


@dataclass
class EarlyStopping:
    """Best validation key (balanced accuracy, -NLL) so far and the epochs since it improved."""
    best: list | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, epoch: int, key: tuple | None) -> bool:
        """Record epoch ``epoch`` (1-based); ``key`` None (no validation set): every epoch counts as better."""
        improved = key is None or self.best is None or key > tuple(self.best)
        if key is not None and improved:
            self.best = list(key)
        if improved:
            self.best_epoch, self.bad_epochs = epoch, 0
        else:
            self.bad_epochs += 1
        return improved


@dataclass
class _Pace:
    """This process's steps per second since it started (or resumed), for the ETA."""
    start: float
    steps: int = 0

    def eta_s(self, steps_left: int) -> float:
        return (time.perf_counter() - self.start) / max(1, self.steps) * steps_left


def _check_run_folder(run_dir: Path, resume: bool) -> dict | None:
    """The metrics of a finished run being resumed; refuses to start over a run without ``resume``."""
    last_dir, best_dir = run_dir / "checkpoint-last", run_dir / "checkpoint-best"
    if (run_dir / "metrics.json").is_file() and find_checkpoint_dir(best_dir) is not None:
        if not resume:
            raise FileExistsError(f"{run_dir} holds a finished run; use --resume to reuse it or a new --out")
        return json.loads((run_dir / "metrics.json").read_text())
    if (last_dir.exists() or find_checkpoint_dir(last_dir) is not None) and not resume:
        raise FileExistsError(f"{run_dir} already has a checkpoint; pass --resume to continue it, "
                              f"or choose another --out")
    return None


def _default_parts(cfg: FinetuneConfig, data: LabeledData) -> dict[str, list[Sample]]:
    from core.data.splits import split_indices

    idx = split_indices(data.labels(), data.groups(), val_fraction=cfg.val_fraction,
                        test_fraction=cfg.test_fraction, seed=cfg.seed)
    return {k: data.subset(v) for k, v in idx.items()}


def _check_same_split(run_dir: Path, parts: dict[str, list[Sample]]) -> None:
    """A resumed run keeps the images it started with."""
    if not (run_dir / "split.json").is_file():
        return
    before = json.loads((run_dir / "split.json").read_text())
    changed = [k for k in ("train", "val", "test")
               if sorted(map(tuple, before.get(k) or [])) != sorted((s.rel_path, s.label) for s in parts.get(k, []))]
    if changed:
        raise ValueError(f"{run_dir}: the {'/'.join(changed)} split differs from the one this run started with "
                         f"(labels changed, or another stored split): start a new run instead of resuming")


def _criterion(cfg: FinetuneConfig, train_y: np.ndarray, n_classes: int, device: torch.device) -> nn.Module:
    if cfg.balance == "loss":
        counts = np.bincount(train_y, minlength=n_classes).astype(np.float64)
        weight = torch.tensor(len(train_y) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)
        return nn.CrossEntropyLoss(weight=weight.to(device), label_smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def _resume_state(last_dir: Path, best_dir: Path, model: nn.Module, optimizer, scaler, ckpt_cfg: dict,
                  stopper: EarlyStopping) -> tuple[int, dict | None]:
    """Weights, optimizer, scaler, RNG and early-stopping state from ``checkpoint-last``: (epochs done,
    best weights)."""
    from safetensors.torch import load_file

    prev_cfg = json.loads((last_dir / "config.json").read_text())
    diff = _same_model(prev_cfg, ckpt_cfg)
    if diff:
        raise ValueError(f"{last_dir}: cannot resume, the model differs in {diff}; use a new --out")
    model.load_state_dict(load_file(str(last_dir / "model.safetensors")))
    try:
        st = torch.load(last_dir / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as e:   # written by an older version with pickled numpy state: never unpickle it
        raise ValueError(f"{last_dir / 'optimizer.pt'}: not a safe resume state ({type(e).__name__}); "
                         f"start a new --out, or --init-weights {best_dir}") from e
    optimizer.load_state_dict(st["optimizer"])
    if scaler is not None and st.get("scaler"):
        scaler.load_state_dict(st["scaler"])
    stopper.best, stopper.best_epoch, stopper.bad_epochs = st["best"], st["best_epoch"], st["bad_epochs"]
    ckpt_cfg["init"] = prev_cfg.get("init", ckpt_cfg["init"])
    best_state = load_file(str(best_dir / "model.safetensors")) if find_checkpoint_dir(best_dir) else None
    restore_rng_state(st["rng"])
    return st["epoch"], best_state


def train_one_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer, scaler,
                    precision: Precision, device: torch.device, *, epoch: int, cfg: FinetuneConfig,
                    schedule: dict, guard: NanGuard, pace: _Pace, world: int, ctx=None,
                    say: Callable[[str], None] = log.info, is_main: bool = True) -> dict[str, float]:
    """One pass over the training loader: train loss, train accuracy, the last lr."""
    model.train()
    iters, total_iters = schedule["iters"], schedule["total"]
    tot_loss, n_seen, correct, lr = 0.0, 0, 0, optimizer.param_groups[-1]["lr"]
    step_start = time.perf_counter()
    for i, (x, y, _) in enumerate(loader):
        if ctx is not None:
            ctx.check_cancelled()
        it = epoch * iters + i
        lr = lr_at(it, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=schedule["warmup"], total_steps=total_iters)
        set_lr(optimizer, lr)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
            out = model(x)
            loss = criterion(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if not guard.step_ok(loss.detach(), where=f"epoch {epoch + 1} step {i + 1}"):
            say(f"non-finite loss at epoch {epoch + 1} step {i + 1}: step skipped")
            continue
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if cfg.grad_clip:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        tot_loss += float(loss.detach()) * len(y)
        n_seen += len(y)
        correct += int((out.argmax(1) == y).sum())
        pace.steps += 1
        if ctx is not None and is_main:
            ctx.progress(it + 1, total_iters, message=f"epoch {epoch + 1}/{cfg.epochs}: training",
                         phase="training", epoch=epoch + 1, loss=float(loss.detach()), lr=lr,
                         images_per_s=len(y) * world / max(time.perf_counter() - step_start, 1e-9),
                         eta_s=pace.eta_s(total_iters - it - 1))
        step_start = time.perf_counter()
    tot_loss, n_seen, correct = all_reduce_sum([tot_loss, n_seen, correct], device)   # over all ranks
    return {"train_loss": tot_loss / max(1, n_seen), "train_acc": correct / max(1, n_seen),
            "lr": optimizer.param_groups[-1]["lr"]}


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, precision: Precision,
             classes: Sequence[str]) -> tuple[dict, np.ndarray]:
    """Metrics (``core.analysis.metrics.classification_metrics``) and logits of a loader."""
    logits, y = predict_logits(model, loader, device, precision.dtype)
    return classification_metrics(y, softmax_np(logits), classes), logits


def finetune(cfg: FinetuneConfig, data: LabeledData, run_dir: str | Path, *, parts: dict[str, list[Sample]]
             | None = None, resume: bool = False, ctx=None, cache: ImageCache | None = None,
             split_extra: dict | None = None) -> dict:
    """Fine-tune one model; returns the metrics dict also written to ``RUN/metrics.json``.

    ``parts`` = {'train', 'val', 'test'} sample lists; default: ``core.data.splits.split_indices`` with the
    config's fractions and seed (stratified, grouped by case).
    """
    run_dir = Path(run_dir)
    dd = setup_distributed(cfg.device)
    is_main, world, device = dd.is_main, dd.world_size, dd.device

    def say(msg: str) -> None:
        if is_main:
            ctx.log(msg) if ctx is not None else log.info(msg)

    # -- the run folder and the split
    last_dir, best_dir = run_dir / "checkpoint-last", run_dir / "checkpoint-best"
    finished = _check_run_folder(run_dir, resume)
    if finished is not None:
        say(f"{run_dir}: already finished, reusing its results")
        return finished
    parts = parts if parts is not None else _default_parts(cfg, data)
    if not parts.get("train"):
        raise ValueError("the training split is empty")
    if resume:
        _check_same_split(run_dir, parts)
    if is_main:
        write_split(run_dir, data, parts, split_extra)
        if resume:      # a kill between a checkpoint's two renames left it as .old/.tmp
            repair_checkpoint_dir(last_dir, RESUME_FILES)
            repair_checkpoint_dir(best_dir)
    barrier()

    # -- model, data, optimizer
    seed_everything(cfg.seed + dd.rank)
    precision = resolve_precision(cfg.precision, device)
    classes = data.classes
    cidx = {c: i for i, c in enumerate(classes)}
    model, ckpt_cfg = build_classifier(cfg, classes, say)
    layer_decay = cfg.layer_decay
    if cfg.init == "random" and cfg.layer_decay and cfg.layer_decay < 1:
        say("layer-wise lr decay is off for random init (nothing pretrained to protect)")
        layer_decay = None
    ckpt_cfg["train"] = cfg.to_dict()
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    all_samples = [s for p in parts.values() for s in p]
    if cache is None:
        fits = len(all_samples) * 3 * (cfg.image_size ** 2) * 2.4 <= cfg.cache_mb * 2**20
        cache = ImageCache(all_samples, cfg.image_size, keep=fits, ctx=ctx)
    mean, std = ckpt_cfg["mean"], ckpt_cfg["std"]
    train_ds = ClassifierDataset(parts["train"], cidx, cache, train=True, mean=mean, std=std, aug=cfg.aug)
    train_y = np.asarray([cidx[s.label] for s in parts["train"]])
    sampler = _EpochSampler(train_y, len(classes), balanced=cfg.balance == "sampler", seed=cfg.seed,
                            rank=dd.rank, world=world)
    per_rank_bs = max(1, cfg.batch_size // world)
    # Augmentation runs in worker processes (one torch thread each): in the main process, every small
    # tensor op would be an OpenMP parallel region, which costs milliseconds when the CPU is shared.
    nw = cfg.num_workers if cfg.num_workers is not None else min(2, os.cpu_count() or 1)
    train_loader = DataLoader(train_ds, batch_size=per_rank_bs, sampler=sampler, num_workers=nw,
                              drop_last=len(train_ds) // world > per_rank_bs, persistent_workers=nw > 0,
                              pin_memory=device.type == "cuda")

    def eval_loader(samples, persistent: bool = False):
        ds = ClassifierDataset(samples, cidx, cache, train=False, mean=mean, std=std)
        return DataLoader(ds, batch_size=max(cfg.batch_size, 32), shuffle=False, num_workers=nw,
                          persistent_workers=persistent and nw > 0)

    val_loader = eval_loader(parts.get("val") or [], persistent=True)
    criterion = _criterion(cfg, train_y, len(classes), device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, layer_decay), lr=cfg.lr,
                                  weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    scaler = make_grad_scaler(precision, device)
    train_model: nn.Module = model
    if dd.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    iters = len(train_loader)
    schedule = {"iters": iters, "total": iters * cfg.epochs, "warmup": int(round(cfg.warmup_epochs * iters))}
    stopper = EarlyStopping()
    start_epoch, best_state = 0, None
    if resume and find_checkpoint_dir(last_dir, RESUME_FILES) == last_dir:
        start_epoch, best_state = _resume_state(last_dir, best_dir, model, optimizer, scaler, ckpt_cfg, stopper)
        say(f"resumed from {last_dir} after epoch {start_epoch}")

    # -- the loop
    guard = NanGuard(hint=NAN_HINT, device=device)
    stop_reason = "epochs"
    t0 = time.time()
    pace = _Pace(time.perf_counter())
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        if stopper.bad_epochs >= cfg.patience:
            stop_reason = "early stopping"
            break
        sampler.set_epoch(epoch)
        row: dict[str, Any] = {"epoch": epoch + 1, **train_one_epoch(
            train_model, train_loader, criterion, optimizer, scaler, precision, device, epoch=epoch, cfg=cfg,
            schedule=schedule, guard=guard, pace=pace, world=world, ctx=ctx, say=say, is_main=is_main),
            "time_s": round(time.time() - t0, 1)}
        key = None
        if len(val_loader.dataset):
            if ctx is not None and is_main:
                done = (epoch + 1) * iters
                ctx.progress(done, schedule["total"], message=f"epoch {epoch + 1}/{cfg.epochs}: validating",
                             phase="validating", epoch=epoch + 1, eta_s=pace.eta_s(schedule["total"] - done))
            m, _ = evaluate(model, val_loader, device, precision, classes)
            row.update({f"val_{k}": m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "nll")})
            key = (m["balanced_accuracy"], -m["nll"])
        improved = stopper.update(epoch + 1, key)
        if improved:
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        row["best_epoch"] = stopper.best_epoch
        if is_main:
            _end_of_epoch(run_dir, model, optimizer, scaler, ckpt_cfg, stopper, row, improved, cfg.epochs, ctx, say)
    else:
        if stopper.bad_epochs >= cfg.patience:
            stop_reason = "early stopping"

    # -- the best model on val and test
    if best_state is not None:
        model.load_state_dict(best_state)
    result: dict[str, Any] = {"run_dir": str(run_dir), "best_epoch": stopper.best_epoch, "epochs_run": epoch + 1,
                              "stop": stop_reason, "init": ckpt_cfg["init"], "classes": classes,
                              "train_time_s": round(time.time() - t0, 1), "n_train": len(parts["train"]),
                              "world_size": world}
    for part in ("val", "test"):
        samples = parts.get(part) or []
        if not samples:
            continue
        result[part], logits = evaluate(model, eval_loader(samples), device, precision, classes)
        if is_main:
            write_logits(run_dir / f"logits_{part}.csv", samples, logits, classes)
    if is_main:
        (run_dir / "metrics.json").write_text(json.dumps(result, indent=1))
        say(f"done: best epoch {stopper.best_epoch}" + "".join(
            f", {p} acc {result[p]['accuracy']:.3f} bal. acc {result[p]['balanced_accuracy']:.3f}"
            for p in ("val", "test") if p in result))
    return result


def _end_of_epoch(run_dir: Path, model: nn.Module, optimizer, scaler, ckpt_cfg: dict, stopper: EarlyStopping,
                  row: dict, improved: bool, epochs: int, ctx, say: Callable[[str], None]) -> None:
    """Rank 0: checkpoint-best (when better), the history row, checkpoint-last, the epoch-end event."""
    epoch = row["epoch"]
    if improved:
        save_checkpoint(run_dir / "checkpoint-best", model, {**ckpt_cfg, "epoch": epoch, "metric": {
            "val_balanced_accuracy": stopper.best[0] if stopper.best else None}})
    with open(run_dir / "history.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else {},
             "epoch": epoch, "best": stopper.best, "best_epoch": stopper.best_epoch,
             "bad_epochs": stopper.bad_epochs, "rng": capture_rng_state()}
    save_checkpoint(run_dir / "checkpoint-last", model, {**ckpt_cfg, "epoch": epoch}, state)
    msg = f"epoch {epoch}/{epochs}: loss {row['train_loss']:.4f}"
    if "val_balanced_accuracy" in row:
        msg += (f", val bal. acc {row['val_balanced_accuracy']:.3f} acc {row['val_accuracy']:.3f}"
                f"{' *' if improved else ''}")
    say(msg)
    if ctx is not None:
        ctx.epoch_end(epoch, epochs, row)



# ------------------------------------------------------------------------------------------------- k-fold
def fold_dirs(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    marker = run_dir / "kfold.json"
    if not marker.is_file():
        return []
    k = json.loads(marker.read_text())["k"]
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
        prev = json.loads(marker.read_text())
        if {kk: prev.get(kk) for kk in spec} != spec:
            raise ValueError(f"{run_dir} holds a different k-fold run ({prev}); use another --out")
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a k-fold run; pass --resume to continue it")
    barrier()   # every rank has checked the marker before rank 0 writes it
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(spec, indent=1))
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
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
        m = json.loads(mp.read_text())
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
        out["pooled_out_of_fold"] = classification_metrics(np.asarray(pooled_y), softmax_np(
            np.concatenate(pooled_logits)), classes)
    (run_dir / "cv.json").write_text(json.dumps(out, indent=1))
    return out


def _scalars(m: dict | None) -> dict:
    if not m:
        return {}
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) or v is None}


# ------------------------------------------------------------------------------------------ stored splits
def stored_split(project: str | Path, data: LabeledData, name: str, make: Callable[[], list[str | int]],
                 params: dict, ctx=None, new: bool = False) -> list[str | int | None]:
    """The part (``train``/``val``/``test`` or a fold number) of every sample, from the project store's split
    ``name``; made with ``make`` and saved when the store has none, so that every later run, and every
    member of an ensemble, trains and tests on the same images. Labelled images the saved split does not
    know (labelled after it was made) get None: left out, and said so. ``new``: make it again and replace
    the saved one (runs already made keep their own ``split.json``)."""
    from core.project.store import ProjectStore

    def say(msg: str) -> None:
        ctx.log(msg) if ctx is not None else log.info(msg)

    store = ProjectStore(project)
    try:
        if new or name not in store.list_splits():
            made = make()
            assignment = {s.image_id: p for s, p in zip(data.samples, made)}
            if new:
                store.save_split(name, assignment, params)
                saved_now = True
            else:   # two first runs at once: the first to save wins, the other takes its split
                saved_now = store.save_split_if_absent(name, assignment, params)
            if saved_now:
                say(f"split {name!r} made and saved in the project store ({len(made)} images, {params})")
                return list(made)
        saved = store.load_split(name)
        parts = [saved.get(s.image_id) for s in data.samples]
        missing = sum(p is None for p in parts)
        say(f"split {name!r} from the project store ({len(saved)} images, made with "
            f"{store.split_params(name)})" + (f"; {missing} labelled images are not in it (labelled after "
                                              f"it was made) and are left out" if missing else ""))
        return parts
    finally:
        store.close()


def _project_parts(cfg: FinetuneConfig, data: LabeledData, project, name: str, ctx,
                   new: bool = False) -> dict[str, list[Sample]]:
    from core.data.splits import split_indices

    def make() -> list[str]:
        idx = split_indices(data.labels(), data.groups(), val_fraction=cfg.val_fraction,
                            test_fraction=cfg.test_fraction, seed=cfg.seed)
        part = [""] * len(data.samples)
        for k, v in idx.items():
            for i in v:
                part[i] = k
        return part

    params = {"kind": "holdout", "seed": cfg.seed, "val_fraction": cfg.val_fraction,
              "test_fraction": cfg.test_fraction}
    part = stored_split(project, data, name, make, params, ctx, new)
    return {k: [s for s, p in zip(data.samples, part) if p == k] for k in ("train", "val", "test")}


def _project_folds(cfg: FinetuneConfig, data: LabeledData, k: int, project, name: str, ctx,
                   new: bool = False) -> list[int | None]:
    from core.data.splits import kfold_indices

    def make() -> list[int]:
        fold = [-1] * len(data.samples)
        for f, (_, test_idx) in enumerate(kfold_indices(data.labels(), data.groups(), k=k, seed=cfg.seed)):
            for i in test_idx:
                fold[i] = f
        return fold

    fold = stored_split(project, data, f"{name}-{k}fold", make, {"kind": "kfold", "k": k, "seed": cfg.seed}, ctx,
                        new)
    bad = {f for f in fold if f is not None and not (isinstance(f, int) and 0 <= f < k)}
    if bad:
        raise ValueError(f"split {name}-{k}fold in {project} holds parts {sorted(map(str, bad))}, not folds 0..{k - 1}")
    return fold


# ---------------------------------------------------------------------------------------------------- job
def finetune_job(cfg: FinetuneConfig, run_dir: str | Path, *, folder: str | Path | None = None,
                 project: str | Path | None = None, kfold: int | None = None, resume: bool = False,
                 folds: Sequence[int] | None = None, split_name: str = "default", new_split: bool = False):
    """A ``core.jobs.Job`` for one run or a k-fold run; state dir = the run folder. With a project store the
    split comes from (or is saved to) the store under ``split_name`` (``new_split``: made again)."""
    from core.jobs import Job

    run_dir = Path(run_dir)

    def fn(ctx):
        dd = setup_distributed(cfg.device)
        try:
            return run(ctx)
        finally:
            teardown_distributed(dd)

    def run(ctx):
        data = load_labeled_data(folder, project=project, ctx=ctx)
        ctx.log(f"{len(data.samples)} labelled images, classes {data.classes}")
        if project and not resume and any((run_dir / f).exists() for f in ("split.json", "kfold.json")):
            # checked before a split is saved in the store for a run that cannot start
            raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it, or choose "
                                  f"another --out")
        if kfold:
            fold_of = _project_folds(cfg, data, kfold, project, split_name, ctx, new_split) if project else None
            return run_kfold(cfg, data, run_dir, kfold, resume=resume, ctx=ctx, folds=folds, fold_of=fold_of)
        parts = _project_parts(cfg, data, project, split_name, ctx, new_split) if project else None
        return finetune(cfg, data, run_dir, parts=parts, resume=resume, ctx=ctx,
                        split_extra={"store_split": split_name} if project else None)

    return Job("finetune", fn, state_dir=run_dir)
