"""How long a training run will take, said before it starts (the dialogs show it under their settings).

From what this machine measured: the throughput (images/s) the project's earlier runs recorded
(:func:`project_throughputs`: a fine-tuning run's images × epochs / training time, a pretraining run's
median images/s over its epoch log), or a short probe (:func:`probe_throughput`: a few training steps of
the backbone). A measurement at another image size or backbone is scaled by image size² and by the
backbones' compute per image (:data:`BACKBONE_GFLOPS`); it is only used on the same kind of device (a
CPU's speed says nothing about a GPU's). The estimate says which measurement it came from and how it was
scaled, because it can be off by a factor when the machine is busy.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Sequence

#: compute per image at 224 px (GFLOPs, timm's model cards): the ratio scales a throughput to another backbone
BACKBONE_GFLOPS = {
    "convnext_atto": 0.55, "convnext_femto": 0.79, "convnext_pico": 1.37, "convnext_nano": 2.46,
    "convnext_tiny": 4.47, "convnext_small": 8.71, "convnextv2_atto": 0.55, "convnextv2_femto": 0.78,
    "convnextv2_pico": 1.37, "convnextv2_nano": 2.46, "convnextv2_tiny": 4.47, "efficientnet_lite0": 0.40,
    "resnet18": 1.82, "resnet50": 4.11,
}


@dataclass(frozen=True)
class Throughput:
    """Training images per second measured at one setting."""
    images_per_s: float
    kind: str                # "finetune" | "pretrain" | "probe"
    backbone: str
    tiny: bool               # the tests' tiny model (not comparable with real backbones)
    image_size: int
    device_type: str         # "cpu" | "cuda"
    source: str              # "run #3 classifier", "a probe of 3 steps"


@dataclass(frozen=True)
class TimeEstimate:
    seconds: float
    images_per_s: float
    basis: str               # where the speed came from and how it was scaled

    def text(self) -> str:
        return f"about {format_duration(self.seconds)} at ≈ {self.images_per_s:.3g} images/s ({self.basis})"


def format_duration(seconds: float | None, with_seconds: bool = False) -> str:
    """A duration as people read it: "42 s", "10 min", "3 h 05 min", "1.5 days"; ``with_seconds`` keeps the
    seconds under an hour ("4 min 07 s": a live ETA that visibly counts down). Unknown: "–"."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s" if with_seconds else f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s / 86400:.1f} days"


def device_type(device: str | None, cuda_available: bool) -> str:
    """What a device setting runs on ("" or None = automatic: CUDA when there is one)."""
    if device:
        return "cuda" if str(device).startswith("cuda") else "cpu"
    return "cuda" if cuda_available else "cpu"


def run_throughput(run, cuda_available: bool) -> Throughput | None:
    """The training speed a finished fine-tuning or pretraining run (``core.project.runs.Run``) recorded."""
    from core.project.runs import read_history

    cfg, m = run.config or {}, run.metrics or {}
    if run.kind == "finetune":
        n, epochs, seconds = m.get("n_train"), m.get("epochs_run"), m.get("train_time_s")
        if not (n and epochs and seconds):
            return None
        ips = float(n) * float(epochs) / float(seconds)
        tiny = bool(cfg.get("tiny") or cfg.get("timm_kwargs"))
    elif run.kind == "pretrain":
        rates = [row["images_per_s"] for row in read_history("pretrain", run.run_dir)
                 if isinstance(row.get("images_per_s"), (int, float)) and row["images_per_s"] > 0]
        if not rates:
            return None
        ips = float(statistics.median(rates))
        tiny = bool(cfg.get("timm_kwargs"))
    else:
        return None
    if ips <= 0 or not cfg.get("image_size") or not cfg.get("backbone"):
        return None
    return Throughput(ips, run.kind, str(cfg["backbone"]), tiny, int(cfg["image_size"]),
                      device_type(cfg.get("device"), cuda_available), f"run #{run.id} {run.name}")


def project_throughputs(store, cuda_available: bool) -> list[Throughput]:
    """Every training speed the project's runs recorded, newest first (reads run folders: off the UI thread)."""
    out = []
    for run in reversed(store.list_runs()):
        if run.kind in ("finetune", "pretrain"):
            t = run_throughput(run, cuda_available)
            if t is not None:
                out.append(t)
    return out


def _scale(t: Throughput, backbone: str, tiny: bool, image_size: int) -> tuple[float, str] | None:
    """``t``'s throughput at another setting, and how it was scaled; None when it cannot be compared."""
    if t.tiny != tiny:
        return None
    if t.backbone == backbone:
        ratio, how = 1.0, ""
    elif not tiny and t.backbone in BACKBONE_GFLOPS and backbone in BACKBONE_GFLOPS:
        ratio, how = BACKBONE_GFLOPS[t.backbone] / BACKBONE_GFLOPS[backbone], "backbone compute"
    else:
        return None
    if t.image_size != image_size:
        ratio *= (t.image_size / image_size) ** 2
        how = "image size²" + (f" and {how}" if how else "")
    return t.images_per_s * ratio, how


def estimate_time(kind: str, *, backbone: str, tiny: bool, image_size: int, epochs: int, n_images: int,
                  device_type: str, measured: Sequence[Throughput]) -> TimeEstimate | None:
    """Seconds for ``epochs`` over ``n_images`` training images, from the first usable measurement: the same
    kind of run before another kind (a probe counts as any kind), newest first, on the same kind of device."""
    usable = [t for t in measured if t.device_type == device_type]
    usable.sort(key=lambda t: t.kind not in (kind, "probe"))       # stable: newest first within each group
    for t in usable:
        scaled = _scale(t, backbone, tiny, image_size)
        if scaled is None:
            continue
        ips, how = scaled
        basis = (f"measured by {t.source}: {t.backbone} at {t.image_size} px, {t.images_per_s:.3g} images/s on "
                 f"{t.device_type.upper()}" + (f", scaled by {how}" if how else ""))
        return TimeEstimate(epochs * n_images / ips, ips, basis)
    return None


def probe_throughput(backbone: str, *, tiny: bool, image_size: int, batch_size: int = 8, device: str | None = None,
                     steps: int = 3, num_classes: int = 2) -> Throughput:
    """Time ``steps`` training steps (forward, backward, SGD update) of the backbone on random images, after
    one warm-up step; at most 8 images a step so the probe takes seconds. Run it off the UI thread."""
    import torch

    from core.models.backbones import create_backbone
    from core.train.distributed import pick_device

    dev = pick_device(device)
    model = create_backbone(backbone, num_classes=num_classes, tiny=tiny).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    n = max(1, min(batch_size, 8))
    x = torch.randn(n, 3, image_size, image_size, device=dev)
    y = torch.zeros(n, dtype=torch.long, device=dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    ips = n * steps / max(time.perf_counter() - t0, 1e-9)
    return Throughput(ips, "probe", backbone, tiny, image_size, dev.type, f"a probe of {steps} steps of {n} images")
