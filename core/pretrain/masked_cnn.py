"""Masked dense convolution for a timm EfficientNet(-Lite) encoder: the MAE's second encoder family, so that a
CPU-budget MAE can start from ImageNet weights (the ConvNeXt path is ``core.pretrain.mae.masked_features``).

Shapes as in ``core.pretrain.mae``: x [B, 3, S, S], mask [B, h, w] bool (True = hidden), keep = ~mask.

Hidden cells are holes, as in SparK: the input of every spatial convolution (kernel > 1: the stem and the
depthwise convolutions) is zeroed at hidden positions by a forward pre-hook, so a visible position sees exactly
what a sparse convolution over the visible cells would see. 1x1 convolutions, activations and residual sums
act per position, and every block's output is re-zeroed so the stage features handed to the decoder are holes.
BatchNorm is the one layer that mixes positions (its batch statistics): the MAE keeps an EfficientNet's
BatchNorm layers in eval mode, their running statistics frozen at the initial (ImageNet) values and their affine
parameters trained (SparK computes sparse batch statistics instead; frozen statistics keep the ImageNet
features intact for a short domain-adaptive pretraining). Squeeze-excitation pools over every position, so an
encoder with SE is refused (EfficientNet-Lite has none).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

STAGE_STRIDES = (4, 8, 16, 32)


def is_block_cnn(encoder: nn.Module) -> bool:
    """A timm EfficientNet-family encoder (``conv_stem`` + ``blocks``), as opposed to a ConvNeXt (``stages``)."""
    return hasattr(encoder, "conv_stem") and hasattr(encoder, "blocks")


def stage_ends(encoder: nn.Module) -> dict[str, int]:
    """Module name of the last block sequence at each stride 4, 8, 16, 32 -> its position in the features."""
    ends = {f["module"]: f["reduction"] for f in encoder.feature_info if f["reduction"] in STAGE_STRIDES}
    if sorted(ends.values()) != list(STAGE_STRIDES):
        raise ValueError(f"the MAE needs stage outputs at strides {STAGE_STRIDES}, "
                         f"got {sorted(ends.values())}")
    return {name: STAGE_STRIDES.index(r) for name, r in ends.items()}


def check_maskable(encoder: nn.Module) -> None:
    """Refuse encoders with a layer that mixes hidden and visible positions other than BatchNorm."""
    for name, mod in encoder.named_modules():
        se = getattr(mod, "se", None)
        if se is not None and not isinstance(se, nn.Identity):
            raise ValueError(f"the MAE cannot mask {type(encoder).__name__}: {name}.se (squeeze-excitation) "
                             f"pools over hidden cells; use an EfficientNet-Lite or a ConvNeXt")
    stage_ends(encoder)


def freeze_batchnorm_statistics(encoder: nn.Module) -> None:
    """BatchNorm layers to eval mode (running statistics used and not updated; affine parameters still train)."""
    for mod in encoder.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.eval()


def masked_block_features(encoder: nn.Module, x: torch.Tensor, keep_like: Callable[[torch.Tensor], torch.Tensor]
                          | None) -> list[torch.Tensor]:
    """The 4 stage outputs [B, C_i, S / s_i, S / s_i] (s_i = 4, 8, 16, 32) of a timm EfficientNet encoder;
    ``keep_like(t)`` gives keep [B, 1, H, W] at t's resolution and dtype (None: the plain dense forward)."""
    ends = stage_ends(encoder)
    hooks = []
    if keep_like is not None:
        def zero_hidden(_mod, args):
            return (args[0] * keep_like(args[0]),) + tuple(args[1:])

        hooks = [m.register_forward_pre_hook(zero_hidden) for m in encoder.modules()
                 if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1]
    try:
        y = encoder.bn1(encoder.conv_stem(x))                         # [B, C, S/2, S/2]
        feats: list[torch.Tensor | None] = [None] * len(STAGE_STRIDES)
        for i, stage in enumerate(encoder.blocks):
            for block in stage:
                y = block(y)
                if keep_like is not None:
                    y = y * keep_like(y)
            if f"blocks.{i}" in ends:
                feats[ends[f"blocks.{i}"]] = y
        return feats
    finally:
        for h in hooks:
            h.remove()
