"""Batch classification of a folder with an ensemble: streaming, resumable, fast; ONNX export.

``predict_folder(FOLDER, OUT, ensemble=E)`` walks FOLDER (recursively; mask files and ``.medssl`` skipped),
decodes and resizes images in DataLoader worker processes, runs the ensemble on batches and appends one
row per image to OUT (CSV, or JSON lines when OUT ends in ``.jsonl``), flushed and fsynced after every
batch. Memory stays bounded: the loader keeps at most ``num_workers * prefetch`` batches in flight.

Resume: rows already in OUT are skipped (by path), so running the same command after a kill or Ctrl-C
continues where it stopped without duplicates; a last line cut by a kill is removed first. A file that
cannot be read becomes a row with ``status=error`` and the reason, and is not retried.

Fast path (all on by default, each measured in ``bench/predict.py``): ``torch.inference_mode``; batched
forward passes; decode in worker processes; ``channels_last`` on CUDA (on this kind of CPU the
NCHW kernels are faster for ConvNeXt, so the default is ``auto``); bf16 autocast only where
``core.train.precision.autocast_dtype`` says the hardware does it natively, with a check on the first batch
against fp32 (falls back to fp32 when probabilities move by more than ``bf16_tol``). ``export_onnx``
writes the whole ensemble (normalisation, members, temperatures, averaging) as one ONNX graph that
``predict_folder(onnx=...)`` runs with ONNX Runtime.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.inference.ensemble import LoadedEnsemble, js_divergence, load_ensemble, predictive_entropy
from core.data.transforms import load_8bit, resize_pil

log = logging.getLogger(__name__)

__all__ = ["list_images", "predict_folder", "export_onnx", "OnnxEnsemble", "predict_job", "output_columns",
           "cached_onnx_path", "has_onnxruntime", "parse_prediction_header", "store_predictions"]

SKIP_DIRS = {".medssl", "__pycache__", ".git"}
CPU_BATCH_SIZE = 4   # measured best on the 2-core CI CPU for ConvNeXt-Tiny at 224 px (bench/predict.py)


def _image_extensions() -> set[str]:
    try:
        from core.data.imageio import IMAGE_EXTENSIONS

        return {e.lower() for e in IMAGE_EXTENSIONS}
    except ImportError:  # pragma: no cover
        return {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"}


def _is_mask(name: str) -> bool:
    try:
        from core.data.imageio import is_mask_file

        return bool(is_mask_file(name))
    except ImportError:  # pragma: no cover
        return "_mask" in name


def list_images(folder: str | Path) -> list[str]:
    """Image files under ``folder`` as sorted posix paths relative to it (masks and hidden dirs skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    exts = _image_extensions()
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for fn in filenames:
            if Path(fn).suffix.lower() in exts and not _is_mask(fn) and not fn.startswith("."):
                out.append(Path(dirpath, fn).relative_to(folder).as_posix())
    return sorted(out)


# ------------------------------------------------------------------------------------------- decoding
class _FolderImages(Dataset):
    """Items: (position, uint8 [S, S] (grey) or [S, S, 3] or None, error reason). Decoding and the eval
    resize happen here, in worker processes; grey images are resized before being replicated to RGB
    (identical pixels, a third of the work) and travel as uint8 (a quarter of the float bytes)."""

    def __init__(self, root: Path, rel: Sequence[str], size: int, interpolation: str = "bicubic"):
        self.root, self.rel, self.size, self.interpolation = root, list(rel), size, interpolation

    def __len__(self) -> int:
        return len(self.rel)

    def __getitem__(self, i: int):
        try:
            img = load_8bit(self.root / self.rel[i])
            return i, np.asarray(resize_pil(img, self.size, self.interpolation)), ""
        except Exception as exc:  # any broken file becomes an error row, never a crash
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            return i, None, str(reason)


def _collate(items):
    ok = [(i, a) for i, a, _ in items if a is not None]
    errors = [(i, e) for i, a, e in items if a is None]
    batch = None
    if ok:
        s = ok[0][1].shape[0]
        batch = np.empty((len(ok), 3, s, s), dtype=np.uint8)                 # [B, 3, S, S]
        for k, (_, a) in enumerate(ok):
            batch[k] = a if a.ndim == 2 else a.transpose(2, 0, 1)          # grey broadcasts to 3 channels
        batch = torch.from_numpy(batch)
    return [i for i, _ in ok], batch, errors


def to_unit_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> float32 in [0, 1], exactly as torchvision's ToTensor (x / 255)."""
    return torch.from_numpy(batch.numpy().astype(np.float32) / np.float32(255.0))


# ---------------------------------------------------------------------------------------------- output
def output_columns(classes: Sequence[str], names: Sequence[str]) -> list[str]:
    return (["path", "status", "predicted"] + [f"prob_{c}" for c in classes] + ["entropy", "disagreement_js"]
            + [f"{n}_prob_{c}" for n in names for c in classes] + ["error"])


def _repair_tail(path: Path) -> None:
    """Drop a last line cut short by a kill (no trailing newline)."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        # find the last newline
        pos = size - 1
        chunk = 65536
        last_nl = -1
        while pos >= 0 and last_nl < 0:
            start = max(0, pos - chunk + 1)
            fh.seek(start)
            buf = fh.read(pos - start + 1)
            k = buf.rfind(b"\n")
            if k >= 0:
                last_nl = start + k
            pos = start - 1
        fh.truncate(last_nl + 1 if last_nl >= 0 else 0)
    log.info("%s: removed an incomplete last line (interrupted write)", path)


def _read_done(path: Path, fmt: str, columns: list[str]) -> set[str]:
    """Paths already in the output file; checks that an existing CSV has the same columns."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    _repair_tail(path)
    done: set[str] = set()
    with open(path, newline="", encoding="utf-8") as fh:
        if fmt == "csv":
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return done
            if header != columns:
                raise ValueError(f"{path} was written with other columns (another ensemble or classes?); "
                                 f"choose another --out")
            for row in reader:
                if row:
                    done.add(row[0])
        else:
            for line in fh:
                line = line.strip()
                if line:
                    done.add(json.loads(line)["path"])
    return done


class _Writer:
    def __init__(self, path: Path, fmt: str, columns: list[str], classes: Sequence[str], names: Sequence[str],
                 weights: Sequence[float]):
        self.path, self.fmt, self.columns, self.classes, self.names = path, fmt, columns, list(classes), list(names)
        self.weights = list(weights)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self.fh = open(path, "a", newline="", encoding="utf-8")
        if fmt == "csv" and new:
            csv.writer(self.fh).writerow(columns)
            self.commit()

    def rows(self, rel: Sequence[str], ens: np.ndarray | None, members: np.ndarray | None,
             errors: Sequence[tuple[str, str]]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf) if self.fmt == "csv" else None
        if ens is not None and len(rel):
            ent = predictive_entropy(ens)
            js = js_divergence(members, self.weights)
            for i, r in enumerate(rel):
                pred = self.classes[int(ens[i].argmax())]
                if w is not None:
                    w.writerow([r, "ok", pred] + [f"{v:.6f}" for v in ens[i]] + [f"{ent[i]:.6f}", f"{js[i]:.6f}"]
                               + [f"{v:.6f}" for m in members[:, i] for v in m] + [""])
                else:
                    buf.write(json.dumps({
                        "path": r, "status": "ok", "predicted": pred,
                        "probs": {c: round(float(v), 6) for c, v in zip(self.classes, ens[i])},
                        "entropy": round(float(ent[i]), 6), "disagreement_js": round(float(js[i]), 6),
                        "members": {n: {c: round(float(v), 6) for c, v in zip(self.classes, members[k, i])}
                                    for k, n in enumerate(self.names)}}) + "\n")
        for r, reason in errors:
            if w is not None:
                w.writerow([r, "error"] + [""] * (len(self.columns) - 3) + [reason])
            else:
                buf.write(json.dumps({"path": r, "status": "error", "error": reason}) + "\n")
        self.fh.write(buf.getvalue())
        self.commit()

    def commit(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


# ---------------------------------------------------------------------------------------------- runners
class _TorchRunner:
    def __init__(self, ens: LoadedEnsemble, *, channels_last: bool | None, precision: str, bf16_tol: float,
                 log_fn):
        from core.train.precision import autocast_dtype

        self.ens = ens
        self.device = ens.device
        if channels_last is None:
            channels_last = self.device.type == "cuda"
        self.channels_last = channels_last
        if channels_last:
            ens.module.to(memory_format=torch.channels_last)
        if precision == "auto":
            self.amp = autocast_dtype(self.device)
        elif precision == "bf16":
            self.amp = torch.bfloat16
        else:
            self.amp = None
        self.bf16_tol = bf16_tol
        self.checked = self.amp is None
        self.log = log_fn
        self.max_prob_diff_vs_fp32: float | None = None

    def _run(self, x: torch.Tensor, amp) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            ens, mem = self.ens.module(x)
        return ens.float(), mem.float()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if x.dtype == torch.uint8:
            x = to_unit_float(x)
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.checked:
            ref = self._run(x, None)
            low = self._run(x, self.amp)
            diff = float((ref[1] - low[1]).abs().max())
            self.max_prob_diff_vs_fp32 = diff
            self.checked = True
            if diff > self.bf16_tol:
                self.log(f"{self.amp} changes probabilities by up to {diff:.4f} (> {self.bf16_tol}): using fp32")
                self.amp = None
                ens, mem = ref
            else:
                self.log(f"{self.amp} autocast: max probability change vs fp32 {diff:.2e} on the first batch")
                ens, mem = low
        else:
            ens, mem = self._run(x, self.amp)
        return ens.cpu().numpy(), mem.cpu().numpy()

    @property
    def precision(self) -> str:
        return "fp32" if self.amp is None else str(self.amp).replace("torch.", "")


class OnnxEnsemble:
    """An ensemble exported by :func:`export_onnx`, run with ONNX Runtime."""

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = True):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeError("ONNX Runtime is not installed: pip install onnxruntime "
                               "(or medssl-studio[onnx])") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if not spinning:   # idle threads sleep instead of spinning (better when the CPU is shared)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.classes = json.loads(meta["classes"])
        self.names = json.loads(meta["members"])
        self.weights = json.loads(meta["weights"])
        self.image_size = int(meta["image_size"])
        self.interpolation = meta.get("interpolation", "bicubic")
        self.precision = "fp32 (onnxruntime)"
        self.max_prob_diff_vs_fp32 = None

    def __call__(self, x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(x, torch.Tensor):
            x = (to_unit_float(x) if x.dtype == torch.uint8 else x).numpy()
        ens, mem = self.session.run(["probs", "member_probs"], {"image": np.ascontiguousarray(x, np.float32)})
        return ens, mem


def has_onnxruntime() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cached_onnx_path(ens: LoadedEnsemble, opset: int = 17) -> Path:
    """Where the ONNX export of this exact ensemble (weights, temperatures, weights, size) is cached."""
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps({"opset": opset, "torch": torch.__version__, "size": ens.image_size,
                         "names": ens.names, "weights": ens.weights,
                         "T": [round(float(t), 8) for t in (1 / ens.module.inv_temperature).tolist()]}).encode())
    for cfg in ens.configs:
        f = Path(cfg["checkpoint"]) / "model.safetensors"
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    base = ens.spec.path.parent / ".medssl-onnx" if ens.spec.path is not None else None
    if base is None or not os.access(base.parent, os.W_OK):
        from core.paths import user_data_dir

        base = user_data_dir() / "onnx-cache"
    return base / f"ensemble-{h.hexdigest()[:16]}.onnx"


def export_onnx(ensemble: LoadedEnsemble | str | Path, out: str | Path, *, opset: int = 17,
                check: bool = True) -> Path:
    """Write the ensemble as one ONNX graph: input ``image`` [B, 3, S, S] in [0, 1]; outputs ``probs``
    [B, C] and ``member_probs`` [M, B, C]. Classes, member names and weights go into the model metadata.
    With ``check``, ONNX Runtime's output is compared with PyTorch's on random input."""
    import onnx

    ens = ensemble if isinstance(ensemble, LoadedEnsemble) else load_ensemble(ensemble, "cpu")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    module = ens.module.to("cpu").eval()
    x = torch.rand(2, 3, ens.image_size, ens.image_size)
    kwargs: dict[str, Any] = dict(input_names=["image"], output_names=["probs", "member_probs"],
                                  opset_version=opset,
                                  dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"},
                                                "member_probs": {1: "batch"}})
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of torch.export (which needs onnxscript); it
        # still exports these CNNs exactly, without the extra dependency
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(module, (x,), str(tmp), dynamo=False, **kwargs)
        except TypeError:  # older torch without the dynamo switch
            torch.onnx.export(module, (x,), str(tmp), **kwargs)
    model = onnx.load(str(tmp))
    meta = {"classes": json.dumps(ens.classes), "members": json.dumps(ens.names),
            "weights": json.dumps(ens.weights), "image_size": str(ens.image_size),
            "interpolation": ens.configs[0].get("interpolation", "bicubic"),
            "temperatures": json.dumps([float(1 / t) for t in ens.module.inv_temperature.tolist()]),
            "producer": "medssl-studio"}
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(model, str(tmp))
    if check:
        runner = OnnxEnsemble(tmp)
        with torch.inference_mode():
            ref, _ = module(x)
        got, _ = runner(x)
        diff = float(np.abs(ref.numpy() - got).max())
        if diff > 1e-3:
            tmp.unlink()
            raise RuntimeError(f"ONNX export differs from PyTorch by {diff:.2e}")
        log.info("ONNX export %s: max probability difference vs PyTorch %.2e", out, diff)
    tmp.replace(out)
    return out


# ------------------------------------------------------------------------------------------------ main
def predict_folder(folder: str | Path, out: str | Path, *, ensemble: LoadedEnsemble | str | Path | None = None,
                   onnx: "str | Path | OnnxEnsemble | None" = None, backend: str = "auto", fmt: str | None = None,
                   batch_size: int | None = None, num_workers: int | None = None, device: str | None = None,
                   channels_last: bool | None = None, precision: str = "auto", bf16_tol: float = 2e-2,
                   threads: int | None = None, limit: int | None = None, ctx=None) -> dict:
    """Classify every image under ``folder``; append rows to ``out``; return a summary dict.

    ``backend``: ``torch`` (eager PyTorch), ``onnx`` (export once, cached beside the ensemble file, then
    ONNX Runtime) or ``auto`` (ONNX Runtime on a CPU when onnx/onnxruntime are installed: about 1.1x the
    batched PyTorch path for ConvNeXt-Tiny on the 2-core CI CPU; PyTorch otherwise, and always on a GPU).
    ``batch_size`` None = 4 on a CPU (ConvNeXt-Tiny's activations of 4 images stay in cache: 0.73 of the
    sgemm peak vs 0.67 at 16, bench/predict.py), 32 on a GPU."""
    if backend not in ("auto", "torch", "onnx"):
        raise ValueError(f"backend must be auto, torch or onnx, got {backend!r}")
    folder, out = Path(folder), Path(out)
    fmt = fmt or ("jsonl" if out.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv")
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"output format must be csv or jsonl, got {fmt!r}")

    def say(msg: str) -> None:
        if ctx is not None:
            ctx.log(msg)
        else:
            log.info(msg)

    if onnx is not None:
        runner: Any = onnx if isinstance(onnx, OnnxEnsemble) else OnnxEnsemble(onnx, threads)
        classes, names, weights = runner.classes, runner.names, runner.weights
        size, interp = runner.image_size, runner.interpolation
    else:
        if ensemble is None:
            raise ValueError("give an ensemble file (or an ONNX export)")
        ens = ensemble if isinstance(ensemble, LoadedEnsemble) else load_ensemble(ensemble, device)
        use_onnx = backend == "onnx" or (backend == "auto" and ens.device.type == "cpu" and has_onnxruntime()
                                         and precision != "bf16")
        if use_onnx:
            path = cached_onnx_path(ens)
            if not path.is_file():
                say(f"exporting the ensemble to ONNX (once, checked against PyTorch): {path}")
                export_onnx(ens, path)
            runner = OnnxEnsemble(path, threads)
            backend = "onnx"
        else:
            if threads and ens.device.type == "cpu":
                torch.set_num_threads(threads)
            runner = _TorchRunner(ens, channels_last=channels_last, precision=precision, bf16_tol=bf16_tol,
                                  log_fn=say)
            backend = "torch"
        classes, names, weights = ens.classes, ens.names, ens.weights
        size, interp = ens.image_size, ens.configs[0].get("interpolation", "bicubic")

    if batch_size is None:
        batch_size = 32 if onnx is None and backend == "torch" and ens.device.type == "cuda" else CPU_BATCH_SIZE
    columns = output_columns(classes, names)
    all_rel = list_images(folder)
    done = _read_done(out, fmt, columns)
    pending = [r for r in all_rel if r not in done]
    if limit is not None:
        pending = pending[:limit]
    total = len(all_rel)
    if done:
        say(f"{out}: {len(done)} images already done, {len(pending)} to go")
    writer = _Writer(out, fmt, columns, classes, names, weights)
    if num_workers is None:
        num_workers = min(2, os.cpu_count() or 1)
    loader = DataLoader(_FolderImages(folder, pending, size, interp), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate,
                        prefetch_factor=2 if num_workers > 0 else None,
                        persistent_workers=False, pin_memory=False)
    n_ok = n_err = 0
    t0 = time.perf_counter()
    try:
        for idx, x, errors in loader:
            if ctx is not None:
                ctx.check_cancelled()
            ens_p = mem_p = None
            if x is not None:
                ens_p, mem_p = runner(x)
            writer.rows([pending[i] for i in idx], ens_p, mem_p, [(pending[i], e) for i, e in errors])
            n_ok += len(idx)
            n_err += len(errors)
            if ctx is not None:
                dt = time.perf_counter() - t0
                ctx.progress(len(done) + n_ok + n_err, total, images_per_s=(n_ok + n_err) / max(dt, 1e-9))
    finally:
        writer.close()
    dt = time.perf_counter() - t0
    summary = {"out": str(out), "format": fmt, "images_total": total, "already_done": len(done),
               "predicted": n_ok, "errors": n_err, "seconds": round(dt, 3),
               "images_per_s": (n_ok + n_err) / dt if dt > 0 else None, "precision": runner.precision,
               "backend": "onnxruntime" if onnx is not None or backend == "onnx" else "torch",
               "bf16_max_prob_diff": runner.max_prob_diff_vs_fp32}
    say(f"predicted {n_ok} images ({n_err} errors) in {dt:.1f} s -> {out}")
    return summary


def predict_job(folder, out, **kwargs):
    from core.jobs import Job

    return Job("predict", lambda ctx: predict_folder(folder, out, ctx=ctx, **kwargs))


def parse_prediction_header(header: Sequence[str]) -> tuple[list[str], list[str]]:
    """(classes, member names) from the header of a prediction CSV (see ``output_columns``)."""
    classes = [c[len("prob_"):] for c in header if c.startswith("prob_")]
    names: list[str] = []
    for col in header:
        if col.startswith("prob_"):
            continue
        for c in classes:
            suffix = f"_prob_{c}"
            if col.endswith(suffix):
                name = col[:-len(suffix)]
                if name not in names:
                    names.append(name)
                break
    return classes, names


def store_predictions(store, run_id: int, csv_path: str | Path, folder: str | Path) -> int:
    """Keep the ok rows of a prediction CSV as the run's predictions in the project store (matched to the
    store's images by path relative to ``folder``; rows of other images and error rows are skipped).

    probs = {"ensemble": {class: p}, "members": {member: {class: p}}}; uncertainty = {"entropy": nats,
    "disagreement": JS divergence in nats}; label = the predicted class. Returns the number stored."""
    folder = Path(folder)
    images = store.images()
    by_rel = {im.rel_path: im.id for im in images}
    by_abs = {str(Path(im.abs_path)): im.id for im in images}
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        classes, names = parse_prediction_header(reader.fieldnames or [])
        for r in reader:
            if r.get("status", "ok") not in ("ok", ""):
                continue
            rel = r["path"].replace("\\", "/")
            image_id = by_rel.get(rel) or by_abs.get(str(folder / rel))
            if image_id is None:
                continue
            ens = {c: float(r[f"prob_{c}"]) for c in classes}
            members = {n: {c: float(r[f"{n}_prob_{c}"]) for c in classes} for n in names}
            rows.append({"image_id": image_id, "label": r.get("predicted") or max(ens, key=ens.get),
                         "probs": {"ensemble": ens, "members": members},
                         "uncertainty": {"entropy": float(r.get("entropy") or 0.0),
                                         "disagreement": float(r.get("disagreement_js") or 0.0)}})
    return store.add_predictions(run_id, rows)
