"""The CUDA path end to end on a real GPU: what no CPU test can run.

On the phantom demo set (tiny ConvNeXt members unless ``--full``: ConvNeXt-Tiny at 224 px), one short run
of each step a study takes on a GPU, each timed:

* one tiny pretraining of every registered method (``--precision auto``);
* a fine-tune in bf16 (skipped, with the reason, below compute capability 8.0) and one in fp16 (GradScaler;
  its state must be in ``checkpoint-last/optimizer.pt``);
* a ``torchrun --nproc-per-node 2`` fine-tune when two GPUs are visible (each rank on cuda:LOCAL_RANK);
* an ensemble of the fine-tuned members (calibration + evaluation on the GPU);
* a prediction of the folder with ``channels_last`` (PyTorch backend), and an ONNX export of the CUDA
  ensemble, which must leave the ensemble on the GPU.

Prints one JSON line: ``{"cuda": true, "device", "capability", "torch", "passed", "checks": {name: {"ok",
"seconds", "images_per_s", ...}}}``; exit 1 when a check failed. Without CUDA it prints ``{"cuda": false,
"reason": ...}`` and exits 0. ``--device cpu`` runs the same checks on the CPU (those the CPU cannot do are
reported as skipped, with the reason): a smoke test of this script where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from core.models.backbones import TINY_CONVNEXT  # noqa: E402
from core.pretrain import list_methods  # noqa: E402
from core.train.precision import decide_precision  # noqa: E402

CONTRASTIVE_SMALL = {"proj_hidden": 64, "proj_dim": 32}


class Skipped(Exception):
    """A check this device cannot run (the message says why)."""


def _run_check(checks: dict, name: str, fn: Callable[[], dict]) -> None:
    t0 = time.perf_counter()
    try:
        out = fn()
        checks[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), **out}
    except Skipped as why:
        checks[name] = {"ok": None, "skipped": str(why)}
    except Exception as exc:  # reported in the JSON line; the other checks still run
        checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                        "where": traceback.format_exc(limit=-2)}


def _capability(device: torch.device) -> tuple[int, int] | None:
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None


def _precision_or_skip(setting: str, device: torch.device) -> None:
    from core.train.precision import cpu_has_native_bf16

    try:
        decide_precision(setting, device.type, _capability(device), device.type == "cpu" and cpu_has_native_bf16())
    except ValueError as e:
        raise Skipped(str(e)) from None


def pretrain(method: str, demo: Path, out: Path, device: torch.device, full: bool) -> dict:
    from core.pretrain.config import TrainConfig
    from core.pretrain.trainer import train

    options = {"decoder_width": 32} if method == "mae" else dict(CONTRASTIVE_SMALL)
    size = 224 if full else (64 if method == "mae" else 32)
    cfg = TrainConfig(method=method, data=str(demo), out=str(out), backbone="convnext_tiny" if full else "convnext_atto",
                      timm_kwargs={} if full else {k: list(v) for k, v in TINY_CONVNEXT.items()},
                      image_size=size, epochs=2, batch_size=16, lr=2e-3, warmup_epochs=0, probe_size=8,
                      options=options, device=str(device), precision="auto")
    result = train(cfg)
    last = result["epoch_logs"][-1]
    if not all(v == v for _, v in result["step_losses"]):
        raise RuntimeError(f"non-finite losses: {result['step_losses']}")
    return {"images_per_s": last["images_per_s"], "steps": len(result["step_losses"]),
            "last_loss": last["loss"], "skipped_steps": last["skipped_steps"]}


def finetune(precision: str, demo: Path, out: Path, device: torch.device, full: bool) -> dict:
    from core.train.config import FinetuneConfig
    from core.train.data import load_labeled_data
    from core.train.finetune import finetune as run_finetune

    _precision_or_skip(precision, device)
    cfg = FinetuneConfig(backbone="convnext_tiny" if full else "convnext_atto", tiny=not full, init="random",
                         image_size=224 if full else 32, epochs=2, batch_size=16, lr=3e-3, warmup_epochs=0.5,
                         patience=100, val_fraction=0.2, test_fraction=0.2, seed=0, num_workers=2,
                         precision=precision, device=str(device))
    result = run_finetune(cfg, load_labeled_data(demo), out)
    state = torch.load(out / "checkpoint-last" / "optimizer.pt", map_location="cpu", weights_only=True)
    if precision == "fp16" and not state.get("scaler"):
        raise RuntimeError("fp16 fine-tuning saved no GradScaler state")
    return {"images_per_s": round(result["n_train"] * result["epochs_run"] / max(result["train_time_s"], 1e-9), 2),
            "test_accuracy": result.get("test", {}).get("accuracy"), "scaler_saved": bool(state.get("scaler"))}


def finetune_torchrun(demo: Path, out: Path, full: bool) -> dict:
    if torch.cuda.device_count() < 2:
        raise Skipped(f"{torch.cuda.device_count()} GPU(s) visible; the torchrun check needs 2")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "core.cli",
            "finetune", str(demo), "--backbone", "convnext_tiny" if full else "convnext_atto", "--init", "random",
            "--image-size", "224" if full else "32", "--epochs", "2", "--batch-size", "16", "--workers", "2",
            "--out", str(out), "--quiet"] + ([] if full else ["--tiny"])
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    if metrics["world_size"] != 2:
        raise RuntimeError(f"world size {metrics['world_size']}, expected 2")
    return {"images_per_s": round(metrics["n_train"] * metrics["epochs_run"] / max(metrics["train_time_s"], 1e-9), 2),
            "world_size": metrics["world_size"]}


def ensemble(members: list[Path], path: Path, device: torch.device) -> dict:
    from core.inference.ensemble import create_spec, evaluate_ensemble

    if not members:
        raise Skipped("no fine-tuned member to ensemble")
    spec = create_spec(path, members)
    t0 = time.perf_counter()
    report = evaluate_ensemble(spec, device=str(device))
    n = len(report.labels_n)
    return {"members": len(members), "images_per_s": round(n * len(members) / (time.perf_counter() - t0), 2),
            "accuracy_after_calibration": report.ensemble_after.get("accuracy")}


def predict(spec: Path, demo: Path, out: Path, device: torch.device) -> dict:
    from core.inference.predict import predict_folder

    if not spec.is_file():
        raise Skipped("no ensemble file (the ensemble check did not run)")
    s = predict_folder(demo, out, ensemble=spec, backend="torch", channels_last=True, device=str(device),
                       num_workers=2)
    if s["errors"]:
        raise RuntimeError(f"{s['errors']} images failed")
    return {"images_per_s": round(s["images_per_s"], 2), "predicted": s["predicted"], "precision": s["precision"]}


def onnx_export(spec: Path, out: Path, device: torch.device) -> dict:
    from core.inference.ensemble import load_ensemble
    from core.inference.predict import export_onnx

    if not spec.is_file():
        raise Skipped("no ensemble file (the ensemble check did not run)")
    ens = load_ensemble(spec, str(device))
    export_onnx(ens, out)
    where = {t.device.type for t in ens.module.parameters()}
    if where != {device.type}:
        raise RuntimeError(f"export moved the ensemble: its parameters are on {sorted(where)}")
    return {"ensemble_left_on": device.type}


def run_checks(work: Path, device: torch.device, full: bool) -> dict:
    from core.data.demo import generate_demo

    os.environ.setdefault("MEDSSL_DATA_DIR", str(work / "userdata"))     # the multimodal method's cache
    demo = generate_demo(work / "demo", seed=0)
    checks: dict = {}
    for method in list_methods():
        _run_check(checks, f"pretrain_{method}", lambda m=method: pretrain(m, demo, work / f"pre-{m}", device, full))
    for precision in ("bf16", "fp16"):
        _run_check(checks, f"finetune_{precision}",
                   lambda p=precision: finetune(p, demo, work / f"ft-{p}", device, full))
    if device.type == "cuda":
        _run_check(checks, "finetune_torchrun_2gpu", lambda: finetune_torchrun(demo, work / "ft-ddp", full))
    members = [work / f"ft-{p}" for p in ("bf16", "fp16") if checks[f"finetune_{p}"]["ok"]]
    spec = work / "ensemble.json"
    _run_check(checks, "ensemble", lambda: ensemble(members, spec, device))
    _run_check(checks, "predict_channels_last", lambda: predict(spec, demo, work / "pred.csv", device))
    _run_check(checks, "onnx_export_leaves_ensemble", lambda: onnx_export(spec, work / "ens.onnx", device))
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test of this script)")
    ap.add_argument("--full", action="store_true", help="ConvNeXt-Tiny at 224 px instead of tiny members")
    ap.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"cuda": False, "reason": "no CUDA device is visible (torch "
                          f"{torch.__version__}, built for CUDA {torch.version.cuda}); nothing was run"}))
        return 0
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda:0")
    with tempfile.TemporaryDirectory(prefix="medssl-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        checks = run_checks(work, device, args.full)
    ran = [c["ok"] for c in checks.values() if c["ok"] is not None]
    line = {"cuda": device.type == "cuda", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else "cpu", "capability": _capability(device), "gpus": torch.cuda.device_count() if device.type == "cuda"
            else 0, "torch": torch.__version__, "full": args.full, "passed": bool(ran) and all(ran), "checks": checks}
    print(json.dumps(line))
    return 0 if line["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
