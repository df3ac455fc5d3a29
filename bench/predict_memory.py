"""Peak memory of batch prediction and of the library scan on many small images (issue #16, resources).

Writes ``--images`` distinct 32x32 grey PNGs (random pixels, two class folders) into a temp folder or
``--data`` (kept there and reused by the next run with the same count), makes a 2-member ensemble of tiny
ConvNeXt-atto classifiers with the engine's own functions (``build_classifier``,
``save_classifier_checkpoint``, ``create_spec``), then runs each phase in its own child process:

* ``scan``: ``core.data.library.scan_folder`` of the folder, then ``ProjectStore.import_scan`` into the
  folder's project (what ``medssl scan FOLDER --store`` does);
* ``predict``: ``core.inference.predict.predict_folder`` of the folder on the CPU (backend ``auto``, so
  ONNX Runtime, with its DataLoader decode workers), its rows also stored in that project as a run's
  typed predictions. The one-time ONNX export is done beforehand, in the child that makes the ensemble.

Each phase's peak RSS is the child's ``ru_maxrss`` as ``os.wait4`` reports it (the largest process of the
phase, DataLoader workers included; the predict child also reports its own peak and its workers'
apart); the child also reports its RSS after its imports, before any work
(``*_baseline_rss_mb``), so ``*_growth_mb`` = peak - baseline is what the images cost. The bound checked
is :data:`BOUND_FIXED_MB` + :data:`BOUND_PER_IMAGE_KB` per image on the growth of each phase: paths and
the rows of a list of files are kept (tens of bytes each), nothing per image that is as large as an image
or a result. Exit status 1 when a phase exceeds it.

Prints one JSON object as its last line. Run under ``nice -n 5`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLASSES = ["benign", "malignant"]
IMAGE_SIDE = 32
BOUND_FIXED_MB = 500.0     # interpreter, torch + ONNX Runtime session, DataLoader workers, SQLite cache, batches
BOUND_PER_IMAGE_KB = 1.5   # the scan result keeps a record per image (~0.8 KB); predict a path, a done row


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def make_images(folder: Path, n: int) -> float:
    """``n`` distinct grey PNGs under ``folder/<class>/``; seconds taken (0 when already there)."""
    import numpy as np
    from PIL import Image

    stamp = folder / ".medssl-bench-images"
    if stamp.is_file() and stamp.read_text().strip() == str(n):
        return 0.0
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    chunk = 1000
    for start in range(0, n, chunk):
        pixels = rng.integers(0, 256, (min(chunk, n - start), IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
        for k, image in enumerate(pixels):
            i = start + k
            Image.fromarray(image, "L").save(folder / CLASSES[i % 2] / f"img{i:07d}.png", compress_level=1)
    stamp.write_text(str(n))
    return time.perf_counter() - t0


def make_ensemble(work: Path) -> Path:
    import torch

    from core.inference.ensemble import create_spec, load_ensemble
    from core.inference.predict import cached_onnx_path, export_onnx
    from core.models.classifier import build_classifier, save_classifier_checkpoint
    from core.train.config import FinetuneConfig

    for i, name in enumerate(("a", "b")):
        torch.manual_seed(i)
        cfg = FinetuneConfig(backbone="convnext_atto", tiny=True, init="random", image_size=IMAGE_SIDE)
        model, ccfg = build_classifier(cfg, CLASSES, lambda m: None)
        save_classifier_checkpoint(work / name / "checkpoint-best", model, ccfg)
    spec = create_spec(work / "ensemble.json", [work / "a", work / "b"], names=["A", "B"])
    spec.save()
    ensemble = load_ensemble(spec.path, "cpu")
    export_onnx(ensemble, cached_onnx_path(ensemble))   # once, as the first `medssl predict` would
    return spec.path


# -- phases (each in its own child process) ------------------------------------------------------------
def phase_scan(folder: Path) -> dict:
    from core.data.library import scan_folder
    from core.paths import default_store_path
    from core.project.store import ProjectStore

    baseline = current_rss_mb()
    t0 = time.perf_counter()
    result = scan_folder(folder)
    scanned = time.perf_counter() - t0
    with ProjectStore(default_store_path(folder)) as store:
        counts = store.import_scan(result)
    return {"baseline_rss_mb": baseline, "seconds": time.perf_counter() - t0, "scan_seconds": scanned,
            "images": len(result.images), "errors": len(result.errors), "stored_new": counts["new"]}


def phase_predict(folder: Path, ensemble: Path, out: Path, batch_size: int) -> dict:
    import torch

    from core.inference.predict import predict_folder
    from core.paths import default_store_path
    from core.project.store import ProjectStore

    torch.set_num_threads(1)     # tiny models gain nothing from threads on a shared CPU
    baseline = current_rss_mb()
    with ProjectStore(default_store_path(folder)) as store:
        run_id = store.add_run("predict", "memory bench")
        t0 = time.perf_counter()
        summary = predict_folder(folder, out, ensemble=ensemble, batch_size=batch_size, threads=1,
                                 store=store, run_id=run_id)
        seconds = time.perf_counter() - t0
    return {"baseline_rss_mb": baseline, "seconds": seconds, "images": summary["predicted"],
            "main_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "errors": summary["errors"], "stored": summary["stored"], "backend": summary["backend"],
            "images_per_s": summary["images_per_s"]}


def run_phase(argv: list[str]) -> tuple[dict, float]:
    """The phase's JSON and its peak RSS in MB (the largest process of its tree, from ``os.wait4``). Linux
    keeps the peak across fork and exec, so this parent never imports torch (the ensemble is made in a
    child too): a child's peak starts from this small process, not from a large one."""
    proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"phase {argv[1]} failed (exit {proc.returncode})")
    return json.loads(stdout.strip().splitlines()[-1]), usage.ru_maxrss / 1024   # ru_maxrss is in KiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--data", type=Path, default=None,
                    help="folder for the images (kept and reused); default: a temp folder, removed at the end")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="prediction batch size (predict's own CPU default, 4, writes and fsyncs a batch per 4 "
                         "images: hours for 100000 on a busy CPU; the memory per batch is what is measured)")
    ap.add_argument("--phase", choices=("ensemble", "scan", "predict"), help=argparse.SUPPRESS)   # a child's side
    ap.add_argument("--ensemble", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.phase == "ensemble":
        print(json.dumps({"ensemble": str(make_ensemble(args.out))}))
        return 0
    if args.phase == "scan":
        print(json.dumps(phase_scan(args.data)))
        return 0
    if args.phase == "predict":
        print(json.dumps(phase_predict(args.data, args.ensemble, args.out, args.batch_size)))
        return 0

    temp = None if args.data else Path(tempfile.mkdtemp(prefix="medssl-bench-memory-"))
    data = (args.data or temp / "images").resolve()
    work = Path(tempfile.mkdtemp(prefix="medssl-bench-memory-work-"))
    try:
        generate_s = make_images(data, args.images)
        shutil.rmtree(data / ".medssl", ignore_errors=True)     # a fresh project: the scan imports every image
        ensemble = Path(run_phase(["--phase", "ensemble", "--out", str(work)])[0]["ensemble"])
        print(f"{args.images} images in {data} ({generate_s:.0f} s to write)", file=sys.stderr)
        scan, scan_peak = run_phase(["--phase", "scan", "--data", str(data)])
        print(f"scan: {scan_peak:.0f} MB peak, {scan['seconds']:.0f} s", file=sys.stderr)
        predict, predict_peak = run_phase(["--phase", "predict", "--data", str(data), "--ensemble", str(ensemble),
                                           "--out", str(work / "preds.csv")]
                                          + ["--batch-size", str(args.batch_size)])
        print(f"predict: {predict_peak:.0f} MB peak, {predict['seconds']:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)

    bound = BOUND_FIXED_MB + BOUND_PER_IMAGE_KB * args.images / 1024
    scan_growth, predict_growth = scan_peak - scan["baseline_rss_mb"], predict_peak - predict["baseline_rss_mb"]
    result = {
        "images": args.images, "peak_rss_mb": round(max(scan_peak, predict_peak), 1),
        "scan_peak_rss_mb": round(scan_peak, 1), "scan_baseline_rss_mb": round(scan["baseline_rss_mb"], 1),
        "scan_growth_mb": round(scan_growth, 1), "scan_seconds": round(scan["seconds"], 1),
        "scan_images": scan["images"], "scan_errors": scan["errors"], "stored_images": scan["stored_new"],
        "predict_peak_rss_mb": round(predict_peak, 1),
        "predict_baseline_rss_mb": round(predict["baseline_rss_mb"], 1),
        "predict_growth_mb": round(predict_growth, 1),
        "predict_main_peak_rss_mb": round(predict["main_peak_rss_mb"], 1),
        "predict_workers_peak_rss_mb": round(predict["workers_peak_rss_mb"], 1), "predict_seconds": round(predict["seconds"], 1),
        "predicted": predict["images"], "predict_errors": predict["errors"], "stored_predictions": predict["stored"],
        "predict_backend": predict["backend"], "images_per_s": round(predict["images_per_s"] or 0.0, 1),
        "batch_size": args.batch_size, "generate_seconds": round(generate_s, 1),
        "growth_bound_mb": round(bound, 1), "within_bound": scan_growth <= bound and predict_growth <= bound,
        "loadavg_end": os.getloadavg()[0],
    }
    print(json.dumps(result))
    return 0 if result["within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
