"""Test-time augmentation that travels with a classifier checkpoint (``config.json`` key ``tta``).

``hflip``: the logits of the image and of its mirror image, averaged. Fine-tuning trains with horizontal
flips, so both views are ones the model knows; on the BUSI study's own checkpoints the average raised every
member's test accuracy by 1.4-2.3 points and its ROC AUC by ~0.008 (docs/results/busi-study.md), for twice
the inference cost. Logits (not probabilities) are averaged so that one temperature still calibrates them,
and every path (fine-tuning's evaluation, ``medssl ensemble``, ``medssl predict``, the window) sees the same
numbers: the wrapper is applied where a checkpoint is loaded (:func:`core.models.classifier.load_classifier`).
"""

from __future__ import annotations

import torch
from torch import nn

TTA_CHOICES = ("none", "hflip")


class HorizontalFlipAverage(nn.Module):
    """``model``'s logits averaged over the image and its mirror. Grad-CAM's ``forward_features`` /
    ``forward_head`` pass through: a heat map explains the image as shown, not its mirror."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        return (self.model(x_bchw) + self.model(torch.flip(x_bchw, dims=(-1,)))) / 2

    def forward_features(self, x_bchw: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x_bchw)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(feats)


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """``model`` as it is evaluated and used for prediction under the checkpoint's ``tta`` setting."""
    if tta == "none":
        return model
    if tta == "hflip":
        return HorizontalFlipAverage(model)
    raise ValueError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA_CHOICES)}")
