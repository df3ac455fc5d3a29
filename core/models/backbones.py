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
