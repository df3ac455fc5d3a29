"""Logits of a classifier over a data loader, and their CSV files beside a fine-tuning run."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from core.train.data import Sample


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device,
                   amp: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C] float32, labels [N]) in dataset order."""
    model.eval()
    outs, ys = [], []
    for x, y, _ in loader:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(x)
        outs.append(out.float().cpu())
        ys.append(torch.as_tensor(y))
    if not outs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return torch.cat(outs).numpy(), torch.cat(ys).numpy()


def softmax_np(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def write_logits(path: Path, samples: Sequence["Sample"], logits: np.ndarray, classes: Sequence[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["rel_path", "label"] + [f"logit_{c}" for c in classes])
        for s, row in zip(samples, logits):
            w.writerow([s.rel_path, s.label] + [f"{v:.7g}" for v in row])
    tmp.replace(path)


def read_logits(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    body = rows[1:]
    return ([r[0] for r in body], [r[1] for r in body],
            np.asarray([[float(v) for v in r[2:]] for r in body], dtype=np.float32).reshape(len(body), -1))


# -------------------------------------------------------------------------------------------- checkpoints
