"""Backbones from timm, built offline.

Nothing here downloads: ``pretrained`` weights come from a local file (see ``core.models.weights`` for
ImageNet files and Hugging Face caches) or from a checkpoint of this project. Tiny variants for tests
and CPU runs are plain timm models with overridden depths/dims.
"""

from __future__ import annotations

import timm
import torch

# Tiny ConvNeXt for tests: same code path as convnext_tiny, a few thousand parameters, total stride 32.
TINY_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))


def create_backbone(name: str, *, num_classes: int = 0, in_chans: int = 3, tiny: bool = False,
                    **timm_kwargs) -> torch.nn.Module:
    """A timm model with random init; weights are loaded afterwards from local files only."""
    if tiny:
        timm_kwargs = {**TINY_CONVNEXT, **timm_kwargs}
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                             **timm_kwargs)


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_native_bf16() -> bool:
    """bf16 matmul on a CPU without AVX512-BF16/AMX is ~100x slower than fp32: only use it when native."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA (and on CPUs with native bf16); None means plain fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None
