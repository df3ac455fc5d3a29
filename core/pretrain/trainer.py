"""The shared pretraining loop: every registered method (``core.pretrain.get_method``) trains through it.

What it does, in order (set-up in ``_setup``, then ``train_one_epoch`` and ``_end_of_epoch`` per epoch):
folder scan and data fingerprint; dataset of the kind the method names; model from ``method.build``;
AdamW (``core.train.schedule.param_groups``: no weight decay on norms, biases, layer scales, mask tokens)
with a per-iteration schedule (``lr_at``: linear warm-up, then cosine to ``min_lr``); gradient
accumulation; gradient clipping; ``--precision`` (``core.train.precision``; fp16 with a GradScaler); the
NaN guard (``core.train.nan_guard``: a step whose loss or gradient norm is not finite is skipped; too
many in a row stop the run); progress and epoch-end events (loss, images/s, ETA) and cancellation
through ``core.jobs``; a JSON-lines log per epoch (with encoder collapse metrics); atomic checkpoints
(``core.train.checkpoint``); resume; DistributedDataParallel under ``torchrun``
(``core.train.distributed``).

Run folder (``config.out``)::

    checkpoint-last/model.safetensors   whole model (encoder.* + method parts), float32
    checkpoint-last/config.json         TrainConfig, data fingerprint, progress, versions
    checkpoint-last/optimizer.pt        optimizer (+ grad scaler) state, RNG states, progress
                                        (torch.save of tensors/lists/dicts/numbers: loads with weights_only)
    encoder.safetensors                 encoder only, timm key names (loads into timm.create_model(backbone))
    log.jsonl                           one JSON object per epoch
    job.json, job.log                   core.jobs status and events (when run as a job with this state dir)

Resume (``resume=``) restores everything: weights, optimizer, RNG, epoch/step counters, epoch
accumulators, the NaN guard's counts. The continued run gives the same losses as an uninterrupted one
(same device and precision), because nothing random depends on process state: batches come from a per-epoch seeded
permutation, and per-sample randomness (flips, masks) from (seed, epoch, dataset index). The saved
config must match on everything that changes the result (``IDENTITY_KEYS`` plus the data fingerprint).
``init_weights`` instead loads encoder weights only and starts a fresh run.

DDP: launched with ``torchrun --nproc-per-node N``, each process takes ``batch_size / N`` images of every
global batch; the method's loss is a per-image mean, and DDP averages gradients, so N processes follow
the same trajectory as one process with the same ``batch_size`` (up to float summation order). Backend
gloo on CPU, nccl on CUDA. Only rank 0 writes files; every rank reads the checkpoint on resume (so a
multi-node run needs the run folder on a shared file system).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from core.atomic import atomic_path
from core.models.weights import read_safetensors, read_torch_file, safetensors_metadata
from core.pretrain import StepContext, get_method
from core.pretrain.config import IDENTITY_KEYS, TRAIN_OPTIONS, TrainConfig, current_names
from core.train.checkpoint import read_json, resolve_pretrain_checkpoint, trim_epoch_log, write_checkpoint_dir
from core.train.distributed import DistInfo, barrier, setup_distributed, teardown_distributed, unwrap
from core.train.nan_guard import NanGuard
from core.train.precision import Precision, configure_cuda_math, make_grad_scaler, resolve_precision
from core.train.rng import gather_rng_states, restore_rng_state, seed_everything
from core.train.schedule import lr_at, param_groups, set_lr

__all__ = ["train", "train_one_epoch", "make_job", "load_encoder_weights", "read_encoder_state", "export_encoder",
           "read_checkpoint_config", "load_checkpoint_model", "collapse_metrics", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "medssl-pretrain/1"
CKPT_DIR = "checkpoint-last"


# -- collapse metrics ---------------------------------------------------------------------------------
@torch.no_grad()
def collapse_metrics(features: torch.Tensor) -> dict[str, float]:
    """Pooled features [N, C] -> mean per-channel std, effective rank (exp of the entropy of the normalised
    singular values of the centred matrix, max min(N-1, C)), fraction of channels with std < 1e-4."""
    f = features.float()
    std = f.std(dim=0)
    s = torch.linalg.svdvals(f - f.mean(dim=0, keepdim=True))
    p = s / s.sum().clamp_min(1e-12)
    eff_rank = float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
    return {"feat_std": float(std.mean()), "feat_eff_rank": eff_rank,
            "feat_dead_frac": float((std < 1e-4).float().mean())}


# -- checkpoints ----------------------------------------------------------------------------------------
def read_checkpoint_config(path: str | Path) -> dict:
    """The config.json of a checkpoint (``{"format", "config", "data", "progress", ...}``)."""
    return read_json(resolve_pretrain_checkpoint(path) / "config.json")


def _encoder_metadata(config: TrainConfig, data: dict, progress: dict) -> dict[str, str]:
    return {"format": CHECKPOINT_FORMAT, "method": config.method, "backbone": config.backbone,
            "timm_kwargs": json.dumps(config.timm_kwargs), "image_size": str(config.image_size),
            "mean": json.dumps(list(config.mean)), "std": json.dumps(list(config.std)),
            "data_fingerprint": data.get("fingerprint", ""), "epoch": str(progress.get("epoch", ""))}


def _save_encoder(encoder_sd: dict, path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in encoder_sd.items()}, str(tmp), metadata=metadata)
    return path


def _save_checkpoint(run_dir: Path, model: nn.Module, optimizer, scaler, config: TrainConfig,
                     data: dict, progress: dict, extra: dict, rng: list[dict], nan_guard: dict) -> Path:
    """Write checkpoint-last atomically (``core.train.checkpoint``) and encoder.safetensors; ``rng``: every
    rank's RNG state (``core.train.rng.gather_rng_states``), ``nan_guard``: the NaN guard's counts."""
    from safetensors.torch import save_file

    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}

    def write(tmp: Path) -> None:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": CHECKPOINT_FORMAT})
        torch.save({"optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "rng": rng, "progress": progress, "nan_guard": nan_guard}, tmp / "optimizer.pt")
        meta = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "data": data, "progress": progress,
                "versions": {"torch": torch.__version__, "timm": _timm_version(), "medssl": _medssl_version()},
                "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}
        (tmp / "config.json").write_text(json.dumps(meta, indent=1))

    final = write_checkpoint_dir(run_dir / CKPT_DIR, write)
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    _save_encoder(enc, run_dir / "encoder.safetensors", _encoder_metadata(config, data, progress))
    return final


def _timm_version() -> str:
    import timm
    return timm.__version__


def _medssl_version() -> str:
    import core
    return core.__version__


def _config_differences(saved: dict, current: TrainConfig, fingerprint: str | None) -> list[str]:
    diffs = []
    cur = current.to_dict()
    was = current_names(saved["config"])
    for k in IDENTITY_KEYS:
        a, b = was.get(k), json.loads(json.dumps(cur[k]))
        if a != b:
            diffs.append(f"{k}: checkpoint {a!r}, now {b!r}")
    if fingerprint is not None and saved["data"].get("fingerprint") != fingerprint:
        diffs.append(f"data: the images differ from the checkpoint's ({saved['data'].get('n_images')} images "
                     f"then, fingerprint {saved['data'].get('fingerprint', '')[:12]}...; now {fingerprint[:12]}...)")
    return diffs


def _check_resumable(ckpt: Path, saved: dict, config: TrainConfig, fingerprint: str | None) -> None:
    diffs = _config_differences(saved, config, fingerprint)
    if diffs:
        raise ValueError(f"cannot resume from {ckpt}: the settings differ from the checkpoint's:\n  "
                         + "\n  ".join(diffs))


def load_checkpoint_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild a checkpoint's model (eval mode) with its weights: (model, config, config.json dict)."""
    ckpt = resolve_pretrain_checkpoint(path)
    meta = read_json(ckpt / "config.json")
    config = TrainConfig.from_dict(meta["config"])
    TRAIN_OPTIONS.check_config(config, ckpt / "config.json")       # before a model of that size is built
    model = get_method(config.method).build(config)
    model.load_state_dict(read_safetensors(ckpt / "model.safetensors"), strict=True)
    return model.to(device).eval(), config, meta


# -- encoder weights for fine-tuning --------------------------------------------------------------------
_IGNORED_PREFIXES = ("head.", "norm_pre.", "classifier.")   # ConvNeXt and EfficientNet heads


def read_encoder_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Encoder weights (timm key names) and metadata from: an ``encoder.safetensors``; a checkpoint or run
    folder of this project; a ``model.safetensors`` with ``encoder.*`` keys; or a timm/PyTorch weights file
    (``.safetensors``, ``.pth``, ``.pt``, ``.bin``; a ``model``/``state_dict`` entry and ``module.`` prefixes
    are unwrapped)."""
    p = Path(path)
    if p.is_dir():
        if (p / "encoder.safetensors").is_file():
            p = p / "encoder.safetensors"
        else:
            p = resolve_pretrain_checkpoint(p) / "model.safetensors"
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    meta: dict[str, str] = {}
    if p.suffix == ".safetensors":
        sd = read_safetensors(p)
        meta = safetensors_metadata(p)
        if p.name == "model.safetensors" and (p.parent / "config.json").is_file():
            cfg = read_json(p.parent / "config.json")
            meta.update({"backbone": cfg["config"]["backbone"], "method": cfg["config"]["method"]})
    else:
        sd = read_torch_file(p)
        for key in ("model", "state_dict", "model_state"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if any(k.startswith("encoder.") for k in sd):
        sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    return sd, meta


def load_encoder_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load pretrained encoder weights into a timm ConvNeXt (e.g. a classifier for fine-tuning).

    Every key of ``model`` except ``head.*``/``norm_pre.*`` must be present with the same shape, and the
    file may hold no other keys besides those: a different backbone or size fails loudly instead of
    loading half the weights. The head keeps its own (fresh) weights. Returns a report
    ``{"loaded": n, "kept": [head keys], "source": path, "metadata": {...}}``.
    """
    sd, meta = read_encoder_state(path)
    target = model.state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith(_IGNORED_PREFIXES)}
    missing = [k for k in target if k not in sd and not k.startswith(_IGNORED_PREFIXES)]
    unexpected = [k for k in sd if k not in target]
    mismatched = [f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}" for k in sd
                  if k in target and sd[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        hint = f" (weights are for backbone {meta['backbone']!r})" if meta.get("backbone") else ""
        parts = [f"{name}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                 for name, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("shape mismatch", mismatched)) if keys]
        raise ValueError(f"{path}: encoder weights do not fit this model{hint}; " + "; ".join(parts))
    model.load_state_dict(sd, strict=False)
    kept = [k for k in target if k.startswith(_IGNORED_PREFIXES)]
    return {"loaded": len(sd), "kept": kept, "source": str(path), "metadata": meta}


def _initialise_encoder(encoder: nn.Module, config: TrainConfig, log) -> None:
    """A fresh run's encoder weights: random (as built), ImageNet's or a pretrained encoder's."""
    if config.init == "imagenet":
        from core.models.weights import load_imagenet_weights

        rep = load_imagenet_weights(encoder, config.backbone, config.init_weights)
        if rep.mean and tuple(rep.mean) != tuple(config.mean) or rep.std and tuple(rep.std) != tuple(config.std):
            raise ValueError(f"the ImageNet weights of {config.backbone} expect mean {rep.mean} and std {rep.std}; "
                             f"the run normalises with mean {config.mean} and std {config.std}")
        log(f"encoder initialised with ImageNet weights from {rep.source.describe()} ({rep.loaded} tensors)")
    elif config.init == "pretrained" or config.init_weights:
        if not config.init_weights:
            raise ValueError("init 'pretrained' needs --init-weights CKPT (a run, checkpoint or encoder file)")
        report = load_encoder_weights(encoder, config.init_weights)
        log(f"encoder initialised from {config.init_weights} ({report['loaded']} tensors)")


def export_encoder(ckpt_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the encoder of a checkpoint as timm-keyed safetensors (default: RUN_DIR/encoder.safetensors)."""
    ckpt = resolve_pretrain_checkpoint(ckpt_dir)
    meta = read_json(ckpt / "config.json")
    sd = read_safetensors(ckpt / "model.safetensors")
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    if not enc:
        raise ValueError(f"{ckpt}: the checkpoint holds no encoder.* weights")
    out = Path(out) if out is not None else ckpt.parent / "encoder.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    return _save_encoder(enc, out, _encoder_metadata(TrainConfig.from_dict(meta["config"]), meta["data"],
                                                     meta["progress"]))


# -- the loop -----------------------------------------------------------------------------------------
@torch.no_grad()
def _probe(model: nn.Module, probe: torch.Tensor, config: TrainConfig, device: torch.device) -> dict[str, float]:
    enc = unwrap(model).encoder
    was_training = enc.training
    enc.eval()
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
    x = (probe.to(device) - mean) / std
    feats = enc.forward_features(x).float().mean(dim=(2, 3))          # [N, C]
    enc.train(was_training)
    return collapse_metrics(feats)


def _probe_batch(dataset, n: int) -> torch.Tensor:
    items = [dataset[i]["image"] for i in range(min(n, len(dataset)))]
    x = torch.stack(items).float()                                     # [N, 1|3, S, S]
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def train(config: TrainConfig, ctx=None, *, resume: str | Path | None = None) -> dict[str, Any]:
    """Train ``config.method`` on ``config.data``; checkpoints in ``config.out``.

    ``resume``: a checkpoint or run folder to continue from (everything restored), or ``"auto"``: continue
    from ``config.out`` when it holds a checkpoint, else start fresh. Without ``resume``, a run folder that
    already holds a checkpoint is refused. Returns ``{"run_dir", "checkpoint", "encoder", "global_step",
    "total_steps", "epochs_done", "step_losses": [(global_step, loss), ...] (this call's steps), ...}``.
    """
    dd = setup_distributed(config.device)
    try:
        run = _setup(config, ctx, resume, dd)
        while run.progress["epoch"] < run.config.epochs and run.stop_reason is None:
            epoch_start = time.perf_counter()
            lr = train_one_epoch(run)
            if run.stop_reason is not None and run.progress["step_in_epoch"] < run.steps_per_epoch:
                break
            _end_of_epoch(run, lr, epoch_start)
        if run.saved_at_step != run.progress["global_step"]:    # stopped between scheduled checkpoints
            run.save()
        p = run.progress
        run.result.update(checkpoint=str(run.run_dir / CKPT_DIR), encoder=str(run.run_dir / "encoder.safetensors"),
                          global_step=p["global_step"], epochs_done=p["epoch"], finished=p["finished"],
                          stop_reason=run.stop_reason)
        return run.result
    finally:
        teardown_distributed(dd)


@dataclass
class _Run:
    """Everything one training call holds between its set-up, its epochs and its end."""
    config: TrainConfig
    method: Any
    ctx: Any
    dd: DistInfo
    run_dir: Path
    dataset: Any
    data: dict
    model: nn.Module                # DDP-wrapped under torchrun
    optimizer: Any
    scaler: Any
    precision: Precision
    guard: NanGuard
    progress: dict
    result: dict
    extra_meta: dict
    probe: torch.Tensor | None
    steps_per_epoch: int
    warmup_steps: int
    saved_at_step: int
    stop_reason: str | None = None
    pace_start: float = field(default_factory=time.perf_counter)
    pace_steps: int = 0
    last_event: float = 0.0

    @property
    def device(self) -> torch.device:
        return self.dd.device

    def log(self, msg: str) -> None:
        if self.ctx is not None:
            self.ctx.log(msg)

    def save(self) -> None:
        rng = gather_rng_states(self.device)        # every rank calls save: each rank's state is kept
        if self.dd.is_main:
            _save_checkpoint(self.run_dir, unwrap(self.model), self.optimizer, self.scaler, self.config, self.data,
                             self.progress, self.extra_meta, rng, self.guard.state_dict())
        barrier()
        self.saved_at_step = self.progress["global_step"]


def _validate(config: TrainConfig, method) -> None:
    TRAIN_OPTIONS.check_config(config)         # the CLI's bounds, also for a config from a project store
    method.check_options(config.options, config)
    if config.image_size % config.cell:
        raise ValueError(f"image size {config.image_size} must be a multiple of {config.cell}")
    if config.accum_steps < 1 or config.epochs < 1 or config.batch_size < 1:
        raise ValueError("epochs, batch size and accumulation steps must be >= 1")
    if config.warmup_epochs > config.epochs:
        raise ValueError(f"warm-up ({config.warmup_epochs} epochs) is longer than the run ({config.epochs})")


def _starting_checkpoint(config: TrainConfig, resume) -> tuple[Path | None, dict | None]:
    """The checkpoint to continue from (and its config.json), refusing to start over an existing run."""
    ckpt: Path | None = None
    if resume == "auto":
        try:
            ckpt = resolve_pretrain_checkpoint(config.out)
        except FileNotFoundError:
            ckpt = None
    elif resume is not None:
        ckpt = resolve_pretrain_checkpoint(resume)
    saved = read_json(ckpt / "config.json") if ckpt is not None else None
    if saved is not None and not config.out:
        config.out = str(ckpt.parent)
    if not config.out:
        raise ValueError("no run folder given (--out)")
    if saved is None:
        try:
            existing = resolve_pretrain_checkpoint(config.out)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            raise ValueError(f"{config.out} already holds a checkpoint; continue it with --resume {config.out} "
                             f"or choose a new --out")
    return ckpt, saved


def _setup(config: TrainConfig, ctx, resume, dd: DistInfo) -> _Run:
    config = TrainConfig.from_dict(config.to_dict())        # private copy
    method = get_method(config.method)
    config.options = {**method.default_options(), **(config.options or {})}
    _validate(config, method)
    log = ctx.log if ctx is not None else (lambda msg: None)
    ckpt, saved = _starting_checkpoint(config, resume)
    run_dir = Path(config.out)

    # -- data (the settings are checked before the scan, the images after it)
    from core.pretrain.data import build_dataset, fingerprint, scan_images, select_files

    if saved is not None:
        _check_resumable(ckpt, saved, config, None)
    records = select_files(scan_images(config.data, ctx).images, config.files, config.data)
    data = {"folder": str(Path(config.data).resolve()), "n_images": len(records),
            "fingerprint": fingerprint([r.content_hash for r in records])}
    if saved is not None:
        _check_resumable(ckpt, saved, config, data["fingerprint"])
    dataset = build_dataset(method.dataset, records, config, ctx)
    n = len(dataset)
    steps_per_epoch = n // config.batch_size // config.accum_steps
    if steps_per_epoch < 1:
        raise ValueError(f"{n} images give no full optimizer step of {config.batch_size} x "
                         f"{config.accum_steps} images; lower --batch-size or --accum-steps")
    if config.batch_size % dd.world_size:
        raise ValueError(f"--batch-size {config.batch_size} must be divisible by the {dd.world_size} processes")
    total_steps = steps_per_epoch * config.epochs

    # -- model, optimizer
    device = dd.device
    precision = resolve_precision(config.precision, device)
    configure_cuda_math(config.precision, device)
    seed_everything(config.seed)
    model = method.build(config)
    if saved is None:
        _initialise_encoder(unwrap(model).encoder, config, log)
    model.to(device)
    optimizer = method.build_optimizer(param_groups(model, config.weight_decay), config)
    scaler = make_grad_scaler(precision, device)

    guard = NanGuard(config.max_nan_skips, device=device,
                     hint=f"lower --lr, or resume from the last good checkpoint in {run_dir}")
    progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "total_steps": total_steps,
                "steps_per_epoch": steps_per_epoch, "finished": False, "epoch_sums": {}, "epoch_count": 0,
                "skipped_steps": 0}
    if saved is not None:
        model.load_state_dict(read_safetensors(ckpt / "model.safetensors", device), strict=True)
        state = read_torch_file(ckpt / "optimizer.pt")
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"], dd.rank, device)
        guard.load_state_dict(state.get("nan_guard", {}))
        progress.update(state["progress"])
        log(f"resuming from {ckpt} at epoch {progress['epoch']}, step {progress['global_step']}/{total_steps}")
    if dd.is_main:      # lines a kill left after the last checkpoint (all of them when it came before the first)
        trim_epoch_log(run_dir / "log.jsonl", progress["epoch"])
    if dd.enabled:
        import warnings
        from torch.nn.parallel import DistributedDataParallel as DDP
        # Depthwise conv weights [C, 1, k, k] get grads with another (equivalent) stride for the size-1
        # dim; DDP warns once per process about it. Harmless: it only concerns a copy into the bucket.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    result: dict[str, Any] = {"run_dir": str(run_dir), "step_losses": [], "total_steps": total_steps,
                              "steps_per_epoch": steps_per_epoch, "n_images": n,
                              "resumed_from": str(ckpt) if ckpt else None}
    extra_meta = {"world_size": dd.world_size, "device": str(device), "precision": precision.name}
    if config.init_weights:
        extra_meta["init_weights"] = str(config.init_weights)
    if progress["finished"]:
        log(f"{run_dir}: training already finished ({total_steps} steps)")
    probe = _probe_batch(dataset, config.probe_size) if dd.is_main and config.probe_size > 0 else None
    return _Run(config, method, ctx, dd, run_dir, dataset, data, model, optimizer, scaler, precision, guard,
                progress, result, extra_meta, probe, steps_per_epoch,
                warmup_steps=int(round(config.warmup_epochs * steps_per_epoch)),
                saved_at_step=progress["global_step"] if saved is not None else -1)


def train_one_epoch(run: _Run) -> float:
    """Optimizer steps until the epoch ends (or a cancel / --max-steps stop); returns the last lr."""
    from core.pretrain.data import EpochBatchSampler, make_loader

    config, progress, dd, device, model = run.config, run.progress, run.dd, run.device, run.model
    epoch, total_steps = progress["epoch"], progress["total_steps"]
    sampler = EpochBatchSampler(len(run.dataset), config.batch_size, rank=dd.rank, world_size=dd.world_size,
                                seed=config.seed, epoch=epoch, start=progress["step_in_epoch"] * config.accum_steps)
    batches = iter(make_loader(run.dataset, sampler, workers=config.num_workers, pin_memory=device.type == "cuda"))
    params = [p for p in model.parameters() if p.requires_grad]
    images_per_step = config.batch_size * config.accum_steps
    lr = run.optimizer.param_groups[0]["lr"]
    model.train()
    while progress["step_in_epoch"] < run.steps_per_epoch:
        step_start = time.perf_counter()
        g = progress["global_step"]
        lr = lr_at(g, lr=config.lr, min_lr=config.min_lr, warmup_steps=run.warmup_steps, total_steps=total_steps)
        set_lr(run.optimizer, lr)
        run.optimizer.zero_grad(set_to_none=True)
        step_loss, metric_sums, grad_norm, cancel = _accumulate(run, batches, params, epoch, g)
        ok = run.guard.step_ok(grad_norm, step_loss, where=f"step {g}")
        if run.scaler is not None:
            run.scaler.step(run.optimizer)      # skips by itself when gradients are inf/NaN
            run.scaler.update()
        elif ok:
            run.optimizer.step()
        if ok:
            sums = progress["epoch_sums"]
            for k, v in {"loss": step_loss, "grad_norm": grad_norm, **metric_sums}.items():
                sums[k] = sums.get(k, 0.0) + v
            progress["epoch_count"] += 1
        else:
            progress["skipped_steps"] += 1
            run.optimizer.zero_grad(set_to_none=True)
            run.log(f"step {g}: non-finite loss/gradient (loss {step_loss}, grad norm {grad_norm}); step skipped")
        progress["global_step"] += 1
        progress["step_in_epoch"] += 1
        run.pace_steps += 1
        run.result["step_losses"].append((g, step_loss))
        now = time.perf_counter()
        if run.ctx is not None and (now - run.last_event > 0.25 or progress["step_in_epoch"] == run.steps_per_epoch):
            run.last_event = now
            per_step = (now - run.pace_start) / run.pace_steps
            run.ctx.progress(progress["global_step"], total_steps, message=f"epoch {epoch + 1}/{config.epochs}",
                             phase="training", epoch=epoch + 1, loss=step_loss, lr=lr,
                             images_per_s=images_per_step / max(now - step_start, 1e-9),
                             eta_s=per_step * (total_steps - progress["global_step"]))
        if cancel:
            run.save()
            run.log(f"cancelled at step {progress['global_step']}; checkpoint saved in {run.run_dir / CKPT_DIR}")
            run.ctx.check_cancelled()
            run.stop_reason = "cancelled"   # cancel requested on another rank
            break
        if config.max_steps is not None and progress["global_step"] >= config.max_steps:
            run.stop_reason = "max_steps"
            break
        if config.checkpoint_steps and progress["global_step"] % config.checkpoint_steps == 0 \
                and progress["step_in_epoch"] < run.steps_per_epoch:
            run.save()
    return lr


def _accumulate(run: _Run, batches, params, epoch: int, g: int) -> tuple[float, dict[str, float], float, bool]:
    """The micro-steps of one optimizer step: (mean loss, mean metrics, gradient norm, any rank cancelled);
    loss, metrics and cancel are averaged over ranks in one all-reduce."""
    config, dd, device, model = run.config, run.dd, run.device, run.model
    step_ctx = StepContext(epoch=epoch, global_step=g, total_steps=run.progress["total_steps"], seed=config.seed,
                           device=device, autocast_dtype=run.precision.dtype, rank=dd.rank,
                           world_size=dd.world_size, options=config.options)
    loss_sum = torch.zeros((), dtype=torch.float64)
    metric_sums: dict[str, float] = {}
    for micro in range(config.accum_steps):
        batch = next(batches)
        sync = micro == config.accum_steps - 1
        with (model.no_sync() if dd.enabled and not sync else contextlib.nullcontext()):
            loss, metrics = run.method.loss(model, batch, step_ctx)
            scaled = loss / config.accum_steps
            (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        loss_sum += loss.detach().double().cpu() / config.accum_steps
        for k, v in metrics.items():
            metric_sums[k] = metric_sums.get(k, 0.0) + float(v) / config.accum_steps
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    max_norm = config.grad_clip if config.grad_clip and config.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    cancel = bool(run.ctx is not None and run.ctx.cancel_requested)
    step_loss = float(loss_sum)
    if dd.enabled:
        import torch.distributed as dist
        keys = sorted(metric_sums)
        t = torch.tensor([step_loss, float(cancel)] + [metric_sums[k] for k in keys],
                         dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        t = t.cpu() / dd.world_size
        step_loss, cancel = float(t[0]), bool(t[1] > 0)
        metric_sums = {k: float(v) for k, v in zip(keys, t[2:])}
    return step_loss, metric_sums, grad_norm, cancel


def _end_of_epoch(run: _Run, lr: float, epoch_start: float) -> None:
    """The epoch's log line (log.jsonl + epoch-end event), then the scheduled checkpoint."""
    config, progress = run.config, run.progress
    epoch = progress["epoch"]
    sums, count = progress["epoch_sums"], max(1, progress["epoch_count"])
    elapsed = time.perf_counter() - epoch_start
    line = {"epoch": epoch + 1, "epochs": config.epochs, "global_step": progress["global_step"],
            **{k: v / count for k, v in sums.items()},
            "lr": lr, "skipped_steps": progress["skipped_steps"],
            "epoch_time_s": round(elapsed, 3),
            "images_per_s": round(config.batch_size * config.accum_steps * progress["step_in_epoch"] /
                                  max(1e-9, elapsed), 3)}
    if run.probe is not None:
        line.update(_probe(run.model, run.probe, config, run.device))
    progress.update(epoch=epoch + 1, step_in_epoch=0, epoch_sums={}, epoch_count=0)
    progress["finished"] = progress["epoch"] >= config.epochs
    if run.dd.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        with open(run.run_dir / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
        run.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()))
        if run.ctx is not None:
            run.ctx.epoch_end(epoch + 1, config.epochs, line)
    run.result.setdefault("epoch_logs", []).append(line)
    if progress["finished"] or (epoch + 1) % max(1, config.checkpoint_epochs) == 0:
        run.save()


def make_job(config: TrainConfig, *, resume: str | Path | None = None, state_dir: str | Path | None = None):
    """A ``core.jobs.Job`` that trains ``config`` (state_dir defaults to the run folder)."""
    from core.jobs import Job

    return Job(f"pretrain {config.method}", lambda ctx: train(config, ctx, resume=resume),
               state_dir=state_dir if state_dir is not None else config.out)
