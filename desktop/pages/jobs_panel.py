"""Training jobs in the window: a queue of ``core`` runs (pretrain, fine-tune, ensemble, predict) with live
progress, curves, a log tail, cancel and resume.

The run lifecycle is core's (:mod:`core.project.runs`): a run row is created the moment a job is queued,
and the job's :class:`~core.project.runs.RunRecorder` writes its state, checkpoints, metrics and error, the
same way as for a ``medssl finetune --project`` run. :class:`JobsManager` (no widgets) is the view over it:
the queue (one job at a time: training saturates the CPU/GPU), cancel and resume, and the live numbers the
panel draws. A run left queued or running by a process that is gone is marked interrupted by core when the
project is opened, and offered for resume; a run another process still runs (the CLI) is shown as
running. The job's thread reports through :class:`desktop.bridge.jobs_bridge.JobRunner`, so the UI thread
only copies numbers; epoch boundaries come from the typed EPOCH_END event.

:class:`JobsPanel` is the view (a dock): job list | progress, phase, ETA, images/s, loss and validation
curves (pyqtgraph), log tail, Cancel / Resume.
"""

from __future__ import annotations

import html
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from core.project import runs as core_runs
from core.project.runs import (ACTIVE_STATES, JOB_KINDS, RESUMABLE_STATES, Run, read_history, read_log_tail,
                               read_step_losses)
from core.train.estimate import format_duration
from desktop import theme
from desktop.bridge.jobs_bridge import AsyncCaller, JobRunner
from desktop.pages.library import whole_percent
from desktop.widgets.plots import LegendPlot, app_plot
from desktop.widgets.elided_label import ElidedLabel

log = logging.getLogger(__name__)

OTHER_PROCESS_NOTE = "running in another process (e.g. the medssl command line)"


def kind_label(kind: str) -> str:
    return JOB_KINDS[kind].label if kind in JOB_KINDS else kind


# -- the queue -----------------------------------------------------------------------------------------
@dataclass
class JobEntry:
    """What the panel shows of one run: the stored record's fields plus the live numbers of its job."""
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
    phase: str = ""
    eta_s: float | None = None
    images_per_s: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    log: deque = field(default_factory=lambda: deque(maxlen=400))
    error: str = ""
    other_process: bool = False     # a run some other process runs (found queued/running and alive on load)
    losses_read: bool = False       # the step losses of earlier sessions / jobs were read from the run folder
    _rate_start: tuple[float, int] | None = None

    @classmethod
    def of(cls, run: Run) -> "JobEntry":
        return cls(run.id, run.kind, run.name, dict(run.config), Path(run.run_dir or ""), run.state, run.created,
                   dict(run.metrics), error=run.error if run.state != core_runs.FINISHED else "")

    @property
    def fraction(self) -> float | None:
        return self.step / self.total if self.total and self.total > 0 else None

    @property
    def cancellable(self) -> bool:
        return self.runner is not None or (self.state == core_runs.QUEUED and not self.other_process)

    @property
    def title(self) -> str:
        return f"#{self.run_id} {kind_label(self.kind)}: {self.name}"

    def add_loss(self, step: int, loss: float) -> None:
        """A live loss point; a resumed job repeats the steps after its checkpoint, whose points it replaces."""
        while self.losses and self.losses[-1][0] >= step:
            self.losses.pop()
        self.losses.append((step, loss))

    def add_epoch(self, epoch: int, metrics: dict) -> None:
        """An EPOCH_END event's row into the per-epoch history (replacing a row of the same epoch)."""
        row = {"epoch": epoch, **metrics}
        self.history = [h for h in self.history if h.get("epoch") != epoch] + [row]


class JobsManager(QtCore.QObject):
    """The project's job queue (UI thread). Connect to the signals; call :meth:`submit`."""

    added = QtCore.Signal(int)          # run id
    changed = QtCore.Signal(int)        # state changed
    progressed = QtCore.Signal(int)     # new numbers (progress, loss, log)
    epochEnded = QtCore.Signal(int, int)    # run id, epoch (its history row is in the entry)
    runFinished = QtCore.Signal(int, str)   # run id, kind (finished successfully)
    reset = QtCore.Signal()             # the whole list was replaced (project opened / closed)

    def __init__(self, project, caller: AsyncCaller, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.project = project
        self.caller = caller            # reads run folders off the UI thread
        self.entries: dict[int, JobEntry] = {}
        self.paused = False             # tests: queue without starting
        project.storeReady.connect(self.load)

    # -- state ----------------------------------------------------------------------------------------
    @property
    def store(self):
        return self.project.store

    def running(self) -> JobEntry | None:
        """The entry whose job this window runs now (a run of another process does not hold the queue)."""
        for e in self.entries.values():
            if e.state == core_runs.RUNNING and e.runner is not None:
                return e
        return None

    def load(self) -> None:
        """Read the project's runs (core marks those left by a process that is gone as interrupted)."""
        live = {rid: e for rid, e in self.entries.items() if e.runner is not None}   # never re-mark our own
        self.entries = {}
        store = self.store
        if store is None:
            self.reset.emit()
            return
        for run in core_runs.recover_interrupted(store, ours=live):
            if run.kind not in JOB_KINDS:
                continue
            if run.id in live:
                self.entries[run.id] = live[run.id]
                continue
            self.entries[run.id] = self._entry_of(run)
        self.reset.emit()

    @staticmethod
    def _entry_of(run: Run) -> JobEntry:
        e = JobEntry.of(run)
        e.history = read_history(e.kind, e.run_dir)
        e.log.extend(read_log_tail(e.run_dir))
        if run.state == core_runs.FINISHED:
            e.step = e.total = 1
        elif run.state in ACTIVE_STATES:
            e.other_process = True
            e.message = OTHER_PROCESS_NOTE
        return e

    def _refresh(self, e: JobEntry) -> None:
        """Copy the fields core recorded (state, metrics, config, error) into the entry."""
        try:
            run = self.store.get_run(e.run_id) if self.store is not None else None
        except KeyError:     # the run was deleted meanwhile
            run = None
        if run is not None:
            e.state, e.metrics, e.config = run.state, dict(run.metrics), dict(run.config)
            e.error = run.error if run.state != core_runs.FINISHED else ""

    # -- queue ----------------------------------------------------------------------------------------
    def submit(self, kind: str, name: str, config: dict) -> int:
        """Queue a job; returns its run id. The run folder is ``.medssl/runs/<kind>-<id>-<name>``."""
        core_runs.job_kind(kind)
        store = self.store
        if store is None or self.project.paths is None:
            raise RuntimeError("open a project first")
        run = core_runs.create_run(store, kind, name, config)
        self.entries[run.id] = JobEntry.of(run)
        self.added.emit(run.id)
        self._pump()
        return run.id

    def cancel(self, run_id: int) -> None:
        e = self.entries.get(run_id)
        if e is None:
            return
        if e.state == core_runs.RUNNING and e.runner is not None:
            e.runner.cancel()
            e.message = "cancelling… (saving a checkpoint)"
            self.progressed.emit(run_id)
        elif e.state == core_runs.QUEUED and e.runner is None and not e.other_process:
            core_runs.cancel_queued(self.store, run_id)
            self._refresh(e)
            self.changed.emit(run_id)
            self._pump()

    def resume(self, run_id: int) -> None:
        e = self.entries.get(run_id)
        if e is None or e.state not in RESUMABLE_STATES:
            return
        e.resume = True
        e.error = ""
        core_runs.queue_again(self.store, run_id)
        e.state = core_runs.QUEUED
        self.changed.emit(run_id)
        self._pump()

    def can_resume(self, run_id: int) -> bool:
        e = self.entries.get(run_id)
        return e is not None and e.state in RESUMABLE_STATES

    def start_queued(self) -> None:
        self.paused = False
        self._pump()

    def _pump(self) -> None:
        if self.paused or self.running() is not None or self.store is None:
            return
        queued = sorted((e for e in self.entries.values() if e.state == core_runs.QUEUED and e.runner is None
                         and not e.other_process),
                        key=lambda e: e.run_id)
        if queued:
            self._start(queued[0])

    def _start(self, e: JobEntry) -> None:
        store = self.store
        try:
            job = core_runs.build_job(store, store.get_run(e.run_id), resume=e.resume)
        except Exception as exc:   # bad config: the run fails visibly, the queue goes on
            log.exception("cannot build job")
            e.log.append(f"{type(exc).__name__}: {exc}")
            core_runs.fail_run(store, e.run_id, f"{type(exc).__name__}: {exc}")
            self._refresh(e)
            self.changed.emit(e.run_id)
            QtCore.QTimer.singleShot(0, self._pump)
            return
        runner = JobRunner(job, self)
        e.runner = runner
        if e.resume:        # the loss so far stays on the plot: this session's points, or the run folder's
            self.read_losses(e.run_id)
        else:
            e.losses.clear()
            e.losses_read = True
        e.step, e.total, e.eta_s, e.images_per_s, e._rate_start = 0, -1, None, None, None
        e.message, e.phase = "starting…", ""
        e.log.append(f"--- {'resumed' if e.resume else 'started'} {time.strftime('%Y-%m-%d %H:%M:%S')} ---")
        rid = e.run_id
        runner.progress.connect(lambda step, total, msg, m, rid=rid: self._on_progress(rid, step, total, msg, m))
        runner.phaseChanged.connect(lambda phase, rid=rid: self._on_phase(rid, phase))
        runner.epochEnded.connect(lambda epoch, _total, m, rid=rid: self._on_epoch_end(rid, epoch, m))
        runner.logged.connect(lambda msg, rid=rid: self._on_log(rid, msg))
        runner.finished.connect(lambda result, rid=rid: self._on_finished(rid))
        runner.failed.connect(lambda msg, rid=rid: self._on_failed(rid, msg))
        runner.cancelled.connect(lambda rid=rid: self._on_cancelled(rid))
        e.state = core_runs.RUNNING       # the recorder writes it to the store when the job thread starts
        self.changed.emit(rid)
        runner.start()

    # -- events (UI thread) ---------------------------------------------------------------------------
    def _on_progress(self, rid: int, step: int, total: int, msg: str, metrics: dict) -> None:
        e = self.entries.get(rid)
        if e is None:
            return
        now = time.monotonic()
        if e._rate_start is None or step < e._rate_start[1]:
            e._rate_start = (now, step)
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
            e.add_loss(step, float(metrics["loss"]))
        self.progressed.emit(rid)

    def read_losses(self, rid: int) -> None:
        """Read the run's step losses from its folder once, in a worker thread (a long pretraining's job.log
        is large); where the file and this session's live points both have a step, the live point wins."""
        e = self.entries.get(rid)
        if e is None or e.losses_read or not has_curves(e.kind):
            return
        e.losses_read = True
        run_dir = e.run_dir
        self.caller.submit(lambda: read_step_losses(run_dir), lambda points: self._losses_read(rid, points))

    def _losses_read(self, rid: int, points: list[tuple[int, float]]) -> None:
        e = self.entries.get(rid)
        if e is None or not points:
            return
        first_live = e.losses[0][0] if e.losses else None
        e.losses = [p for p in points if first_live is None or p[0] < first_live] + e.losses
        self.progressed.emit(rid)

    def _on_phase(self, rid: int, phase: str) -> None:
        e = self.entries.get(rid)
        if e is not None:
            e.phase = phase
            self.progressed.emit(rid)

    def _on_epoch_end(self, rid: int, epoch: int, metrics: dict) -> None:
        e = self.entries.get(rid)
        if e is None:
            return
        e.add_epoch(epoch, metrics)
        self.epochEnded.emit(rid, epoch)
        self.progressed.emit(rid)

    def _on_log(self, rid: int, msg: str) -> None:
        e = self.entries.get(rid)
        if e is None:
            return
        e.log.append(msg)
        self.progressed.emit(rid)

    def _ended(self, e: JobEntry) -> None:
        """The job is over and its recorder has written the run: show what core recorded."""
        e.runner = None
        e.phase = ""
        history = read_history(e.kind, e.run_dir)     # the run folder's history is the full record
        if history:
            e.history = history
        self._refresh(e)
        self.changed.emit(e.run_id)

    def _on_finished(self, rid: int) -> None:
        e = self.entries.get(rid)
        if e is None:
            return
        if e.total > 0:
            e.step = e.total
        e.eta_s = 0.0
        e.message = "finished"
        self._ended(e)
        self.runFinished.emit(rid, e.kind)
        self._pump()

    def _on_failed(self, rid: int, msg: str) -> None:
        e = self.entries.get(rid)
        if e is None:
            return
        e.log.append(f"FAILED: {msg}")
        e.message = "failed"
        self._ended(e)
        e.error = e.error or msg
        self._pump()

    def _on_cancelled(self, rid: int) -> None:
        e = self.entries.get(rid)
        if e is None:
            return
        e.message = "cancelled: Resume continues from the last checkpoint"
        e.log.append("cancelled")
        self._ended(e)
        self._pump()

    # -- lifetime -------------------------------------------------------------------------------------
    def active_titles(self) -> list[str]:
        """The jobs this window runs or has queued (what closing the project would stop), running first."""
        mine = [e for e in self.entries.values() if e.runner is not None
                or (e.state == core_runs.QUEUED and not e.other_process)]
        return [e.title for e in sorted(mine, key=lambda e: (e.runner is None, e.run_id))]

    def shutdown(self, reason: str = "the app was closed", wait_s: float = 20.0) -> None:
        """Stop the running job (it saves a checkpoint) before the project closes; the run stays resumable
        and its record says what stopped it (``reason``, e.g. "another folder was opened"), not a crash."""
        e = self.running()
        store = self.store
        if e is not None and e.runner is not None:
            runner = e.runner
            runner.cancel()
            stopped = runner.wait_painting(wait_s)
            runner._finish()
            e.runner = None
            ended_itself = store is not None and store.get_run(e.run_id).state == core_runs.FINISHED
            if store is not None and not ended_itself:
                note = (f"stopped when {reason}: Resume continues from its last checkpoint" if stopped else
                        f"stopped when {reason} (it did not reach a safe point within {wait_s:.0f} s): "
                        "Resume continues from its last checkpoint")
                core_runs.mark_interrupted(store, e.run_id, note=note)
                e.state = core_runs.INTERRUPTED
        for q in self.entries.values():
            if q.state == core_runs.QUEUED and q.runner is None and not q.other_process and store is not None:
                core_runs.mark_interrupted(store, q.run_id, note=f"not started: {reason} while it waited; "
                                                                 "Resume starts it")
        self.entries = {}
        self.reset.emit()


# -- the view --------------------------------------------------------------------------------------------
STATE_COLORS = {"running": theme.ACCENT, "queued": theme.TEXT_DIM, "finished": "#5fbf7f", "failed": theme.ERROR,
                "cancelled": theme.WARN, "interrupted": theme.WARN}
CURVE_COLORS = ["#4e9fd8", "#f0a04b", "#b084e0", "#5fbf7f", "#e0607e", "#d6c94a"]


#: short legend names, so that the title-legend fits above the per-epoch plot
CURVE_NAMES = {"val_accuracy": "accuracy", "val_balanced_accuracy": "bal. accuracy", "val_macro_f1": "macro F1",
               "train_acc": "train acc.", "loss": "loss", "visible_loss": "visible loss", "feat_std": "feature std"}


def has_curves(kind: str) -> bool:
    """Kinds that train epoch by epoch (a loss per step, a history row per epoch); the others (ensemble,
    prediction, study) show their report instead of empty plots."""
    return kind in JOB_KINDS and JOB_KINDS[kind].history_file is not None


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
        self.loss_plot = app_plot("Training loss", "loss", "step", whole_x=True)
        self.loss_curve = self.loss_plot.plot(pen=pg.mkPen(theme.ACCENT, width=1.5))
        self.loss_smooth = self.loss_plot.plot(pen=pg.mkPen("#f0a04b", width=2))
        self._val_box: LegendPlot | None = None
        self.val_curves: dict[str, pg.PlotDataItem] = {}
        self._layout = QtWidgets.QHBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.addWidget(self.loss_plot)

    @property
    def val_box(self) -> LegendPlot:
        """The per-epoch plot, made on first use: the runs browser builds its four plots one per event-loop
        turn (~20 ms each), not a pane's two at once."""
        if self._val_box is None:
            self._val_box = LegendPlot("value", "epoch", whole_x=True)
            self._layout.addWidget(self._val_box)
        return self._val_box

    @property
    def val_plot(self) -> pg.PlotWidget:
        return self.val_box.plot

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
        self.val_box.set_title(title, entries)


def ensemble_report_rows(report: dict) -> list[list[str]]:
    """Table rows (model, weight, temperature, accuracy, ECE before -> after, NLL before -> after) of an
    ensemble run's report.json."""
    def pair(before: dict, after: dict, key: str) -> str:
        b, a = before.get(key), after.get(key)
        if not isinstance(b, (int, float)):
            return "–"
        return f"{b:.3f}" if not isinstance(a, (int, float)) or a == b else f"{b:.3f} → {a:.3f}"

    rows = []
    for m in report.get("members") or []:
        t = m.get("temperature")
        temp = f"{t:.2f}" if isinstance(t, (int, float)) else "–"
        if m.get("temperature_at_limit"):
            temp += " (limit)"
        acc = m.get("after", {}).get("accuracy")
        rows.append([str(m.get("name", "")), f"{m.get('weight', 1.0):g}", temp,
                     f"{acc:.1%}" if isinstance(acc, (int, float)) else "–",
                     pair(m.get("before", {}), m.get("after", {}), "ece"),
                     pair(m.get("before", {}), m.get("after", {}), "nll")])
    ens = report.get("ensemble") or {}
    acc = ens.get("after", {}).get("accuracy")
    rows.append(["Ensemble", "", "", f"{acc:.1%}" if isinstance(acc, (int, float)) else "–",
                 pair(ens.get("before", {}), ens.get("after", {}), "ece"),
                 pair(ens.get("before", {}), ens.get("after", {}), "nll")])
    return rows


LIMIT_NOTE = ("A temperature marked (limit) is where the fit stopped, not a fitted value: on this member's "
              "validation images the loss kept falling towards {where}, which happens when its predictions "
              "there are {what} (often a very small validation split).")


class ReportView(QtWidgets.QWidget):
    """What a run without training curves produced: an ensemble's calibration report (report.json in its
    folder), a prediction's or a study's summary numbers (the run's metrics)."""

    ENSEMBLE_HEADERS = ["Model", "Weight", "Temperature", "Accuracy", "ECE (before → after)",
                        "NLL (before → after)"]

    def __init__(self, parent=None):
        super().__init__(parent)
        self.caption = QtWidgets.QLabel()
        self.caption.setObjectName("dim")
        self.caption.setWordWrap(True)
        self.caption.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.table = QtWidgets.QTreeWidget()
        self.table.setRootIsDecorated(False)
        self.table.setUniformRowHeights(True)
        self.table.header().setStretchLastSection(False)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.caption)
        lay.addWidget(self.table, 1)
        self.rows: list[list[str]] = []

    def show_entry(self, e: JobEntry | None) -> None:
        self.table.clear()
        self.rows = []
        if e is None:
            self.caption.setText("")
            return
        if e.kind == "ensemble":
            self._ensemble(e)
        else:
            self._metrics(e)
        for r in self.rows:
            it = QtWidgets.QTreeWidgetItem(r)
            for c in range(1, len(r)):
                it.setTextAlignment(c, QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
            if len(r) > 2 and r[2].endswith("(limit)"):
                it.setForeground(2, QtGui.QBrush(QtGui.QColor(theme.WARN)))
                it.setToolTip(2, self.caption.toolTip())
            self.table.addTopLevelItem(it)
        for c in range(self.table.columnCount()):
            self.table.resizeColumnToContents(c)

    def _ensemble(self, e: JobEntry) -> None:
        from core.train.checkpoint import read_json

        self.table.setHeaderLabels(self.ENSEMBLE_HEADERS)
        self.caption.setToolTip("")
        path = e.run_dir / "report.json"
        if not path.is_file():
            self.caption.setText("The calibration report appears here when the ensemble has been evaluated."
                                 if e.state != core_runs.FINISHED else f"No report: {path} is missing.")
            return
        try:
            report = read_json(path)
        except (OSError, ValueError) as exc:
            self.caption.setText(f"Cannot read the report: {exc}")
            return
        self.rows = ensemble_report_rows(report)
        at_limit = [m for m in report.get("members") or [] if m.get("temperature_at_limit")]
        text = (f"{report.get('split', '?')} split, {report.get('n', 0)} images; each member's temperature "
                "was fitted on its validation split.")
        if at_limit:
            high = any(m.get("temperature", 1.0) > 1.0 for m in at_limit)
            note = LIMIT_NOTE.format(where="an infinite temperature" if high else "a temperature of zero",
                                     what="no better than a constant" if high else "all right with a margin")
            text += " " + note
            self.caption.setToolTip(note)
        self.caption.setText(text)

    def _metrics(self, e: JobEntry) -> None:
        self.table.setHeaderLabels(["Result", "Value"])
        self.caption.setToolTip("")
        self.rows = [[k.replace("_", " "), f"{v:.4g}" if isinstance(v, float) else str(v)]
                     for k, v in e.metrics.items()]
        self.caption.setText("" if self.rows else "The result appears here when the job has finished.")


class RunView(QtWidgets.QStackedWidget):
    """Training curves for the kinds that train, the report for the others: an ensemble or a prediction
    never shows empty plots left with the previous run's axes. A training run with nothing to plot yet
    (queued, or failed before its first step) says so instead of showing empty, squashed axes."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._curves: CurvesWidget | None = None
        self.report = ReportView()
        self.empty = QtWidgets.QLabel()
        self.empty.setObjectName("dim")
        self.empty.setWordWrap(True)
        self.empty.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.addWidget(self.report)
        self.addWidget(self.empty)

    @property
    def curves(self) -> CurvesWidget:
        """Made when first needed: its plots cost ~20 ms of UI thread each, and a view that shows a report or
        says why there is nothing to plot never needs them."""
        if self._curves is None:
            self._curves = CurvesWidget()
            self.insertWidget(0, self._curves)
        return self._curves

    @staticmethod
    def shows_curves(e: JobEntry | None) -> bool:
        """Whether ``e`` is shown as curves (a training run with steps or epochs recorded)."""
        return e is not None and has_curves(e.kind) and bool(e.losses or e.history)

    def show_entry(self, e: JobEntry | None, full: bool = True) -> None:
        if e is not None and not has_curves(e.kind):
            if full:            # a report changes when the run does (state, metrics), not with each progress tick
                self.report.show_entry(e)
            self.setCurrentWidget(self.report)
            return
        if not self.shows_curves(e):
            self.empty.setText(nothing_to_plot(e))
            self.setCurrentWidget(self.empty)
            return
        self.curves.show_entry(e)
        self.setCurrentWidget(self.curves)


def nothing_to_plot(e: JobEntry | None) -> str:
    """Why a training run shows no curves."""
    if e is None:
        return "No job selected."
    if e.state in (core_runs.QUEUED, core_runs.RUNNING):
        return "The curves appear with the first training steps."
    return "No training step was recorded: the run ended before its first step (its message is above)."


class JobsPanel(QtWidgets.QWidget):
    """Job list, details of the selected job (progress, ETA, images/s, curves, log), Cancel / Resume."""

    def __init__(self, manager: JobsManager, parent=None):
        super().__init__(parent)
        self.manager = manager
        self.list = QtWidgets.QTreeWidget()
        self.list.setHeaderLabels(["Job", "State", "Progress"])
        self.list.setRootIsDecorated(False)
        self.list.setUniformRowHeights(True)
        self.list.setMinimumWidth(220)
        self.list.header().setStretchLastSection(False)
        self.list.header().setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.list.header().setSectionResizeMode(1, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        self.list.header().setSectionResizeMode(2, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)

        self.title = ElidedLabel("No job selected")
        self.title.setStyleSheet("font-weight: bold; font-size: 11pt;")
        self.state_label = QtWidgets.QLabel()
        self.bar = QtWidgets.QProgressBar()
        self.bar.setTextVisible(True)
        self.stats = QtWidgets.QLabel()
        self.stats.setObjectName("dim")
        self.stats.setWordWrap(True)             # a long error wraps; it never widens the window
        self.stats.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.cancel_btn = QtWidgets.QPushButton(theme.icon("cancel"), "Cancel")
        self.resume_btn = QtWidgets.QPushButton(theme.icon("next"), "Resume")
        self.cancel_btn.setToolTip("Stop the job at the next safe point; a checkpoint is saved")
        self.resume_btn.setToolTip("Continue a cancelled, failed or interrupted job from its last checkpoint")
        self.view = RunView()
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
        split.addWidget(self.view)
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

    @property
    def curves(self) -> CurvesWidget:
        return self.view.curves

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
        it.setText(2, f"{whole_percent(e.step, e.total)} %" if frac is not None else "")

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
        if self.current is not None:
            self.manager.read_losses(self.current)
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
            self.view.show_entry(None)
            self.log_view.clear()
            return
        self.title.setText(e.title)
        color = STATE_COLORS.get(e.state, theme.TEXT)
        doing = f" · {e.phase}" if e.phase and e.state == core_runs.RUNNING else ""
        self.state_label.setText(f"<span style='color:{color}; font-weight:bold'>{e.state.upper()}</span>{doing}")
        if e.total and e.total > 0:
            self.bar.setRange(0, e.total)
            self.bar.setValue(min(e.step, e.total))
            self.bar.setFormat(f"{whole_percent(e.step, e.total)} %  ({e.step:,} / {e.total:,})"
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
            parts.append(f"ETA {format_duration(e.eta_s, with_seconds=True)}")
            if e.images_per_s:
                parts.append(f"{e.images_per_s:.1f} images/s")
        if e.error and e.state != "running":
            error = e.error if len(e.error) <= 1000 else e.error[:1000] + "…"    # it wraps; a traceback is long
            parts.append(f"<span style='color:{theme.ERROR}'>{html.escape(error)}</span>")
        dev = e.config.get("device") or "auto"
        parts.append(f"device {dev}")
        self.stats.setText("  ·  ".join(parts))
        self.stats.setToolTip(e.error if e.error and e.state != "running" else "")
        self.cancel_btn.setEnabled(e.cancellable)
        self.resume_btn.setEnabled(e.state in RESUMABLE_STATES)
        self.view.show_entry(e, full)
        if full or len(e.log) != self._last_log_len:
            self._last_log_len = len(e.log)
            bar = self.log_view.verticalScrollBar()
            at_end = bar.value() >= bar.maximum() - 2
            self.log_view.setPlainText("\n".join(e.log))
            if at_end or full:
                bar.setValue(bar.maximum())
