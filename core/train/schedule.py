"""The learning-rate schedule and the optimizer's parameter groups, shared by fine-tuning and pretraining."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` then half-cosine from ``lr`` to ``min_lr`` at ``total_steps``
    (per optimizer step, as in MAE)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group gets ``lr`` times its layer-decay scale (``lr_scale``, 1 without layer decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * float(group.get("lr_scale", 1.0))


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameters that weight decay would only shrink towards zero for nothing: norms and biases (1-d),
    layer scales (``.gamma``), mask tokens, and what the model lists in ``no_weight_decay()``."""
    listed = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {name for name, p in model.named_parameters()
            if p.ndim <= 1 or name.endswith((".bias", ".gamma")) or "mask_token" in name or name in listed}


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW groups: decay / no decay; with ``layer_decay`` < 1, timm's layer groups (layer i of depth d
    gets ``lr_scale = layer_decay ** (d - i)``: the pretrained stem moves least)."""
    skip = no_weight_decay_names(model)
    if layer_decay and layer_decay < 1.0:
        from timm.optim import param_groups_layer_decay

        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
