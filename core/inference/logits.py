"""The one inference loop (a model over batches, device / precision / memory format decided once), the
softmax, and the logits CSV files beside a fine-tuning run.

Fine-tune evaluation (:func:`predict_logits`), ensemble evaluation (member logits) and batch prediction
(the ensemble module) all run their models through :class:`Inference`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from core.atomic import atomic_path
from core import csvcells
from core.csvcells import unescape_cell

if TYPE_CHECKING:
    from core.train.data import Sample

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_autocast(device: torch.device, precision: str | torch.dtype | None) -> torch.dtype | None:
    """``auto`` = bf16/fp16 only where the hardware does it natively; ``fp32``/None = no autocast."""
    from core.train.precision import autocast_dtype

    if isinstance(precision, torch.dtype):
        return precision
    if precision in (None, "fp32"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return autocast_dtype(device)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def to_unit_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> float32 in [0, 1], exactly as torchvision's ToTensor (x / 255)."""
    return torch.from_numpy(batch_u8.numpy().astype(np.float32) / np.float32(255.0))


class Inference:
    """A model in eval mode on one device, with the autocast dtype and memory format chosen once.

    Calling it on a batch [B, 3, S, S] (float, or uint8 read as x / 255) returns the model's output(s) as
    float32 numpy arrays (a tuple when the model returns a tuple). With ``check_tol``, the first batch
    runs in fp32 too and autocast is dropped for good when any output moves by more than ``check_tol``
    (a low-precision path must not change a diagnosis)."""

    def __init__(self, model: nn.Module, device: torch.device | str, *, precision: str | torch.dtype | None = "fp32",
                 channels_last: bool | None = None, check_tol: float | None = None,
                 log: Callable[[str], None] | None = None):
        self.device = torch.device(device)
        self.amp = resolve_autocast(self.device, precision)
        self.channels_last = self.device.type == "cuda" if channels_last is None else bool(channels_last)
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.check_tol = check_tol
        self.checked = self.amp is None or check_tol is None
        self.log = log or (lambda _msg: None)
        self.max_diff_vs_fp32: float | None = None

    @property
    def precision(self) -> str:
        return "fp32" if self.amp is None else str(self.amp).replace("torch.", "")

    def _forward(self, x: torch.Tensor, amp: torch.dtype | None) -> tuple[torch.Tensor, ...]:
        with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            out = self.model(x)
        return tuple(o.float() for o in out) if isinstance(out, (tuple, list)) else (out.float(),)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> np.ndarray | tuple[np.ndarray, ...]:
        if x.dtype == torch.uint8:
            x = to_unit_float(x)
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.checked:
            out = self._forward(x, self.amp)
        else:
            ref, low = self._forward(x, None), self._forward(x, self.amp)
            diff = max(float((r - lo).abs().max()) for r, lo in zip(ref, low)) if ref[0].numel() else 0.0
            self.max_diff_vs_fp32, self.checked = diff, True
            if diff > self.check_tol:
                self.log(f"{self.amp} changes the outputs by up to {diff:.4f} (> {self.check_tol}): using fp32")
                self.amp, out = None, ref
            else:
                self.log(f"{self.amp} autocast: max output change vs fp32 {diff:.2e} on the first batch")
                out = low
        arrays = tuple(o.cpu().numpy() for o in out)
        return arrays if len(arrays) > 1 else arrays[0]

    def over(self, batches: Iterable[torch.Tensor]) -> Iterator[np.ndarray | tuple[np.ndarray, ...]]:
        for x in batches:
            yield self(x)


def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device,
                   amp: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C] float32, labels [N]) in dataset order; the loader yields (x, y, _)."""
    run = Inference(model, device, precision=amp, channels_last=False)
    outs, ys = [], []
    for x, y, _ in loader:
        outs.append(run(x))
        ys.append(torch.as_tensor(y).numpy())
    if not outs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(outs), np.concatenate(ys)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis of logits / temperature (float64: calibration compares small NLL gaps)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def write_logits(path: Path, samples: Sequence["Sample"], logits: np.ndarray, classes: Sequence[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csvcells.writer(fh)
        w.writerow(["rel_path", "label"] + [f"logit_{c}" for c in classes])
        for s, row in zip(samples, logits):
            w.writerow([s.rel_path, s.label] + [f"{v:.7g}" for v in row])


def read_logits(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    body = rows[1:]
    return ([unescape_cell(r[0]) for r in body], [unescape_cell(r[1]) for r in body],
            np.asarray([[float(v) for v in r[2:]] for r in body], dtype=np.float32).reshape(len(body), -1))

