"""Runs: the life of one pretraining, fine-tuning, ensemble or prediction job in a project, without Qt.

A run is a row in the store's ``runs`` table (:class:`Run`) plus a folder,
``<project dir>/runs/<kind>-<id>-<name>`` (the layout every existing project already has). Whoever starts
work with a project (the window's queue, ``medssl finetune --project``) goes through :func:`create_run` and
:func:`start_run`, so every run is recorded the same way: a :class:`RunRecorder` subscribes to the core
``Job`` and writes the state transitions (queued -> running -> finished / failed with its error /
cancelled), the checkpoints found in the folder and the final metrics (:class:`RunResult`).

A running run holds an OS lock on ``RUN/run.lock`` for as long as its process lives. A run the store says
is queued or running whose lock nobody holds was interrupted (the process died or was closed):
:func:`recover_interrupted` says so in the store when a project is opened, and leaves runs of other live
processes (the CLI while the window is open) running.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from core.jobs import EventKind, Job, ProgressEvent

if TYPE_CHECKING:
    from core.project.store import ProjectStore

log = logging.getLogger(__name__)

QUEUED, PENDING, RUNNING = "queued", "pending", "running"
FINISHED, FAILED, CANCELLED, INTERRUPTED = "finished", "failed", "cancelled", "interrupted"
#: states the store stamps with a ``finished`` time
TERMINAL_RUN_STATES = (FINISHED, FAILED, CANCELLED)
#: states of a run that has not ended (``pending``: the store's default for a row added without a state)
ACTIVE_STATES = (QUEUED, PENDING, RUNNING)
RESUMABLE_STATES = (CANCELLED, FAILED, INTERRUPTED)
INTERRUPTED_NOTE = "interrupted (the app was closed or crashed while it ran)"
LOCK_FILE = "run.lock"


# -- the record -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One row of the ``runs`` table. ``error`` says why a run failed or was interrupted ("" otherwise)."""
    id: int
    kind: str
    name: str
    config: dict
    state: str
    created: float
    finished: float | None
    metrics: dict
    run_dir: str | None
    error: str = ""

    @property
    def folder(self) -> Path | None:
        return Path(self.run_dir) if self.run_dir else None

    @property
    def resumable(self) -> bool:
        return self.state in RESUMABLE_STATES

    @property
    def ensemble_file(self) -> str | None:
        """The ensemble file an ensemble run wrote, or the one a prediction run used."""
        value = self.config.get("ensemble")
        if isinstance(value, str) and value:
            return value
        if self.kind == "ensemble" and self.run_dir:
            return str(Path(self.run_dir) / "ensemble.json")
        return None


@dataclass(frozen=True)
class RunResult:
    """What a finished job leaves in the runs table: JSON-safe scalar metrics, and for an ensemble run the
    file later prediction runs load."""
    metrics: dict[str, Any] = field(default_factory=dict)
    ensemble_file: str | None = None

    @classmethod
    def of(cls, kind: str, result: Any) -> "RunResult":
        if not isinstance(result, dict):
            return cls()
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
                    if _finite_number(vv):
                        out[f"{k}_{kk}"] = vv
        if kind == "pretrain":
            logs = result.get("epoch_logs") or []
            if logs:
                out["final_loss"] = logs[-1].get("loss")
        ensemble_file = None
        if kind == "ensemble":
            for kk, vv in ((result.get("ensemble") or {}).get("after") or {}).items():
                if _finite_number(vv):
                    out[f"ensemble_{kk}"] = vv
            ensemble_file = result.get("ensemble_file") or None
        return cls(out, ensemble_file)


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


# -- kinds: kind -> job, and what its folder holds ---------------------------------------------------------
@dataclass(frozen=True)
class JobKind:
    """Everything that differs between kinds of run, in one place: a new kind is one entry in JOB_KINDS."""
    label: str
    build: Callable[["ProjectStore", Run, bool], Job]     # (store, run, resume) -> the core job
    history_file: str | None = None                        # per-epoch JSON lines in the run folder
    checkpoints: tuple[str, ...] = ()                      # files / folders recorded as checkpoints


def _pretrain_job(store: "ProjectStore", run: Run, resume: bool) -> Job:
    from core.pretrain.config import TrainConfig
    from core.pretrain.trainer import make_job

    cfg = TrainConfig.from_dict({**run.config, "out": run.run_dir})
    return make_job(cfg, resume="auto", state_dir=run.folder)


def _finetune_job(store: "ProjectStore", run: Run, resume: bool) -> Job:
    from core.train.config import FinetuneConfig
    from core.train.finetune import finetune_job

    c = run.config
    return finetune_job(FinetuneConfig.from_dict(c), run.folder, folder=c.get("data"), project=str(store.path),
                        kfold=c.get("kfold"), resume=resume, folds=c.get("folds"),
                        split_name=c.get("split_name", "default"), new_split=bool(c.get("new_split")) and not resume)


def _ensemble_job(store: "ProjectStore", run: Run, resume: bool) -> Job:
    from core.inference.ensemble import ensemble_job

    c = run.config
    return ensemble_job(c["members"], run.folder, names=c.get("names"), split=c.get("split", "test"),
                        calibrate=c.get("calibrate", True), device=c.get("device"))


def _predict_job(store: "ProjectStore", run: Run, resume: bool) -> Job:
    config, run_dir = run.config, run.folder

    def predict_fn(ctx):
        from core.inference.predict import predict_folder

        out = run_dir / "predictions.csv"
        keep = config.get("store", True)
        try:       # the CPU fast path (ONNX Runtime) where it applies: what the command line gets too
            summary = predict_folder(config["folder"], out, ensemble=config["ensemble"], backend="auto",
                                     batch_size=config.get("batch_size"), num_workers=0,
                                     device=config.get("device"), ctx=ctx, store=store if keep else None,
                                     run_id=run.id)
        finally:
            store.release_thread()
        if keep:
            ctx.log(f"{summary['stored']} predictions stored in the project")
        return summary

    return Job("predict", predict_fn, state_dir=run_dir)


def _study_job(store: "ProjectStore", run: Run, resume: bool) -> Job:
    from core.study.runner import StudyConfig, study_job

    c = {k: v for k, v in run.config.items() if k in StudyConfig.__dataclass_fields__}
    return study_job(StudyConfig(**{**c, "out": str(run.folder), "project": str(store.path), "data": None}))


JOB_KINDS: dict[str, JobKind] = {
    "pretrain": JobKind("Pretraining", _pretrain_job, "log.jsonl", ("checkpoint-last", "encoder.safetensors")),
    "finetune": JobKind("Fine-tuning", _finetune_job, "history.jsonl", ("checkpoint-best", "checkpoint-last")),
    "ensemble": JobKind("Ensemble", _ensemble_job, None, ("ensemble.json",)),
    "predict": JobKind("Prediction", _predict_job, None, ("predictions.csv",)),
    "study": JobKind("Study", _study_job),
}


def job_kind(kind: str) -> JobKind:
    try:
        return JOB_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown job kind {kind!r} (known: {', '.join(JOB_KINDS)})") from None


# -- the run folder layout ----------------------------------------------------------------------------------
def slug(text: str) -> str:
    """``text`` as a short file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "run"


def runs_folder(project_dir: str | Path) -> Path:
    return Path(project_dir) / "runs"


def run_folder(project_dir: str | Path, kind: str, run_id: int, name: str) -> Path:
    return runs_folder(project_dir) / f"{kind}-{run_id}-{slug(name)}"


def project_dir_of(store: "ProjectStore") -> Path:
    """The project folder a store belongs to (``<images>/.medssl`` for ``.medssl/project.db``)."""
    return Path(store.path).parent


# -- reading a run folder -----------------------------------------------------------------------------------
def read_history(kind: str, run_dir: str | Path | None) -> list[dict]:
    """Per-epoch rows of a run folder (pretraining log.jsonl, fine-tuning history.jsonl)."""
    name = JOB_KINDS[kind].history_file if kind in JOB_KINDS else None
    if not run_dir or name is None:
        return []
    out = []
    try:
        with open(Path(run_dir) / name, encoding="utf-8") as fh:
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
    lines: deque[str] = deque(maxlen=n)
    try:
        with open(Path(run_dir) / "job.log", encoding="utf-8", errors="replace") as fh:
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


def read_step_losses(run_dir: str | Path | None) -> list[tuple[int, float]]:
    """(step, training loss) of every progress event the run's jobs wrote to RUN_DIR/job.log, over all its
    resumes: a resumed job starts again at its checkpoint's step, and the steps it repeats replace those the
    stopped job had reported after that checkpoint."""
    if not run_dir:
        return []
    points: list[tuple[int, float]] = []
    try:
        with open(Path(run_dir) / "job.log", encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                if '"loss"' not in raw:        # most lines are not progress events with a loss: skip the parse
                    continue
                try:
                    ev = json.loads(raw)
                    step, loss = int(ev["step"]), float(ev["metrics"]["loss"])
                except (ValueError, KeyError, TypeError):
                    continue
                if ev.get("kind") != "progress" or not math.isfinite(loss):
                    continue
                while points and points[-1][0] >= step:
                    points.pop()
                points.append((step, loss))
    except OSError:
        return []
    return points


def checkpoint_files(kind: str, run_dir: str | Path) -> list[tuple[Path, int | None]]:
    """The checkpoints of ``kind`` present in the folder, each with the epoch its config.json names."""
    out = []
    for name in (JOB_KINDS[kind].checkpoints if kind in JOB_KINDS else ()):
        p = Path(run_dir) / name
        if not p.exists():
            continue
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


def record_checkpoints(store: "ProjectStore", run: Run) -> None:
    """Add the checkpoints now in the run folder that the store does not list yet."""
    if not run.run_dir:
        return
    known = {c.path for c in store.checkpoints(run.id)}
    for path, epoch in checkpoint_files(run.kind, run.run_dir):
        if str(path) not in known:
            store.add_checkpoint(run.id, path, epoch)


# -- liveness: the run lock -----------------------------------------------------------------------------------
class RunLock:
    """An OS lock on RUN/run.lock, held while the run's job runs; the OS drops it when the process dies."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fh = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+b")
        if not _try_lock(fh):
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            _unlock(self._fh)
            self._fh.close()
            self._fh = None


if os.name == "nt":
    import msvcrt

    def _try_lock(fh) -> bool:
        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fh) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fh) -> bool:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _unlock(fh) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def run_is_alive(run: Run) -> bool:
    """True while some process (this one or another) runs ``run``'s job."""
    if not run.run_dir or not (Path(run.run_dir) / LOCK_FILE).exists():
        return False
    probe = RunLock(run.run_dir)
    if probe.acquire():
        probe.release()
        return False
    return True


# -- the lifecycle -------------------------------------------------------------------------------------------
def create_run(store: "ProjectStore", kind: str, name: str, config: dict, *, run_dir: str | Path | None = None,
               state: str = QUEUED) -> Run:
    """Add the run's row; its folder is ``run_dir`` or the project's ``runs/<kind>-<id>-<name>``."""
    job_kind(kind)
    run_id = store.add_run(kind, name, config, state=state)
    folder = Path(run_dir) if run_dir is not None else run_folder(project_dir_of(store), kind, run_id, name)
    if kind == "pretrain":
        config = {**config, "out": str(folder)}
    store.update_run(run_id, run_dir=folder, config=config)
    return store.get_run(run_id)


def find_run(store: "ProjectStore", kind: str, run_dir: str | Path) -> Run | None:
    """The newest run of ``kind`` recorded with this folder."""
    want = Path(run_dir).absolute()
    for run in reversed(store.list_runs(kind)):
        if run.run_dir and Path(run.run_dir).absolute() == want:
            return run
    return None


class RunRecorder:
    """Writes a job's life into its run row; subscribed to the job, so it runs in the job's thread (the store
    keeps a connection per thread, released when the job ends)."""

    def __init__(self, store: "ProjectStore", run: Run):
        self.store = store
        self.run = run            # as it was before this attempt
        self._lock = RunLock(run.run_dir) if run.run_dir else None
        self._job: Job | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._held_elsewhere = False

    def attach(self, job: Job) -> Job:
        """Subscribe to ``job`` and make it hold the run lock while it runs: a second process that starts the
        same run fails at once and leaves the run's row to the process that holds it."""
        self._job = job
        self._unsubscribe = job.subscribe(self)
        work, lock = job.fn, self._lock

        def locked(ctx):       # released by _end, after the row says how the run ended
            if lock is not None and not lock.acquire():
                self._held_elsewhere = True
                raise RuntimeError(f"run #{self.run.id} is running in another process ({lock.path} is locked); "
                                   "wait for it to end or cancel it there")
            return work(ctx)

        job.fn = locked
        return job

    def __call__(self, event: ProgressEvent) -> None:
        kind = event.kind
        if self._held_elsewhere:            # the row is the other process's to write
            if kind in (EventKind.FAILED, EventKind.CANCELLED, EventKind.FINISHED):
                self._detach()
            return
        if kind is EventKind.STARTED:
            self.store.update_run(self.run.id, state=RUNNING, error="")
        elif kind is EventKind.FINISHED:
            result = RunResult.of(self.run.kind, self._job.result if self._job is not None else None)
            config = {**self.run.config, "ensemble": result.ensemble_file} if result.ensemble_file else None
            self._end(FINISHED, metrics=result.metrics, config=config)
        elif kind in (EventKind.FAILED, EventKind.CANCELLED) and self.run.state == FINISHED:
            # a failed or cancelled attempt to continue a finished run leaves it finished, as its folder is
            # (the CLI says why the attempt failed)
            self._end(FINISHED, finished=self.run.finished)
        elif kind is EventKind.FAILED:
            self._end(FAILED, error=event.message or "failed")
        elif kind is EventKind.CANCELLED:
            self._end(CANCELLED)

    def _end(self, state: str, *, metrics: dict | None = None, config: dict | None = None, error: str = "",
             finished: float | None = None) -> None:
        try:
            record_checkpoints(self.store, self.run)
            self.store.update_run(self.run.id, state=state, metrics=metrics, config=config, error=error,
                                  finished=finished)
        finally:
            if self._lock is not None:
                self._lock.release()
            self._detach()

    def _detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.store.release_thread()


def build_job(store: "ProjectStore", run: Run, *, resume: bool = False) -> Job:
    """The core job of ``run`` (kind -> job), recorded in the store as it runs; its folder is made here."""
    if run.folder is None:
        raise ValueError(f"run #{run.id} has no run folder")
    if run_is_alive(run):       # two processes training into one folder would wreck its checkpoints
        raise RuntimeError(f"run #{run.id} is running in another process ({run.folder / LOCK_FILE} is locked); "
                           "wait for it to end or cancel it there")
    run.folder.mkdir(parents=True, exist_ok=True)
    job = job_kind(run.kind).build(store, run, resume)
    return RunRecorder(store, run).attach(job)


def start_run(store: "ProjectStore", kind: str, name: str, config: dict, *, run_dir: str | Path | None = None,
              resume: bool = False) -> tuple[Run, Job]:
    """Record a new run and return it with its (not yet started) job: ``job.run()`` or ``job.start()``.
    ``resume``: continue what ``run_dir`` holds from before the project knew it."""
    run = create_run(store, kind, name, config, run_dir=run_dir)
    return run, build_job(store, run, resume=resume)


def queue_again(store: "ProjectStore", run_id: int) -> None:
    """A cancelled, failed or interrupted run waits to be resumed."""
    store.update_run(run_id, state=QUEUED, error="")


def resume_run(store: "ProjectStore", run_id: int) -> tuple[Run, Job]:
    """The same config in the same folder again; the engine continues from its checkpoint. A finished run
    stays finished unless the attempt finishes again (with the metrics of now)."""
    run = store.get_run(run_id)
    job = build_job(store, run, resume=True)
    if run.state != FINISHED:
        queue_again(store, run_id)
    return store.get_run(run_id), job


def fail_run(store: "ProjectStore", run_id: int, error: str) -> None:
    store.update_run(run_id, state=FAILED, error=error)


def cancel_queued(store: "ProjectStore", run_id: int) -> None:
    store.update_run(run_id, state=CANCELLED)


def mark_interrupted(store: "ProjectStore", run_id: int, note: str = INTERRUPTED_NOTE) -> None:
    store.update_run(run_id, state=INTERRUPTED, error=note)


def recover_interrupted(store: "ProjectStore", *, ours: Iterable[int] = ()) -> list[Run]:
    """Say ``interrupted`` for runs left queued or running by a process that is gone. ``ours``: runs this
    process runs itself. Returns every run, as the store has them now."""
    ours = set(ours)
    for run in store.list_runs():
        if run.kind in JOB_KINDS and run.state in ACTIVE_STATES and run.id not in ours and not run_is_alive(run):
            mark_interrupted(store, run.id)
    return store.list_runs()
