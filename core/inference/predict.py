"""Batch classification of a folder with an ensemble: streaming, resumable, fast; ONNX export.

``predict_folder(FOLDER, OUT, ensemble=E)`` walks FOLDER (recursively; mask files and ``.medssl`` skipped),
decodes and resizes images in DataLoader worker processes, runs the ensemble on batches and appends one
row per image to OUT (CSV, or JSON lines when OUT ends in ``.jsonl``), flushed and fsynced after every
batch. Memory stays bounded: the loader keeps at most ``num_workers * prefetch`` batches in flight.

Resume: rows already in OUT are skipped (by path), so running the same command after a kill or Ctrl-C
continues where it stopped without duplicates; a last line cut by a kill is removed first. A file that
cannot be read becomes a row with ``status=error`` and the reason, and is not retried. Running out of memory
while decoding a file says nothing about the file (the machine was busy, or the batch too large): that file
gets no row, is named in the log and counted as ``retry_later``, so the next run retries it.

Fast path (all on by default, each measured in ``bench/predict.py``): ``torch.inference_mode``; batched
forward passes; decode in worker processes; ``channels_last`` on CUDA (on this kind of CPU the
NCHW kernels are faster for ConvNeXt, so the default is ``auto``); bf16 autocast only where
``core.train.precision.autocast_dtype`` says the hardware does it natively, with a check on the first batch
against fp32 (falls back to fp32 when probabilities move by more than ``bf16_tol``). ``export_onnx``
writes the whole ensemble (normalisation, members, temperatures, averaging) as one ONNX graph that
``predict_folder(onnx=...)`` runs with ONNX Runtime.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes every WORLD_SIZE-th file of the sorted list of
files still to do, writes its rows to its own part file beside OUT (``OUT.rank<R>.part``, fsynced per
batch), and rank 0 appends the parts to OUT in listing order at the end. Parts left by a killed run are
merged first on the next run (rows already in OUT skipped, cut last lines dropped), so OUT stays one file
that resumes without duplicate or missing rows. Each rank runs on ``cuda:LOCAL_RANK`` when there are GPUs.

With ``store`` and ``run_id``, every batch's ok rows also go to the project store as typed records
(:meth:`core.project.store.ProjectStore.add_prediction_arrays`, one transaction per batch, before the file
row, so a resumed run never misses one).
"""

from __future__ import annotations

import copy
import csv
import glob
import io
import itertools
import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from core import csvcells
from core.atomic import atomic_path
from core.csvcells import unescape_cell
from core.analysis.metrics import js_divergence, predictive_entropy
from core.inference.ensemble import LoadedEnsemble, load_ensemble
from core.inference.logits import to_unit_float
from core.data.transforms import load_8bit, resize_pil
from core.data.walk import walk_folder
from core.train.distributed import DistInfo, all_reduce_sum, barrier, setup_distributed, teardown_distributed

log = logging.getLogger(__name__)

__all__ = ["list_images", "predict_folder", "export_onnx", "OnnxEnsemble", "predict_job", "output_columns",
           "cached_onnx_path", "part_files"]

CPU_BATCH_SIZE = 4   # measured best on the 2-core CI CPU for ConvNeXt-Tiny at 224 px (bench/predict.py)


def list_images(folder: str | Path) -> list[str]:
    """Image files under ``folder`` as sorted posix paths relative to it, by the one folder walk's rules
    (:mod:`core.data.walk`: masks, hidden folders, ``.medssl`` and ``DICOMDIR`` skipped)."""
    return _walk(folder).rel_paths


def _walk(folder: str | Path):
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return walk_folder(folder)


def _problem_rows(walk) -> list[tuple[str, str]]:
    """(printable path relative to the folder, reason) of each entry the walk could not use (a name that is
    not UTF-8, a dangling link, an unlistable folder): error rows, so every file is named in the output."""
    rows = []
    for p in walk.problems:
        try:
            rel = p.path.relative_to(walk.root).as_posix()
        except ValueError:
            rel = str(p.path)
        rows.append((rel, p.reason))
    return rows


# ------------------------------------------------------------------------------------------- decoding
RETRY_LATER = "retry later: ran out of memory while decoding"   # the reason of an item that gets no row


class _FolderImages(Dataset):
    """Items: (position, uint8 [S, S] (grey) or [S, S, 3] or None, error reason or :data:`RETRY_LATER`).
    Decoding and the eval resize happen here, in worker processes; grey images are resized before being
    replicated to RGB (identical pixels, a third of the work) and travel as uint8 (a quarter of the float
    bytes)."""

    def __init__(self, root: Path, rel: Sequence[str], size: int, interpolation: str = "bicubic"):
        self.root, self.rel, self.size, self.interpolation = root, list(rel), size, interpolation

    def __len__(self) -> int:
        return len(self.rel)

    def __getitem__(self, i: int):
        try:
            img = load_8bit(self.root / self.rel[i])
            return i, np.asarray(resize_pil(img, self.size, self.interpolation)), ""
        except MemoryError:
            return i, None, RETRY_LATER
        except Exception as exc:  # any broken file becomes an error row, never a crash
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            return i, None, str(reason)


def _collate(items):
    ok = [(i, a) for i, a, _ in items if a is not None]
    errors = [(i, e) for i, a, e in items if a is None and e != RETRY_LATER]
    retry = [i for i, a, e in items if a is None and e == RETRY_LATER]
    batch = None
    if ok:
        s = ok[0][1].shape[0]
        batch = np.empty((len(ok), 3, s, s), dtype=np.uint8)                 # [B, 3, S, S]
        for k, (_, a) in enumerate(ok):
            batch[k] = a if a.ndim == 2 else a.transpose(2, 0, 1)          # grey broadcasts to 3 channels
        batch = torch.from_numpy(batch)
    return [i for i, _ in ok], batch, errors, retry


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
            if [unescape_cell(h) for h in header] != columns:
                raise ValueError(f"{path} was written with other columns (another ensemble or classes?); "
                                 f"choose another --out")
            for row in reader:
                if row:
                    done.add(unescape_cell(row[0]))
        else:
            for line in fh:
                line = line.strip()
                if line:
                    done.add(json.loads(line)["path"])
    return done


class _Writer:
    def __init__(self, path: Path, fmt: str, columns: list[str], classes: Sequence[str], names: Sequence[str]):
        self.path, self.fmt, self.columns, self.classes, self.names = path, fmt, columns, list(classes), list(names)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self.fh = open(path, "a", newline="", encoding="utf-8")
        if fmt == "csv" and new:
            csvcells.writer(self.fh).writerow(columns)
            self.commit()

    def rows(self, rel: Sequence[str], ens: np.ndarray | None, members: np.ndarray | None, ent: np.ndarray | None,
             js: np.ndarray | None, errors: Sequence[tuple[str, str]]) -> None:
        buf = io.StringIO()
        w = csvcells.writer(buf) if self.fmt == "csv" else None
        if ens is not None and len(rel):
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
class OnnxEnsemble:
    """An ensemble exported by :func:`export_onnx`, run with ONNX Runtime."""

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = True,
                 device: str = "cpu"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if not spinning:   # idle threads sleep instead of spinning (better when the CPU is shared)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts,
                                            providers=ort_providers(ort.get_available_providers(), device))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.classes = json.loads(meta["classes"])
        self.names = json.loads(meta["members"])
        self.weights = json.loads(meta["weights"])
        self.image_size = int(meta["image_size"])
        self.interpolation = meta.get("interpolation", "bicubic")
        self.precision = "fp32 (onnxruntime)"
        self.max_diff_vs_fp32 = None

    def __call__(self, x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(x, torch.Tensor):
            x = (to_unit_float(x) if x.dtype == torch.uint8 else x).numpy()
        ens, mem = self.session.run(["probs", "member_probs"], {"image": np.ascontiguousarray(x, np.float32)})
        return ens, mem


def ort_providers(available: Sequence[str], device_type: str) -> list[str]:
    """ONNX Runtime providers for a run on ``device_type``: CUDA (then CPU) only for a CUDA run. A CPU run, and
    so the export check, stays on the CPU, in fp32 like its PyTorch reference: the CUDA provider's TF32
    convolutions would move probabilities by about 1e-3 and fail a check of the graph that is not about them."""
    wanted = ("CUDAExecutionProvider", "CPUExecutionProvider") if device_type == "cuda" else ("CPUExecutionProvider",)
    return [p for p in wanted if p in available]


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


def is_on_cpu(module: nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in itertools.chain(module.parameters(), module.buffers()))


def cpu_copy(module: nn.Module) -> nn.Module:
    """``module`` when it is on the CPU, else a CPU copy: exporting must not move a caller's CUDA ensemble."""
    return module if is_on_cpu(module) else copy.deepcopy(module).to("cpu")


def export_onnx(ensemble: LoadedEnsemble | str | Path, out: str | Path, *, opset: int = 17,
                check: bool = True) -> Path:
    """Write the ensemble as one ONNX graph: input ``image`` [B, 3, S, S] in [0, 1]; outputs ``probs``
    [B, C] and ``member_probs`` [M, B, C]. Classes, member names and weights go into the model metadata.
    With ``check``, ONNX Runtime's output is compared with PyTorch's on random input."""
    import onnx

    ens = ensemble if isinstance(ensemble, LoadedEnsemble) else load_ensemble(ensemble, "cpu")
    out = Path(out)
    module = cpu_copy(ens.module).eval()
    x = torch.rand(2, 3, ens.image_size, ens.image_size)
    kwargs: dict[str, Any] = dict(input_names=["image"], output_names=["probs", "member_probs"],
                                  opset_version=opset,
                                  dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"},
                                                "member_probs": {1: "batch"}})
    with atomic_path(out) as tmp:      # a failed export or check leaves no file (and an older export intact)
        with torch.no_grad():
            # The TorchScript exporter, which torch deprecates (and says so): the torch.export-based one
            # (dynamo=True, the default since torch 2.9) needs the onnxscript package, not a dependency and not
            # installable offline; this one exports these CNNs exactly (checked below).
            try:
                torch.onnx.export(module, (x,), str(tmp), dynamo=False, **kwargs)
            except TypeError:  # torch before 2.5 has no dynamo switch (and only this exporter)
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
            runner = OnnxEnsemble(tmp)          # CPU provider: fp32 on both sides (ort_providers)
            with torch.inference_mode():
                ref, _ = module(x)
            got, _ = runner(x)
            diff = float(np.abs(ref.numpy() - got).max())
            if diff > 1e-3:
                raise RuntimeError(f"ONNX export differs from PyTorch by {diff:.2e}")
            log.info("ONNX export %s: max probability difference vs PyTorch %.2e", out, diff)
    return out


# ------------------------------------------------------------------------------------------- torchrun
def part_files(out: str | Path) -> list[Path]:
    """The per-rank part files of ``out`` (present while a torchrun prediction runs, or after a kill)."""
    out = Path(out)
    return sorted(out.parent.glob(glob.escape(out.name) + ".rank*.part"))


def _part_rows(path: Path, fmt: str, columns: list[str]) -> list[tuple[str, str]]:
    """(image path, serialised row with its newline) of every complete row of a part file."""
    _repair_tail(path)
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        if fmt == "csv":
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is not None and [unescape_cell(h) for h in header] != columns:
                raise ValueError(f"{path} was written with other columns; remove it or choose another --out")
            for row in reader:
                if row:
                    buf = io.StringIO()
                    csv.writer(buf).writerow(row)        # the cells as read: already escaped
                    rows.append((unescape_cell(row[0]), buf.getvalue()))
        else:
            rows = [(json.loads(line)["path"], line.strip() + "\n") for line in fh if line.strip()]
    return rows


def _merge_parts(out: Path, fmt: str, columns: list[str], order: Sequence[str]) -> int:
    """Append the rows of ``out``'s part files that ``out`` lacks, in listing order, then delete the parts.
    Safe to repeat after a kill at any point (rows already in ``out`` are skipped)."""
    parts = part_files(out)
    if not parts:
        return 0
    done = _read_done(out, fmt, columns)
    position = {r: i for i, r in enumerate(order)}
    new: dict[str, str] = {}
    for part in parts:
        for rel, text in _part_rows(part, fmt, columns):
            if rel not in done:
                new.setdefault(rel, text)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = fmt == "csv" and (not out.exists() or out.stat().st_size == 0)
    with open(out, "a", newline="", encoding="utf-8") as fh:
        if header:
            csvcells.writer(fh).writerow(columns)
        fh.write("".join(new[r] for r in sorted(new, key=lambda r: (position.get(r, len(position)), r))))
        fh.flush()
        os.fsync(fh.fileno())
    for part in parts:
        part.unlink()
    return len(new)


class _StoreSink:
    """Writes each batch's ok rows to the project store as typed records, matched to the store's images
    by path relative to the predicted folder (or absolute path); rows of images outside the store are
    skipped."""

    def __init__(self, store, run_id: int, folder: Path, classes: Sequence[str], names: Sequence[str]):
        self.store, self.run_id, self.folder = store, run_id, folder
        self.classes, self.names = list(classes), list(names)
        images = store.images()
        self.by_rel = {im.rel_path: im.id for im in images}
        self.by_abs = {str(Path(im.abs_path)): im.id for im in images}
        self.stored = 0

    def __call__(self, rel: Sequence[str], ens: np.ndarray, members: np.ndarray, ent: np.ndarray,
                 js: np.ndarray) -> None:
        keep, ids = [], []
        for i, r in enumerate(rel):
            image_id = self.by_rel.get(r) or self.by_abs.get(str(self.folder / r))
            if image_id is not None:
                keep.append(i)
                ids.append(image_id)
        if keep:
            self.stored += self.store.add_prediction_arrays(self.run_id, ids, self.classes, self.names, ens[keep],
                                                            members[:, keep], ent[keep], js[keep])


# ------------------------------------------------------------------------------------------------ main
def predict_folder(folder: str | Path, out: str | Path, *, ensemble: LoadedEnsemble | str | Path | None = None,
                   onnx: "str | Path | OnnxEnsemble | None" = None, backend: str = "auto", fmt: str | None = None,
                   batch_size: int | None = None, num_workers: int | None = None, device: str | None = None,
                   channels_last: bool | None = None, precision: str = "auto", bf16_tol: float = 2e-2,
                   threads: int | None = None, limit: int | None = None, store=None, run_id: int | None = None,
                   ctx=None) -> dict:
    """Classify every image under ``folder``; append rows to ``out``; return a summary dict (totals over
    all ranks under torchrun).

    ``backend``: ``torch`` (eager PyTorch), ``onnx`` (export once, cached beside the ensemble file, then
    ONNX Runtime) or ``auto`` (ONNX Runtime on a CPU: about 1.1x the batched PyTorch path for
    ConvNeXt-Tiny on the 2-core CI CPU; PyTorch on a GPU, for bf16, or where onnxruntime has no wheel).
    ``batch_size`` None = 4 on a CPU (ConvNeXt-Tiny's activations of 4 images stay in cache: 0.73 of the
    sgemm peak vs 0.67 at 16, bench/predict.py), 32 on a GPU. ``store`` and ``run_id`` (both): also keep the
    ok rows as the run's typed predictions in the project store."""
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

    # ranks wait at the end for the slowest one: a long timeout (torchrun stops them all on a crash)
    ranks = setup_distributed(device, timeout=timedelta(hours=12))
    try:
        if onnx is not None:
            runner: Any = onnx if isinstance(onnx, OnnxEnsemble) else OnnxEnsemble(
                onnx, threads, device=ranks.device.type)
            classes, names, weights = runner.classes, runner.names, runner.weights
            size, interp, on_gpu = runner.image_size, runner.interpolation, False
            backend = "onnx"
        else:
            if ensemble is None:
                raise ValueError("give an ensemble file (or an ONNX export)")
            ens = ensemble if isinstance(ensemble, LoadedEnsemble) else load_ensemble(ensemble, ranks.device)
            on_gpu = ens.device.type == "cuda"
            use_onnx = backend == "onnx" or (backend == "auto" and not on_gpu and precision != "bf16")
            if use_onnx:
                path = cached_onnx_path(ens)
                if ranks.is_main and not path.is_file():
                    say(f"exporting the ensemble to ONNX (once, checked against PyTorch): {path}")
                    export_onnx(ens, path)
                barrier()
                runner = OnnxEnsemble(path, threads, device=ens.device.type)
                backend = "onnx"
            else:
                if threads and not on_gpu:
                    torch.set_num_threads(threads)
                runner = ens.inference(precision=precision, channels_last=channels_last, check_tol=bf16_tol,
                                       log=say)
                backend = "torch"
            classes, names, weights = ens.classes, ens.names, ens.weights
            size, interp = ens.image_size, ens.configs[0].get("interpolation", "bicubic")
        return _predict_files(folder, out, fmt, runner, backend, classes, names, weights, size, interp,
                              batch_size or (32 if backend == "torch" and on_gpu else CPU_BATCH_SIZE),
                              num_workers, limit, store, run_id, ranks, say, ctx)
    finally:
        teardown_distributed(ranks)


def _predict_files(folder: Path, out: Path, fmt: str, runner, backend: str, classes, names, weights, size: int,
                   interp: str, batch_size: int, num_workers: int | None, limit: int | None, store, run_id,
                   ranks: DistInfo, say, ctx) -> dict:
    columns = output_columns(classes, names)
    walk = _walk(folder)
    all_rel = walk.rel_paths
    if ranks.rank == 0:
        merged = _merge_parts(out, fmt, columns, all_rel)     # left by an interrupted torchrun prediction
        if merged:
            say(f"{out}: {merged} rows of an interrupted run merged from its part files")
    barrier()
    done = _read_done(out, fmt, columns)
    pending = [r for r in all_rel if r not in done]
    if limit is not None:
        pending = pending[:limit]
    mine = pending[ranks.rank::ranks.world_size]
    total = len(all_rel)
    if done:
        say(f"{out}: {len(done)} images already done, {len(pending)} to go")
    target = out if ranks.world_size == 1 else out.with_name(f"{out.name}.rank{ranks.rank}.part")
    writer = _Writer(target, fmt, columns, classes, names)
    sink = _StoreSink(store, run_id, folder, classes, names) if store is not None and run_id is not None else None
    if num_workers is None:
        num_workers = min(2, os.cpu_count() or 1)
    loader = DataLoader(_FolderImages(folder, mine, size, interp), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate,
                        prefetch_factor=2 if num_workers > 0 else None,
                        persistent_workers=False, pin_memory=False)
    n_ok = n_err = n_retry = 0
    t0 = time.perf_counter()
    try:
        if ranks.is_main:
            problems = [(r, reason) for r, reason in _problem_rows(walk) if r not in done]
            for r, reason in problems:
                say(f"error: {folder / r}: {reason}")
            writer.rows([], None, None, None, None, problems)
            n_err += len(problems)
        for idx, x, errors, retry in loader:
            if ctx is not None:
                ctx.check_cancelled()
            for i in retry:
                say(f"{folder / mine[i]}: ran out of memory while decoding; no row written, the next run retries it")
            n_retry += len(retry)
            rel = [mine[i] for i in idx]
            ens_p = mem_p = ent = js = None
            if x is not None:
                ens_p, mem_p = runner(x)
                ent, js = predictive_entropy(ens_p), js_divergence(mem_p, weights)
                if sink is not None:
                    sink(rel, ens_p, mem_p, ent, js)
            writer.rows(rel, ens_p, mem_p, ent, js, [(mine[i], e) for i, e in errors])
            n_ok += len(idx)
            n_err += len(errors)
            if ctx is not None:
                dt = time.perf_counter() - t0
                ctx.progress(len(done) + n_ok + n_err + n_retry, total, images_per_s=(n_ok + n_err) / max(dt, 1e-9))
    finally:
        writer.close()
    stored = sink.stored if sink is not None else 0
    barrier()
    if ranks.world_size > 1:
        if ranks.rank == 0:
            _merge_parts(out, fmt, columns, all_rel)
        n_ok, n_err, n_retry, stored = (int(v) for v in all_reduce_sum([n_ok, n_err, n_retry, stored],
                                                                        ranks.device))
        barrier()
    dt = time.perf_counter() - t0
    summary = {"out": str(out), "format": fmt, "images_total": total, "already_done": len(done),
               "predicted": n_ok, "errors": n_err, "retry_later": n_retry, "seconds": round(dt, 3),
               "images_per_s": (n_ok + n_err) / dt if dt > 0 else None, "precision": runner.precision,
               "backend": "onnxruntime" if backend == "onnx" else "torch",
               "bf16_max_prob_diff": runner.max_diff_vs_fp32, "rank": ranks.rank, "world_size": ranks.world_size}
    if sink is not None:
        summary["stored"] = stored
    retry_note = f"; {n_retry} ran out of memory, run again to retry them" if n_retry else ""
    say(f"predicted {n_ok} images ({n_err} errors{retry_note}) in {dt:.1f} s -> {out}")
    return summary


def predict_job(folder, out, **kwargs):
    from core.jobs import Job

    return Job("predict", lambda ctx: predict_folder(folder, out, ctx=ctx, **kwargs))
