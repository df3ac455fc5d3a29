"""Batch prediction benchmark: the fast path end to end vs the plain way, on the same weights and files.

Ensemble: two ConvNeXt-Tiny members at 224 px (3 classes). No ConvNeXt ImageNet weights exist on these
machines, so the members are randomly initialised with their heads scaled up so that their probabilities
are far from uniform (otherwise a probability difference would be trivially small); the two members get
different seeds and temperatures. Files: PNGs copied from BUSI (real ultrasound, ~600 x 500 px grey), or
phantom PNGs when BUSI is absent.

* plain: for each file, PIL open + timm eval transform (``timm.data.create_transform``, squash resize,
  bicubic) + eager fp32 forward of each member at batch 1 (``torch.no_grad``) + softmax(logits / T) averaged.
* fast: ``core.inference.predict.predict_folder`` end to end (list folder, decode in DataLoader workers, batched
  inference, entropy/JS, CSV written and fsynced per batch), with the backend ``auto`` picks (ONNX
  Runtime on a CPU; its one-time export is timed separately as ``onnx_export_s``). The torch backend's
  end-to-end number is reported too.
* fraction_of_peak = (fast images/s x model FLOPs per image, counted by torch's FlopCounterMode, 2 per
  multiply-add) / the best fp32 matmul rate (2048^2 sgemm, same threads) measured in the same run.
* Every number is the best of ``--rounds`` rounds (plain, fast and matmul peak interleaved): on a shared
  CPU a single run measures the neighbours' jobs as much as ours.

Prints one JSON object as its last line. Run under ``flock /tmp/medssl-cpu.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.inference.ensemble import create_spec, load_ensemble  # noqa: E402
from core.models.classifier import build_classifier, save_classifier_checkpoint  # noqa: E402
from core.train.config import FinetuneConfig
from core.inference.predict import (CPU_BATCH_SIZE, cached_onnx_path, export_onnx, list_images,  # noqa: E402
                          predict_folder)

CLASSES = ["benign", "malignant", "normal"]


def matmul_peak(n: int = 2048, reps: int = 5, rounds: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, reps * 2 * n ** 3 / (time.perf_counter() - t))
    return best


def make_members(work: Path, backbone: str, size: int) -> Path:
    for i, (name, temp) in enumerate((("A", 1.3), ("B", 0.9))):
        torch.manual_seed(100 + i)
        cfg = FinetuneConfig(backbone=backbone, init="random", image_size=size, drop_path=0.0)
        model, ccfg = build_classifier(cfg, CLASSES, lambda m: None)
        with torch.no_grad():
            model.get_classifier().weight.mul_(40.0)   # peaky probabilities: a meaningful diff test
        save_classifier_checkpoint(work / name / "checkpoint-best", model, ccfg)
    spec = create_spec(work / "ensemble.json", [work / "A", work / "B"], names=["A", "B"])
    spec.members[0].temperature, spec.members[1].temperature = 1.3, 0.9
    spec.save()
    return work / "ensemble.json"


def make_folder(work: Path, n: int) -> tuple[Path, str]:
    out = work / "images"
    out.mkdir()
    busi = Path(os.environ.get("MEDSSL_BUSI_DIR", REPO.parent / "shared" / "data" / "busi"))
    if (busi / "benign").is_dir():
        files = list_images(busi)
        step = max(1, len(files) // n)
        for i, rel in enumerate(files[::step][:n]):
            shutil.copy(busi / rel, out / f"img{i:04d}.png")
        return out, "BUSI PNGs"
    from core.data.demo import generate_demo

    demo = generate_demo(work / "demo", n_cases=max(2, n // 12 + 1), size=256)
    for i, rel in enumerate(list_images(demo)[:n]):
        shutil.copy(demo / rel, out / f"img{i:04d}.png")
    return out, "phantom PNGs 256 px"


def plain_way(folder: Path, ens_file: Path, files: list[str]) -> tuple[float, np.ndarray]:
    """PIL open, timm transform, eager fp32 forward of each member at batch 1."""
    from PIL import Image
    from timm.data import create_transform

    from core.models.classifier import load_classifier
    from core.inference.ensemble import load_spec

    spec = load_spec(ens_file)
    members = []
    for m in spec.members:
        model, cfg = load_classifier(spec.resolve(m))
        tf = create_transform(input_size=(3, cfg["image_size"], cfg["image_size"]), interpolation="bicubic",
                              crop_pct=1.0, crop_mode="squash", mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
        members.append((model.eval(), tf, m.temperature, m.weight))
    wsum = sum(w for *_, w in members)

    def one(path: Path) -> np.ndarray:
        img = Image.open(path).convert("RGB")
        p = 0
        for model, tf, t, w in members:
            with torch.no_grad():
                p = p + w * torch.softmax(model(tf(img)[None]) / t, dim=-1)[0].numpy()
        return p / wsum

    one(folder / files[0])   # warm-up (first-call allocations), not timed
    t0 = time.perf_counter()
    probs = np.stack([one(folder / f) for f in files])
    return time.perf_counter() - t0, probs


def fast_way(folder: Path, ens_file: Path, out: Path, backend: str, batch_size: int, workers: int
             ) -> tuple[float, dict]:
    """Loading the models / creating the ONNX Runtime session is not timed (as for the plain way)."""
    ens = load_ensemble(ens_file, "cpu")
    kw: dict = {"ensemble": ens, "backend": backend}
    if backend == "onnx":
        from core.inference.predict import OnnxEnsemble

        kw = {"onnx": OnnxEnsemble(cached_onnx_path(ens))}
    # warm-up on one batch of copies (kernel/primitive creation and buffers at this batch size), not timed
    warm = out.parent / f"warm-{backend}"
    warm.mkdir(exist_ok=True)
    for f in list_images(folder)[:batch_size]:
        shutil.copy(folder / f, warm / f)
    (out.parent / f"warm-{backend}.csv").unlink(missing_ok=True)
    predict_folder(warm, out.parent / f"warm-{backend}.csv", batch_size=batch_size, num_workers=0, **kw)
    t0 = time.perf_counter()
    summary = predict_folder(folder, out, batch_size=batch_size, num_workers=workers, **kw)
    return time.perf_counter() - t0, summary


def read_probs(path: Path, files: list[str]) -> np.ndarray:
    with open(path, newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    return np.asarray([[float(rows[f][f"prob_{c}"]) for c in CLASSES] for f in files])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--backbone", default="convnext_tiny")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=None, help="default: predict_folder's (4 on a CPU)")
    ap.add_argument("--workers", type=int, default=1, help="decode processes for the fast path")
    ap.add_argument("--skip-torch-fast", action="store_true", help="do not also time the torch backend")
    ap.add_argument("--rounds", type=int, default=3, help="best of N rounds per measurement")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    args.batch_size = args.batch_size or CPU_BATCH_SIZE

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="medssl-bench-predict-"))
    work.mkdir(parents=True, exist_ok=True)
    ens_file = make_members(work, args.backbone, args.size)
    folder, source = make_folder(work, args.images)
    files = list_images(folder)
    print(f"{len(files)} files ({source}); 2 x {args.backbone} at {args.size} px; threads {torch.get_num_threads()}",
          file=sys.stderr)

    from torch.utils.flop_counter import FlopCounterMode

    ens = load_ensemble(ens_file, "cpu")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        ens.module(torch.rand(1, 3, args.size, args.size))
    flops_per_image = fc.get_total_flops()

    backend = "onnx"   # what predict_folder(backend="auto") runs on a CPU
    export_s = None
    if backend == "onnx":
        t = time.perf_counter()
        export_onnx(ens, cached_onnx_path(ens))
        export_s = time.perf_counter() - t
    # Best of N rounds for every measurement (the CPU is shared: other people's jobs come and go, so a
    # single run measures them as much as us). Peak = the best matmul rate seen in any round.
    peaks, plain_times, fast_times, torch_times = [], [], [], []
    result: dict = {}
    for r in range(args.rounds):
        peaks.append(matmul_peak())
        plain_s, plain_probs = plain_way(folder, ens_file, files)
        plain_times.append(plain_s)
        peaks.append(matmul_peak())
        out = work / f"preds-{backend}-{r}.csv"
        fast_s, _ = fast_way(folder, ens_file, out, backend, args.batch_size, args.workers)
        fast_times.append(fast_s)
        fast_probs = read_probs(out, files)
        if backend == "onnx" and not args.skip_torch_fast:
            out_t = work / f"preds-torch-{r}.csv"
            torch_s, _ = fast_way(folder, ens_file, out_t, "torch", args.batch_size, args.workers)
            torch_times.append(torch_s)
            result["torch_fast_max_prob_diff"] = float(np.abs(read_probs(out_t, files) - plain_probs).max())
        peaks.append(matmul_peak())
        print(f"round {r + 1}: plain {len(files) / plain_s:.2f} img/s, fast {len(files) / fast_s:.2f} img/s, "
              f"peak {max(peaks[-3:]) / 1e9:.0f} GFLOP/s", file=sys.stderr)
    peak = max(peaks)
    if torch_times:
        result["torch_fast_images_per_s"] = len(files) / min(torch_times)
        result["speedup_vs_torch_fast"] = min(torch_times) / min(fast_times)

    n = len(files)
    fast_ips, eager_ips = n / min(fast_times), n / min(plain_times)
    result = {
        "fast_images_per_s": round(fast_ips, 3),
        "eager_images_per_s": round(eager_ips, 3),
        "speedup_vs_eager": round(fast_ips / eager_ips, 3),
        "max_prob_diff": float(np.abs(fast_probs - plain_probs).max()),
        "fraction_of_peak": round(fast_ips * flops_per_image / peak, 3),
        "fast_backend": "onnxruntime" if backend == "onnx" else "torch",
        "eager_fraction_of_peak": round(eager_ips * flops_per_image / peak, 3),
        "model_gflop_per_image": round(flops_per_image / 1e9, 3),
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "matmul_gflops_all_rounds": [round(p / 1e9, 1) for p in peaks],
        "fast_images_per_s_rounds": [round(n / t, 2) for t in fast_times],
        "eager_images_per_s_rounds": [round(n / t, 2) for t in plain_times],
        "images": n, "image_source": source, "backbone": args.backbone, "image_size": args.size,
        "batch_size": args.batch_size, "decode_workers": args.workers, "threads": torch.get_num_threads(),
        "loadavg_end": os.getloadavg()[0],
        "onnx_export_s": round(export_s, 1) if export_s is not None else None,
        "same_predicted_class": bool((fast_probs.argmax(1) == plain_probs.argmax(1)).all()),
        **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
