"""Training jobs in the window: a queue of ``core`` jobs (pretrain, fine-tune, ensemble, predict), each a
run in the project store, with live progress, curves, a log tail, cancel and resume.

:class:`JobsManager` (no widgets) owns the queue. Every job is a run row in the store (``runs`` table:
kind, name, config, state, metrics, run_dir) created the moment it is queued, so the queue and its
history survive closing the project or a crash: a run found ``running`` or ``queued`` when the project
is opened again was interrupted and is offered for resume. One job runs at a time (training saturates
the CPU/GPU); the job's thread reports through :class:`desktop.bridge.jobs_bridge.JobRunner`, so the UI thread
only copies numbers. Resume re-runs the same config in the same run folder: the engine continues from
its checkpoint (pretraining ``resume="auto"``, fine-tuning ``resume=True``, prediction skips rows
already written).

:class:`JobsPanel` is the view (a dock): job list | progress, ETA, images/s, loss and validation curves
(pyqtgraph), log tail, Cancel / Resume.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from core.jobs import Job
from desktop import theme
from desktop.bridge.jobs_bridge import JobRunner

log = logging.getLogger(__name__)

KINDS = ("pretrain", "finetune", "ensemble", "predict")
KIND_LABELS = {"pretrain": "Pretraining", "finetune": "Fine-tuning", "ensemble": "Ensemble", "predict": "Prediction"}
#: store states of a run as the panel uses them (the store accepts any string)
ACTIVE = ("queued", "running")
RESUMABLE = ("cancelled", "failed", "interrupted")
INTERRUPTED_NOTE = "interrupted (the app was closed or crashed while it ran)"


# -- engine glue (no widgets; runs in the UI thread except the job functions) ---------------------------
def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "run"


def runs_folder(project_dir: Path) -> Path:
    return Path(project_dir) / "runs"


def build_job(kind: str, config: dict, run_dir: Path, *, store=None, store_path: Path | None = None,
              run_id: int | None = None, resume: bool = False) -> Job:
    """The ``core.jobs.Job`` for a run of ``kind`` with the stored ``config`` (see the dialogs)."""
    run_dir = Path(run_dir)
    if kind == "pretrain":
        from core.pretrain.trainer import make_job
        from core.pretrain.config import TrainConfig

        cfg = TrainConfig.from_dict({**config, "out": str(run_dir)})
        return make_job(cfg, resume="auto", state_dir=run_dir)
    if kind == "finetune":
        from core.train.finetune import finetune_job
        from core.train.config import FinetuneConfig

        return finetune_job(FinetuneConfig.from_dict(config), run_dir, project=str(store_path), resume=resume)
    if kind == "ensemble":
        from core.inference.ensemble import ensemble_job

        return ensemble_job(config["members"], run_dir, names=config.get("names"), split=config.get("split", "test"),
                            calibrate=config.get("calibrate", True), device=config.get("device"))
    if kind == "predict":
        def predict_fn(ctx):
            from core.inference.predict import predict_folder

            out = run_dir / "predictions.csv"
            summary = predict_folder(config["folder"], out, ensemble=config["ensemble"], backend="torch",
                                     batch_size=config.get("batch_size"), num_workers=0,
                                     device=config.get("device"), ctx=ctx,
                                     store=store if config.get("store", True) else None, run_id=run_id)
            if store is not None and run_id is not None and config.get("store", True):
                try:
                    n = summary["stored"]
                finally:
                    store.release_thread()
                ctx.log(f"{n} predictions stored in the project")
                summary["stored"] = n
            return summary
        return Job("predict", predict_fn, state_dir=run_dir)
    raise ValueError(f"unknown job kind {kind!r}")


def read_history(kind: str, run_dir: str | Path | None) -> list[dict]:
    """Per-epoch log lines of a run folder (pretraining log.jsonl, fine-tuning history.jsonl)."""
    if not run_dir:
        return []
    name = {"pretrain": "log.jsonl", "finetune": "history.jsonl"}.get(kind)
    if name is None:
        return []
    path = Path(run_dir) / name
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass   # a half-written last line
    except OSError:
        return []
    return out


def read_log_tail(run_dir: str | Path | None, n: int = 200) -> list[str]:
    """The last log messages a job wrote to RUN_DIR/job.log (events as JSON lines)."""
    if not run_dir:
        return []
    path = Path(run_dir) / "job.log"
    lines: deque[str] = deque(maxlen=n)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                if ev.get("kind") in ("log", "failed", "cancelled", "started", "finished") and ev.get("message"):
                    lines.append(ev["message"] if ev["kind"] == "log" else f"[{ev['kind']}] {ev['message']}")
    except OSError:
        pass
    return list(lines)


def result_metrics(kind: str, result: Any) -> dict:
    """JSON-safe scalar summary of a job result for the runs table."""
    if not isinstance(result, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in result.items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            out[k] = v
        elif isinstance(v, str) and len(v) < 300:
            out[k] = v
        elif isinstance(v, dict) and k in ("val", "test", "test_mean_std"):
            for kk, vv in v.items():
                if isinstance(vv, (int, float)) and not isinstance(vv, bool) and math.isfinite(float(vv)):
                    out[f"{k}_{kk}"] = vv
    if kind == "pretrain":
        logs = result.get("epoch_logs") or []
        if logs:
            out["final_loss"] = logs[-1].get("loss")
    if kind == "ensemble":
        for when in ("after",):
            for kk, vv in ((result.get("ensemble") or {}).get(when) or {}).items():
                if isinstance(vv, (int, float)) and not isinstance(vv, bool):
                    out[f"ensemble_{kk}"] = vv
    return out


def checkpoint_files(kind: str, run_dir: Path) -> list[tuple[Path, int | None]]:
    names = {"pretrain": ["checkpoint-last", "encoder.safetensors"],
             "finetune": ["checkpoint-best", "checkpoint-last"],
             "ensemble": ["ensemble.json"], "predict": ["predictions.csv"]}.get(kind, [])
    out = []
    for n in names:
        p = Path(run_dir) / n
        if p.exists():
            epoch = None
            cfg = p / "config.json"
            if cfg.is_file():
                try:
                    d = json.loads(cfg.read_text())
                    epoch = d.get("epoch") or (d.get("progress") or {}).get("epoch")
                    epoch = int(epoch) if epoch is not None else None
                except (ValueError, TypeError):
                    epoch = None
            out.append((p, epoch))
    return out


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


# -- the queue -----------------------------------------------------------------------------------------
@dataclass
class JobEntry:
    run_id: int
    kind: str
    name: str
    config: dict
    run_dir: Path
    state: str
    created: float = 0.0
    metrics: dict = field(default_factory=dict)
    runner: JobRunner | None = None
    resume: bool = False
    step: int = 0
    total: int = -1
    message: str = ""
    eta_s: float | None = None
    images_per_s: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    log: deque = field(default_factory=lambda: deque(maxlen=400))
    error: str = ""
    _rate_start: tuple[float, int] | None = None

    @property
    def fraction(self) -> float | None:
        return self.step / self.total if self.total and self.total > 0 else None

    @property
    def title(self) -> str:
        return f"#{self.run_id} {KIND_LABELS.get(self.kind, self.kind)}: {self.name}"


class JobsManager(QtCore.QObject):
    """The project's job queue (UI thread). Connect to the signals; call :meth:`submit`."""

    added = QtCore.Signal(int)          # run id
    changed = QtCore.Signal(int)        # state changed
    progressed = QtCore.Signal(int)     # new numbers (progress, loss, log)
    runFinished = QtCore.Signal(int, str)   # run id, kind (finished successfully)
    reset = QtCore.Signal()             # the whole list was replaced (project opened / closed)

    def __init__(self, project, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.project = project
        self.entries: dict[int, JobEntry] = {}
        self.paused = False             # tests: queue without starting
        project.storeReady.connect(self.load)

    # -- state ----------------------------------------------------------------------------------------
    @property
    def store(self):
        return self.project.store

    def running(self) -> JobEntry | None:
        for e in self.entries.values():
            if e.state == "running":
                return e
        return None

    def load(self) -> None:
        """Read the project's runs; runs left running/queued by a previous session are interrupted."""
        live = {rid: e for rid, e in self.entries.items() if e.runner is not None}   # never re-mark our own
        self.entries = {}
        store = self.store
        if store is None:
            self.reset.emit()
            return
        for run in store.list_runs():
            if run.kind not in KINDS:
                continue
            if run.id in live:
                self.entries[run.id] = live[run.id]
                continue
            state = run.state
            if state in ("running", "queued", "pending"):
                state = "interrupted"
                store.update_run(run.id, state=state, metrics={**(run.metrics or {}), "error": INTERRUPTED_NOTE})
            e = JobEntry(run.id, run.kind, run.name, dict(run.config or {}), Path(run.run_dir or ""), state,
                         run.created, dict(run.metrics or {}))
            e.history = read_history(e.kind, e.run_dir)
            e.log.extend(read_log_tail(e.run_dir))
            e.error = str((run.metrics or {}).get("error", "")) if state != "finished" else ""
            if state == "finished":
                e.step = e.total = 1
            self.entries[run.id] = e
        self.reset.emit()

    # -- queue ----------------------------------------------------------------------------------------
    def submit(self, kind: str, name: str, config: dict) -> int:
        """Queue a job; returns its run id. The run folder is ``.medssl/runs/<kind>-<id>-<name>``."""
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        store = self.store
        if store is None or self.project.paths is None:
            raise RuntimeError("open a project first")
        run_id = store.add_run(kind, name, config, state="queued")
        run_dir = runs_folder(self.project.paths.project_dir) / f"{kind}-{run_id}-{slug(name)}"
        if kind == "pretrain":
            config = {**config, "out": str(run_dir)}
        store.update_run(run_id, run_dir=run_dir, config=config)
        e = JobEntry(run_id, kind, name, dict(config), run_dir, "queued", time.time())
        self.entries[run_id] = e
        self.added.emit(run_id)
        self._pump()
        return run_id

    def cancel(self, run_id: int) -> None:
        e = self.entries.get(run_id)
        if e is None:
            return
        if e.state == "running" and e.runner is not None:
            e.runner.cancel()
            e.message = "cancelling… (saving a checkpoint)"
            self.progressed.emit(run_id)
        elif e.state == "queued":
            self._set_state(e, "cancelled")
            self._pump()

    def resume(self, run_id: int) -> None:
        e = self.entries.get(run_id)
        if e is None or e.state not in RESUMABLE:
            return
        e.resume = True
        e.error = ""
        self._set_state(e, "queued")
        self._pump()

    def can_resume(self, run_id: int) -> bool:
        e = self.entries.get(run_id)
        return e is not None and e.state in RESUMABLE

    def start_queued(self) -> None:
        self.paused = False
        self._pump()

    def _pump(self) -> None:
        if self.paused or self.running() is not None or self.store is None:
            return
        queued = sorted((e for e in self.entries.values() if e.state == "queued"), key=lambda e: e.run_id)
        if queued:
            self._start(queued[0])

    def _set_state(self, e: JobEntry, state: str, metrics: dict | None = None) -> None:
        e.state = state
        if self.store is not None:
            try:
                self.store.update_run(e.run_id, state=state, metrics=metrics)
            except KeyError:     # the run was deleted meanwhile
                pass
        if metrics is not None:
            e.metrics = metrics
        self.changed.emit(e.run_id)

    def _start(self, e: JobEntry) -> None:
        try:
            e.run_dir.mkdir(parents=True, exist_ok=True)
            job = build_job(e.kind, e.config, e.run_dir, store=self.store, store_path=self.project.paths.store_path,
                            run_id=e.run_id, resume=e.resume)
        except Exception as exc:   # bad config: the run fails visibly, the queue goes on
            log.exception("cannot build job")
            e.error = f"{type(exc).__name__}: {exc}"
            e.log.append(e.error)
            self._set_state(e, "failed", {"error": e.error})
            QtCore.QTimer.singleShot(0, self._pump)
            return
        runner = JobRunner(job, self)
        e.runner = runner
        e.losses.clear()
        e.step, e.total, e.eta_s, e.images_per_s, e._rate_start = 0, -1, None, None, None
        e.message = "starting…"
        e.log.append(f"--- {'resumed' if e.resume else 'started'} {time.strftime('%Y-%m-%d %H:%M:%S')} ---")
        rid = e.run_id
        runner.progress.connect(lambda step, total, msg, m, rid=rid: self._on_progress(rid, step, total, msg, m))
        runner.logged.connect(lambda msg, rid=rid: self._on_log(rid, msg))
        runner.finished.connect(lambda result, rid=rid: self._on_finished(rid, result))
        runner.failed.connect(lambda msg, rid=rid: self._on_failed(rid, msg))
        runner.cancelled.connect(lambda rid=rid: self._on_cancelled(rid))
        self._set_state(e, "running")
        runner.start()

    # -- events (UI thread) ---------------------------------------------------------------------------
    def _on_progress(self, rid: int, step: int, total: int, msg: str, metrics: dict) -> None:
        e = self.entries.get(rid)
        if e is None:
            return
        now = time.monotonic()
        if e._rate_start is None or step < e._rate_start[1]:
            e._rate_start = (now, step)
        epoch_changed = msg != e.message and msg.startswith("epoch")
        e.step, e.total = step, total
        if msg:
            e.message = msg
        t0, s0 = e._rate_start
        rate = (step - s0) / (now - t0) if now > t0 and step > s0 else None
        if "eta_s" in metrics:
            e.eta_s = metrics["eta_s"]
        elif rate and total > 0:
            e.eta_s = (total - step) / rate
        if "images_per_s" in metrics:
            e.images_per_s = metrics["images_per_s"]
        if "loss" in metrics and math.isfinite(metrics["loss"]):
            e.losses.append((step, float(metrics["loss"])))
        if epoch_changed:
            e.history = read_history(e.kind, e.run_dir)
        self.progressed.emit(rid)

    def _on_log(self, rid: int, msg: str) -> None:
        e = self.entries.get(rid)
        if e is None:
            return
        e.log.append(msg)
        if msg.startswith("epoch"):
            e.history = read_history(e.kind, e.run_dir)
        self.progressed.emit(rid)

    def _record_checkpoints(self, e: JobEntry) -> None:
        if self.store is None:
            return
        known = {c.path for c in self.store.checkpoints(e.run_id)}
        for path, epoch in checkpoint_files(e.kind, e.run_dir):
            if str(path) not in known:
                self.store.add_checkpoint(e.run_id, path, epoch)

    def _on_finished(self, rid: int, result: Any) -> None:
        e = self.entries.get(rid)
        if e is None:
            return
        e.runner = None
        e.history = read_history(e.kind, e.run_dir)
        if e.total > 0:
            e.step = e.total
        e.eta_s = 0.0
        e.message = "finished"
        metrics = result_metrics(e.kind, result)
        if e.kind == "ensemble" and isinstance(result, dict) and result.get("ensemble_file"):
            e.config = {**e.config, "ensemble": result["ensemble_file"]}
            if self.store is not None:
                self.store.update_run(rid, config=e.config)
        self._record_checkpoints(e)
        self._set_state(e, "finished", metrics)
        self.runFinished.emit(rid, e.kind)
        self._pump()

    def _on_failed(self, rid: int, msg: str) -> None:
        e = self.entries.get(rid)
        if e is None:
            return
        e.runner = None
        e.error = msg
        e.log.append(f"FAILED: {msg}")
        e.message = "failed"
        self._record_checkpoints(e)
        self._set_state(e, "failed", {**e.metrics, "error": msg})
        self._pump()

    def _on_cancelled(self, rid: int) -> None:
        e = self.entries.get(rid)
        if e is None:
            return
        e.runner = None
        e.message = "cancelled: Resume continues from the last checkpoint"
        e.log.append("cancelled")
        self._record_checkpoints(e)
        self._set_state(e, "cancelled")
        self._pump()

    # -- lifetime -------------------------------------------------------------------------------------
    def shutdown(self, wait_s: float = 20.0) -> None:
        """Stop the running job (it saves a checkpoint) before the project closes; the run stays resumable."""
        e = self.running()
        if e is not None and e.runner is not None:
            e.runner.cancel()
            e.runner.job.wait(wait_s)
            e.runner._finish()
            e.runner = None
            if self.store is not None:
                self.store.update_run(e.run_id, state="interrupted", metrics={**e.metrics, "error": INTERRUPTED_NOTE})
            e.state = "interrupted"
        for q in self.entries.values():
            if q.state == "queued" and self.store is not None:
                self.store.update_run(q.run_id, state="interrupted")
        self.entries = {}
        self.reset.emit()


# -- the view --------------------------------------------------------------------------------------------
STATE_COLORS = {"running": theme.ACCENT, "queued": theme.TEXT_DIM, "finished": "#5fbf7f", "failed": theme.ERROR,
                "cancelled": theme.WARN, "interrupted": theme.WARN}
CURVE_COLORS = ["#4e9fd8", "#f0a04b", "#b084e0", "#5fbf7f", "#e0607e", "#d6c94a"]


def style_plot(plot: pg.PlotWidget, title: str, left: str, bottom: str) -> None:
    plot.setBackground(theme.PANEL)
    pi = plot.getPlotItem()
    pi.setTitle(f"<span style='color:{theme.TEXT}; font-size:10pt'>{title}</span>")
    for axis, text in (("left", left), ("bottom", bottom)):
        ax = pi.getAxis(axis)
        ax.setPen(pg.mkPen(theme.BORDER))
        ax.setTextPen(pg.mkPen(theme.TEXT_DIM))
        ax.setLabel(text, color=theme.TEXT_DIM)
        ax.enableAutoSIPrefix(False)          # "value (x0.001)" confuses more than it helps
    pi.showGrid(x=True, y=True, alpha=0.15)


def legend_title(title: str, entries: list[tuple[str, str]]) -> str:
    """A plot title that is also its legend (coloured names after the title): an in-plot legend covers the
    curves of the short plots in the jobs panel and the runs browser."""
    names = "&nbsp;&nbsp;".join(f"<span style='color:{color}'>&#9679;&nbsp;{name}</span>" for name, color in entries)
    return (f"<span style='color:{theme.TEXT}; font-size:10pt'>{title}</span>"
            + (f"&nbsp;&nbsp;&nbsp;<span style='font-size:9pt'>{names}</span>" if names else ""))


#: short legend names, so that the title-legend fits above the per-epoch plot
CURVE_NAMES = {"val_accuracy": "accuracy", "val_balanced_accuracy": "bal. accuracy", "val_macro_f1": "macro F1",
               "train_acc": "train acc.", "loss": "loss", "visible_loss": "visible loss", "feat_std": "feature std"}


def val_metric_keys(kind: str, history: list[dict]) -> list[str]:
    if not history:
        return []
    keys = [k for k in history[-1] if isinstance(history[-1].get(k), (int, float))]
    if kind == "finetune":
        return [k for k in ("val_accuracy", "val_balanced_accuracy", "val_macro_f1", "train_acc") if k in keys]
    if kind == "pretrain":
        return [k for k in ("loss", "visible_loss", "feat_std") if k in keys]
    return []


class CurvesWidget(QtWidgets.QWidget):
    """Loss per step (left) and per-epoch validation / epoch metrics (right)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.loss_plot = pg.PlotWidget()
        style_plot(self.loss_plot, "Training loss", "loss", "step")
        self.loss_curve = self.loss_plot.plot(pen=pg.mkPen(theme.ACCENT, width=1.5))
        self.loss_smooth = self.loss_plot.plot(pen=pg.mkPen("#f0a04b", width=2))
        self.val_plot = pg.PlotWidget()
        style_plot(self.val_plot, "Per epoch", "value", "epoch")
        self.val_curves: dict[str, pg.PlotDataItem] = {}
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.loss_plot)
        lay.addWidget(self.val_plot)

    def show_entry(self, e: JobEntry | None) -> None:
        if e is None or not e.losses:
            self.loss_curve.setData([], [])
            self.loss_smooth.setData([], [])
        else:
            xs = [s for s, _ in e.losses]
            ys = [v for _, v in e.losses]
            self.loss_curve.setData(xs, ys)
            if len(ys) >= 5:
                k = max(2, len(ys) // 20)
                sm, acc = [], 0.0
                for i, y in enumerate(ys):     # exponential moving average
                    acc = y if i == 0 else acc + (y - acc) / k
                    sm.append(acc)
                self.loss_smooth.setData(xs, sm)
            else:
                self.loss_smooth.setData([], [])
        hist = e.history if e is not None else []
        if e is not None and not e.losses and hist:   # a run from an earlier session: epoch losses
            lk = "loss" if "loss" in hist[-1] else "train_loss" if "train_loss" in hist[-1] else None
            if lk:
                self.loss_curve.setData([h.get("epoch", i + 1) for i, h in enumerate(hist)],
                                        [h.get(lk, float("nan")) for h in hist])
                self.loss_plot.getPlotItem().getAxis("bottom").setLabel("epoch", color=theme.TEXT_DIM)
        else:
            self.loss_plot.getPlotItem().getAxis("bottom").setLabel("step", color=theme.TEXT_DIM)
        keys = val_metric_keys(e.kind, hist) if e is not None else []
        for k in list(self.val_curves):
            if k not in keys:
                self.val_plot.removeItem(self.val_curves.pop(k))
        entries = []
        for i, k in enumerate(keys):
            color = CURVE_COLORS[i % len(CURVE_COLORS)]
            if k not in self.val_curves:
                self.val_curves[k] = self.val_plot.plot(pen=pg.mkPen(color, width=2), symbol="o", symbolSize=5,
                                                        symbolBrush=color)
            self.val_curves[k].setPen(pg.mkPen(color, width=2))
            self.val_curves[k].setSymbolBrush(color)
            entries.append((CURVE_NAMES.get(k, k.replace("_", " ")), color))
            xs = [h.get("epoch", j + 1) for j, h in enumerate(hist)]
            self.val_curves[k].setData(xs, [float(h.get(k, float("nan"))) for h in hist])
        title = "Validation" if e is not None and e.kind == "finetune" else "Per epoch"
        self.val_plot.getPlotItem().setTitle(legend_title(title, entries))


class JobsPanel(QtWidgets.QWidget):
    """Job list, details of the selected job (progress, ETA, images/s, curves, log), Cancel / Resume."""

    def __init__(self, manager: JobsManager, parent=None):
        super().__init__(parent)
        self.manager = manager
        self.list = QtWidgets.QTreeWidget()
        self.list.setHeaderLabels(["Job", "State", "Progress"])
        self.list.setRootIsDecorated(False)
        self.list.setUniformRowHeights(True)
        self.list.setMinimumWidth(300)
        self.list.header().setStretchLastSection(False)
        self.list.header().setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.list.header().setSectionResizeMode(1, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        self.list.header().setSectionResizeMode(2, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)

        self.title = QtWidgets.QLabel("No job selected")
        self.title.setStyleSheet("font-weight: bold; font-size: 11pt;")
        self.state_label = QtWidgets.QLabel()
        self.bar = QtWidgets.QProgressBar()
        self.bar.setTextVisible(True)
        self.stats = QtWidgets.QLabel()
        self.stats.setObjectName("dim")
        self.cancel_btn = QtWidgets.QPushButton(theme.icon("cancel"), "Cancel")
        self.resume_btn = QtWidgets.QPushButton(theme.icon("next"), "Resume")
        self.cancel_btn.setToolTip("Stop the job at the next safe point; a checkpoint is saved")
        self.resume_btn.setToolTip("Continue a cancelled, failed or interrupted job from its last checkpoint")
        self.curves = CurvesWidget()
        self.log_view = QtWidgets.QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(400)
        self.log_view.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        self.log_view.setPlaceholderText("The job's log appears here.")

        head = QtWidgets.QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(self.state_label)
        head.addWidget(self.cancel_btn)
        head.addWidget(self.resume_btn)
        right = QtWidgets.QWidget()
        rl = QtWidgets.QVBoxLayout(right)
        rl.setContentsMargins(6, 0, 0, 0)
        rl.addLayout(head)
        rl.addWidget(self.bar)
        rl.addWidget(self.stats)
        split = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        split.addWidget(self.curves)
        split.addWidget(self.log_view)
        split.setSizes([260, 110])
        rl.addWidget(split, 1)
        outer = QtWidgets.QSplitter()
        outer.addWidget(self.list)
        outer.addWidget(right)
        outer.setStretchFactor(1, 1)
        outer.setSizes([340, 1000])
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(outer)

        self.items: dict[int, QtWidgets.QTreeWidgetItem] = {}
        self.current: int | None = None
        self._last_log_len = 0
        self._dirty = False
        self._timer = QtCore.QTimer(self)          # repaint at most 5 times a second
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._flush)
        self._timer.start()
        manager.reset.connect(self.rebuild)
        manager.added.connect(self._added)
        manager.changed.connect(self._changed)
        manager.progressed.connect(self._progressed)
        self.list.currentItemChanged.connect(self._select)
        self.cancel_btn.clicked.connect(lambda: self.current is not None and manager.cancel(self.current))
        self.resume_btn.clicked.connect(lambda: self.current is not None and manager.resume(self.current))
        self.rebuild()

    # -- list -----------------------------------------------------------------------------------------
    def rebuild(self) -> None:
        self.list.clear()
        self.items = {}
        for rid in sorted(self.manager.entries, reverse=True):
            self._add_item(rid, at_top=False)
        first = self.list.topLevelItem(0)
        self.list.setCurrentItem(first)
        if first is None:
            self._select(None, None)

    def _add_item(self, rid: int, at_top: bool = True) -> None:
        it = QtWidgets.QTreeWidgetItem()
        it.setData(0, QtCore.Qt.ItemDataRole.UserRole, rid)
        if at_top:
            self.list.insertTopLevelItem(0, it)
        else:
            self.list.addTopLevelItem(it)
        self.items[rid] = it
        self._update_item(rid)

    def _added(self, rid: int) -> None:
        self._add_item(rid)
        self.list.setCurrentItem(self.items[rid])

    def _update_item(self, rid: int) -> None:
        e, it = self.manager.entries.get(rid), self.items.get(rid)
        if e is None or it is None:
            return
        it.setText(0, e.title)
        it.setToolTip(0, str(e.run_dir))
        it.setText(1, e.state)
        it.setForeground(1, QtGui.QBrush(QtGui.QColor(STATE_COLORS.get(e.state, theme.TEXT))))
        frac = e.fraction
        it.setText(2, f"{100 * frac:.0f} %" if frac is not None else "")

    def _changed(self, rid: int) -> None:
        self._update_item(rid)
        if rid == self.current:
            self._show(rid, full=True)

    def _progressed(self, rid: int) -> None:
        self._dirty = True

    def _flush(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        running = self.manager.running()
        if running is not None:
            self._update_item(running.run_id)
        if self.current is not None:
            self._show(self.current)

    def _select(self, item, _prev) -> None:
        self.current = item.data(0, QtCore.Qt.ItemDataRole.UserRole) if item is not None else None
        self._last_log_len = -1
        self._show(self.current, full=True)

    def select_run(self, rid: int) -> None:
        if rid in self.items:
            self.list.setCurrentItem(self.items[rid])

    # -- details --------------------------------------------------------------------------------------
    def _show(self, rid: int | None, full: bool = False) -> None:
        e = self.manager.entries.get(rid) if rid is not None else None
        if e is None:
            self.title.setText("No job yet: start one from the Train menu")
            self.state_label.setText("")
            self.bar.setRange(0, 1)
            self.bar.setValue(0)
            self.bar.setFormat("")
            self.stats.setText("")
            self.cancel_btn.setEnabled(False)
            self.resume_btn.setEnabled(False)
            self.curves.show_entry(None)
            self.log_view.clear()
            return
        self.title.setText(e.title)
        color = STATE_COLORS.get(e.state, theme.TEXT)
        self.state_label.setText(f"<span style='color:{color}; font-weight:bold'>{e.state.upper()}</span>")
        if e.total and e.total > 0:
            self.bar.setRange(0, e.total)
            self.bar.setValue(min(e.step, e.total))
            self.bar.setFormat(f"{100 * e.step / e.total:.0f} %  ({e.step:,} / {e.total:,})"
                               if e.state != "finished" else "done")
        elif e.state == "running":
            self.bar.setRange(0, 0)
        else:
            self.bar.setRange(0, 1)
            self.bar.setValue(1 if e.state == "finished" else 0)
            self.bar.setFormat("done" if e.state == "finished" else "")
        parts = []
        if e.message:
            parts.append(e.message)
        if e.state == "running":
            parts.append(f"ETA {fmt_duration(e.eta_s)}")
            if e.images_per_s:
                parts.append(f"{e.images_per_s:.1f} images/s")
        if e.error and e.state != "running":
            parts.append(f"<span style='color:{theme.ERROR}'>{e.error[:200]}</span>")
        dev = e.config.get("device") or "auto"
        parts.append(f"device {dev}")
        self.stats.setText("  ·  ".join(parts))
        self.cancel_btn.setEnabled(e.state in ACTIVE)
        self.resume_btn.setEnabled(e.state in RESUMABLE)
        self.curves.show_entry(e)
        if full or len(e.log) != self._last_log_len:
            self._last_log_len = len(e.log)
            bar = self.log_view.verticalScrollBar()
            at_end = bar.value() >= bar.maximum() - 2
            self.log_view.setPlainText("\n".join(e.log))
            if at_end or full:
                bar.setValue(bar.maximum())
