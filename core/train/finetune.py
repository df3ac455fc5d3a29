"""Fine-tuning: a pretrained (or random) timm backbone becomes a classifier (one run, and the job).

One run::

    RUN/split.json                   data root, classes, rel paths of train / val / test
    RUN/checkpoint-last/             model.safetensors + config.json + optimizer.pt (resume state)
    RUN/checkpoint-best/             model.safetensors + config.json (best validation balanced accuracy)
    RUN/history.jsonl                one JSON line per epoch (loss, lr, validation metrics)
    RUN/metrics.json                 validation and test metrics of the best checkpoint
    RUN/logits_val.csv, logits_test.csv   the best checkpoint's logits (ensembles reuse them)
    RUN/job.log, job.json            the job's event log and state (core.jobs)

k-fold runs: ``core.train.kfold``; the data and splits: ``core.train.data``; the model and its checkpoint
format: ``core.models.classifier``.

Resume rules (as in pretraining): ``resume=True`` continues from ``checkpoint-last`` (weights, optimiser,
schedule position, early-stopping and NaN-guard state, every rank's RNG) and refuses a checkpoint whose
model config differs; ``init_weights`` only loads weights (a pretraining checkpoint, ImageNet file or
another classifier). A run folder that already has a checkpoint is never silently overwritten. History
rows written after the last checkpoint (a kill between the row and the checkpoint) are dropped on resume;
the resumed run writes them again.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from core.analysis.metrics import classification_metrics
from core.atomic import write_json_atomic
from core.data.splits import read_folds_file
from core.inference.logits import predict_logits, softmax, write_logits
from core.models.classifier import build_classifier, save_classifier_checkpoint
from core.models.tta import with_tta
from core.models.weights import read_safetensors, read_torch_file
from core.train.checkpoint import REQUIRED, find_checkpoint_dir, read_json, repair_checkpoint_dir, trim_epoch_log
from core.train.config import AUGMENT_OPTIONS, FINETUNE_OPTIONS, FinetuneConfig
from core.train.data import (ClassifierDataset, EpochSampler, ImageCache, LabeledData, Sample, load_labeled_data,
                             project_folds, project_parts, write_split)
from core.train.distributed import DistInfo, all_reduce_sum, barrier, setup_distributed, teardown_distributed
from core.train.nan_guard import NanGuard
from core.train.precision import Precision, configure_cuda_math, make_grad_scaler, resolve_precision
from core.train.rng import gather_rng_states, loader_generator, restore_rng_state, seed_everything
from core.train.schedule import lr_at, param_groups, set_lr

log = logging.getLogger(__name__)

__all__ = ["finetune", "finetune_job", "train_one_epoch", "evaluate", "EarlyStopping"]


def _same_model(a: dict, b: dict) -> list[str]:
    return [k for k in ("backbone", "timm_kwargs", "classes", "image_size", "in_chans") if a.get(k) != b.get(k)]


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
        return read_json(run_dir / "metrics.json")
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
    before = read_json(run_dir / "split.json")
    changed = [k for k in ("train", "val", "test")
               if sorted(map(tuple, before.get(k) or [])) != sorted((s.rel_path, s.label) for s in parts.get(k, []))]
    if changed:
        raise ValueError(f"{run_dir}: the {'/'.join(changed)} split differs from the one this run started with "
                         f"(labels changed, or another stored split): start a new run instead of resuming")


class _Loaders:
    """The training loader (this rank's slice of every global batch) and evaluation loaders, over one
    image cache."""

    def __init__(self, cfg: FinetuneConfig, parts: dict[str, list[Sample]], cidx: dict[str, int],
                 cache: ImageCache | None, mean, std, dd, ctx=None):
        if cfg.batch_size % dd.world_size:
            raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {dd.world_size} processes")
        if cache is None:
            all_samples = [s for p in parts.values() for s in p]
            fits = len(all_samples) * 3 * (cfg.image_size ** 2) * 2.4 <= cfg.cache_mb * 2**20
            cache = ImageCache(all_samples, cfg.image_size, keep=fits, ctx=ctx)
        self.cfg, self.cidx, self.cache, self.mean, self.std = cfg, cidx, cache, mean, std
        # Augmentation runs in worker processes (one torch thread each): in the main process, every small
        # tensor op would be an OpenMP parallel region, which costs milliseconds when the CPU is shared.
        self.workers = cfg.num_workers if cfg.num_workers is not None else min(2, os.cpu_count() or 1)
        world = dd.world_size
        train_ds = ClassifierDataset(parts["train"], cidx, cache, train=True, mean=mean, std=std, aug=cfg.aug)
        self.train_y = np.asarray([cidx[s.label] for s in parts["train"]])
        self.sampler = EpochSampler(self.train_y, len(cidx), balanced=cfg.balance == "sampler", seed=cfg.seed,
                                    rank=dd.rank, world=world)
        per_rank_bs = cfg.batch_size // world
        self.train = DataLoader(train_ds, batch_size=per_rank_bs, sampler=self.sampler, num_workers=self.workers,
                                drop_last=len(train_ds) // world > per_rank_bs, persistent_workers=self.workers > 0,
                                pin_memory=dd.device.type == "cuda", generator=loader_generator(cfg.seed))

    def evaluation(self, samples: Sequence[Sample], persistent: bool = False) -> DataLoader:
        ds = ClassifierDataset(samples, self.cidx, self.cache, train=False, mean=self.mean, std=self.std)
        return DataLoader(ds, batch_size=max(self.cfg.batch_size, 32), shuffle=False, num_workers=self.workers,
                          persistent_workers=persistent and self.workers > 0,
                          generator=loader_generator(self.cfg.seed))


def _criterion(cfg: FinetuneConfig, train_y: np.ndarray, n_classes: int, device: torch.device) -> nn.Module:
    if cfg.balance == "loss":
        counts = np.bincount(train_y, minlength=n_classes).astype(np.float64)
        weight = torch.tensor(len(train_y) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)
        return nn.CrossEntropyLoss(weight=weight.to(device), label_smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def _resume_state(last_dir: Path, best_dir: Path, model: nn.Module, optimizer, scaler, ckpt_cfg: dict,
                  stopper: EarlyStopping, guard: NanGuard, dd: DistInfo) -> tuple[int, dict | None]:
    """Weights, optimizer, scaler, this rank's RNG, early-stopping and NaN-guard state from
    ``checkpoint-last``: (epochs done, best weights)."""
    prev_cfg = read_json(last_dir / "config.json")
    diff = _same_model(prev_cfg, ckpt_cfg)
    if diff:
        raise ValueError(f"{last_dir}: cannot resume, the model differs in {diff}; use a new --out")
    model.load_state_dict(read_safetensors(last_dir / "model.safetensors"))
    try:        # an older version pickled numpy state: never unpickled
        st = read_torch_file(last_dir / "optimizer.pt")
    except ValueError as exc:
        raise ValueError(f"{exc}; start a new --out, or --init-weights {best_dir}") from None
    optimizer.load_state_dict(st["optimizer"])
    if scaler is not None and st.get("scaler"):
        scaler.load_state_dict(st["scaler"])
    stopper.best, stopper.best_epoch, stopper.bad_epochs = st["best"], st["best_epoch"], st["bad_epochs"]
    guard.load_state_dict(st.get("nan_guard", {}))
    ckpt_cfg["init"] = prev_cfg.get("init", ckpt_cfg["init"])
    best_state = read_safetensors(best_dir / "model.safetensors") if find_checkpoint_dir(best_dir) else None
    restore_rng_state(st["rng"], dd.rank, dd.device)
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
    return classification_metrics(y, softmax(logits), classes), logits


def finetune(cfg: FinetuneConfig, data: LabeledData, run_dir: str | Path, *, parts: dict[str, list[Sample]]
             | None = None, resume: bool = False, ctx=None, cache: ImageCache | None = None,
             split_extra: dict | None = None) -> dict:
    """Fine-tune one model; returns the metrics dict also written to ``RUN/metrics.json``.

    ``parts`` = {'train', 'val', 'test'} sample lists; default: ``core.data.splits.split_indices`` with the
    config's fractions and seed (stratified, grouped by case).
    """
    run_dir = Path(run_dir)
    FINETUNE_OPTIONS.check_config(cfg)         # the CLI's bounds, also for a config from a project store
    AUGMENT_OPTIONS.check_config(cfg.aug)
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
    configure_cuda_math(cfg.precision, device)
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
    eval_model = with_tta(model, cfg.tta)          # validation and test as predictions will see the model

    loaders = _Loaders(cfg, parts, cidx, cache, ckpt_cfg["mean"], ckpt_cfg["std"], dd, ctx)
    train_loader, sampler, train_y = loaders.train, loaders.sampler, loaders.train_y
    val_loader = loaders.evaluation(parts.get("val") or [], persistent=True)
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
    guard = NanGuard(hint=NAN_HINT, device=device)
    start_epoch, best_state = 0, None
    if resume and find_checkpoint_dir(last_dir, RESUME_FILES) == last_dir:
        start_epoch, best_state = _resume_state(last_dir, best_dir, model, optimizer, scaler, ckpt_cfg, stopper,
                                                guard, dd)
        say(f"resumed from {last_dir} after epoch {start_epoch}")
    if is_main:     # rows a kill left after the last checkpoint (all of them when it came before the first)
        trim_epoch_log(run_dir / "history.jsonl", start_epoch)

    # -- the loop
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
            m, _ = evaluate(eval_model, val_loader, device, precision, classes)
            row.update({f"val_{k}": m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "nll")})
            key = (m["balanced_accuracy"], -m["nll"])
        improved = stopper.update(epoch + 1, key)
        if improved:
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        row["best_epoch"] = stopper.best_epoch
        rng = gather_rng_states(device)     # every rank's, so that each resumes with its own
        if is_main:
            _end_of_epoch(run_dir, model, optimizer, scaler, ckpt_cfg, stopper, guard, row, improved, cfg.epochs,
                          ctx, say, rng)
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
        result[part], logits = evaluate(eval_model, loaders.evaluation(samples), device, precision, classes)
        if is_main:
            write_logits(run_dir / f"logits_{part}.csv", samples, logits, classes)
    if is_main:
        write_json_atomic(run_dir / "metrics.json", result, indent=1)
        say(f"done: best epoch {stopper.best_epoch}" + "".join(
            f", {p} acc {result[p]['accuracy']:.3f} bal. acc {result[p]['balanced_accuracy']:.3f}"
            for p in ("val", "test") if p in result))
    return result


def _end_of_epoch(run_dir: Path, model: nn.Module, optimizer, scaler, ckpt_cfg: dict, stopper: EarlyStopping,
                  guard: NanGuard, row: dict, improved: bool, epochs: int, ctx, say: Callable[[str], None],
                  rng: list[dict]) -> None:
    """Rank 0: checkpoint-best (when better), the history row, checkpoint-last, the epoch-end event."""
    epoch = row["epoch"]
    if improved:
        save_classifier_checkpoint(run_dir / "checkpoint-best", model, {**ckpt_cfg, "epoch": epoch, "metric": {
            "val_balanced_accuracy": stopper.best[0] if stopper.best else None}})
    with open(run_dir / "history.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else {},
             "epoch": epoch, "best": stopper.best, "best_epoch": stopper.best_epoch,
             "bad_epochs": stopper.bad_epochs, "nan_guard": guard.state_dict(), "rng": rng}
    save_classifier_checkpoint(run_dir / "checkpoint-last", model, {**ckpt_cfg, "epoch": epoch}, state)
    msg = f"epoch {epoch}/{epochs}: loss {row['train_loss']:.4f}"
    if "val_balanced_accuracy" in row:
        msg += (f", val bal. acc {row['val_balanced_accuracy']:.3f} acc {row['val_accuracy']:.3f}"
                f"{' *' if improved else ''}")
    say(msg)
    if ctx is not None:
        ctx.epoch_end(epoch, epochs, row)




# ---------------------------------------------------------------------------------------------------- job
def folds_from_file(path: str | Path, data: "LabeledData", k: int) -> list[int | None]:
    """The fold of every sample from a study's ``folds.json`` (:func:`core.data.splits.read_folds_file`);
    images the file does not list are left out, as the study left them out."""
    fold = read_folds_file(path, k)
    fold_of = [fold.get(s.rel_path) for s in data.samples]
    if not any(f is not None for f in fold_of):
        raise ValueError(f"{path}: none of its images is in the data")
    return fold_of


def finetune_job(cfg: FinetuneConfig, run_dir: str | Path, *, folder: str | Path | None = None,
                 project: str | Path | None = None, kfold: int | None = None, resume: bool = False,
                 folds: Sequence[int] | None = None, split_name: str = "default", new_split: bool = False,
                 folds_file: str | Path | None = None):
    """A ``core.jobs.Job`` for one run or a k-fold run; state dir = the run folder. With a project store the
    split comes from (or is saved to) the store under ``split_name`` (``new_split``: made again); with
    ``folds_file`` (a study's ``folds.json``) the k-fold split is the one a study made."""
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
            if folds_file:
                fold_of = folds_from_file(folds_file, data, kfold)
            else:
                fold_of = project_folds(cfg, data, kfold, project, split_name, ctx, new_split) if project else None
            from core.train.kfold import run_kfold   # kfold builds on finetune()

            return run_kfold(cfg, data, run_dir, kfold, resume=resume, ctx=ctx, folds=folds, fold_of=fold_of)
        parts = project_parts(cfg, data, project, split_name, ctx, new_split) if project else None
        return finetune(cfg, data, run_dir, parts=parts, resume=resume, ctx=ctx,
                        split_extra={"store_split": split_name} if project else None)

    return Job("finetune", fn, state_dir=run_dir)
