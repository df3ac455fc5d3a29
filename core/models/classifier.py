"""The fine-tuned classifier: built from a config with its initial weights (ImageNet, a pretraining run
or another classifier, or random), its checkpoint folder format and loading it back.

Checkpoint ``config.json`` holds everything needed to rebuild the model (:func:`load_classifier`):
backbone name, timm kwargs, classes, image size, normalisation, interpolation, init source.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from core.models.backbones import create_backbone
from core.models.tta import TTA_CHOICES, with_tta
from core.models.weights import read_safetensors, safetensors_metadata
from core.train.checkpoint import read_json, resolve_classifier_checkpoint, write_checkpoint_dir
from core.train.config import FinetuneConfig
from core.train.distributed import unwrap

CKPT_FORMAT = "medssl-classifier"
MAX_IMAGE_SIZE = 4096        # a classifier's input side; larger would allocate gigabytes per image
CKPT_VERSION = 1
INIT_CHOICES = ("imagenet", "pretrained", "random")

__all__ = ["build_classifier", "load_classifier", "save_classifier_checkpoint", "pretrained_metadata",
           "load_matching_weights", "CKPT_FORMAT", "CKPT_VERSION", "INIT_CHOICES"]


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
    if cfg.get("tta", "none") not in TTA_CHOICES:
        raise ValueError(f"{where}: config.json tta must be one of {', '.join(TTA_CHOICES)}, got {cfg['tta']!r}")
    size = cfg["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"{where}: config.json image_size must be a whole number of pixels from 8 to "
                         f"{MAX_IMAGE_SIZE}, got {size!r}")
    for key, lowest in (("mean", -math.inf), ("std", 0.0)):
        values = cfg[key]
        if (not isinstance(values, list) or len(values) != 3
                or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > lowest for v in values)):
            raise ValueError(f"{where}: config.json {key} must be 3 finite numbers"
                             f"{' > 0' if lowest == 0 else ''}, got {values!r}")


def load_classifier(ckpt: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a fine-tuned classifier from its checkpoint folder (or run folder); eval mode."""
    ckpt = resolve_classifier_checkpoint(ckpt)
    cfg = read_json(ckpt / "config.json")
    _check_config(cfg, ckpt)
    model = create_backbone(cfg["backbone"], num_classes=int(cfg["num_classes"]),
                            in_chans=int(cfg.get("in_chans", 3)), **cfg["timm_kwargs"])
    sd = read_safetensors(ckpt / "model.safetensors")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{ckpt}: weights do not match the model described by config.json ({exc})") from None
    cfg["checkpoint"] = str(ckpt)
    return with_tta(model, cfg.get("tta", "none")).eval().to(device), cfg


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
    from core.pretrain.config import current_names
    from core.train.checkpoint import PRETRAIN_DIR, find_checkpoint_dir

    p = Path(path)
    if p.is_dir():
        last = find_checkpoint_dir(p / PRETRAIN_DIR)      # also what a kill between two renames left
        cands = [p / "config.json"] + ([last / "config.json"] if last is not None else [])
    else:
        cands = [p.parent / "config.json"]
    meta: dict[str, Any] = {}
    enc = p / "encoder.safetensors" if p.is_dir() else p
    if enc.is_file() and enc.suffix == ".safetensors":
        for k, v in current_names(safetensors_metadata(enc)).items():
            try:
                meta[k] = json.loads(v) if k in ("timm_kwargs", "mean", "std", "image_size") else v
            except ValueError:
                meta[k] = v
    for c in cands:
        if c.is_file() and not meta.get("backbone"):
            try:
                cfg = read_json(c)
            except ValueError:
                continue
            inner = current_names(cfg.get("config", cfg))
            for k in ("method", "backbone", "timm_kwargs", "image_size", "mean", "std"):
                if k in inner:
                    meta[k] = inner[k]
    return meta


def _load_pretrained_init(model: nn.Module, path: Path) -> dict:
    """Weights from a checkpoint of this project: a pretraining run / checkpoint / ``encoder.safetensors``
    (``core.pretrain.trainer.load_encoder_weights``: strict except the head), or a fine-tuned classifier of this
    project (its backbone; the head too when the class count matches)."""
    info: dict[str, Any] = {"path": str(path)}
    try:
        cls_ckpt = resolve_classifier_checkpoint(path)
        cls_cfg = read_json(cls_ckpt / "config.json")
    except (FileNotFoundError, ValueError):
        cls_cfg = None
    if cls_cfg is not None and cls_cfg.get("format") == CKPT_FORMAT:
        info.update({"kind": "classifier", "file": str(cls_ckpt / "model.safetensors"),
                     "mean": cls_cfg["mean"], "std": cls_cfg["std"]})
        info.update(load_matching_weights(model, read_safetensors(info["file"]), info["file"]))
        return info
    from core.pretrain.trainer import load_encoder_weights

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
        "init": init, "tta": cfg.tta,
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


def save_classifier_checkpoint(dirpath: Path, model: nn.Module, ckpt_cfg: dict, state: dict | None = None) -> None:
    """A classifier checkpoint folder (model.safetensors, config.json, optimizer.pt = resume state), atomically."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}

    def write(tmp: Path) -> None:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(ckpt_cfg, indent=1))
        if state is not None:
            torch.save(state, tmp / "optimizer.pt")

    write_checkpoint_dir(dirpath, write)


