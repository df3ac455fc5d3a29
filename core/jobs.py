"""Job engine: long work (scan, pretrain, fine-tune, predict) as a cancellable, resumable task.

A job is a plain function ``fn(ctx) -> result``. It reports typed progress events through ``ctx`` and
calls ``ctx.check_cancelled()`` at safe points (between batches, between files). Resuming is the
function's own business: it keeps its state under ``ctx.state_dir`` (a checkpoint, a done-list) and
picks it up when it is run again with the same state dir. The CLI renders events as a progress bar;
the desktop app forwards the same events to Qt signals. No Qt here.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from core.atomic import write_json_atomic

log = logging.getLogger(__name__)



def release_cuda_cache() -> bool:
    """Hand the CUDA memory torch's allocator still caches back to the driver once a job is over: the window's
    process lives on and would keep a whole training run's worth of GPU memory from other programs. A job
    that never imported torch, or never touched CUDA, has nothing to release (False)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return False
    torch.cuda.empty_cache()
    return True

class JobState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


class EventKind(str, Enum):
    STARTED = "started"
    PROGRESS = "progress"
    EPOCH_END = "epoch_end"       # an epoch finished: ``epoch`` and that epoch's metrics (its history row)
    LOG = "log"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ProgressEvent:
    """``phase`` names what the job is doing now ("training", "validating", "decoding images", a fold);
    ``epoch`` is the 1-based epoch a PROGRESS event belongs to, or the one an EPOCH_END event closes."""
    job_id: str
    kind: EventKind
    step: int = 0
    total: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    phase: str = ""
    epoch: int | None = None
    time: float = field(default_factory=time.time)

    def to_json(self) -> str:
        d = asdict(self)
        d["kind"] = self.kind.value
        return json.dumps(d)


class JobCancelled(Exception):
    """Raised inside a job at a safe point after cancel() was requested."""


Listener = Callable[[ProgressEvent], None]


class JobContext:
    """What a running job sees: progress reporting, cancellation, a log and a state folder."""

    def __init__(self, job: "Job"):
        self._job = job

    @property
    def job_id(self) -> str:
        return self._job.id

    @property
    def state_dir(self) -> Path | None:
        return self._job.state_dir

    @property
    def cancel_requested(self) -> bool:
        return self._job._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._job._cancel.is_set():
            raise JobCancelled(f"job {self._job.name} cancelled")

    def progress(self, step: int, total: int | None = None, message: str = "", *, phase: str = "",
                 epoch: int | None = None, **metrics: float) -> None:
        self._job._emit(ProgressEvent(self._job.id, EventKind.PROGRESS, step, total, _floats(metrics), message,
                                      phase, epoch))

    def epoch_end(self, epoch: int, total_epochs: int | None, metrics: dict[str, float],
                  message: str = "") -> None:
        """Epoch ``epoch`` (1-based) is done and its row is in the run's history file."""
        self._job._emit(ProgressEvent(self._job.id, EventKind.EPOCH_END, epoch, total_epochs, _floats(metrics),
                                      message, epoch=epoch))

    def log(self, message: str) -> None:
        self._job._emit(ProgressEvent(self._job.id, EventKind.LOG, message=message))


def _floats(metrics: dict | None) -> dict[str, float]:
    """Numeric metrics only (a history row may carry strings such as a phase name)."""
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Job:
    """One unit of long work. Run it in a background thread with start(), or inline with run()."""

    def __init__(self, name: str, fn: Callable[[JobContext], Any], *, state_dir: str | Path | None = None,
                 log_file: str | Path | None = None):
        self.id = uuid.uuid4().hex[:12]
        self.name = name
        self.fn = fn
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if log_file is None and self.state_dir is not None:
            log_file = self.state_dir / "job.log"
        self.log_file = Path(log_file) if log_file is not None else None
        self.state = JobState.PENDING
        self.result: Any = None
        self.error: str | None = None
        self.last_event: ProgressEvent | None = None
        self._listeners: list[Listener] = []
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- events -----------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every event (from the job's thread). Returns an unsubscribe function."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    def _emit(self, event: ProgressEvent) -> None:
        self.last_event = event
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "a", encoding="utf-8") as fh:
                fh.write(event.to_json() + "\n")
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a broken view must never kill the work
                log.exception("job listener failed")

    def _write_status(self) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        status = {"id": self.id, "name": self.name, "state": self.state.value, "error": self.error,
                  "time": time.time()}
        try:
            write_json_atomic(self.state_dir / "job.json", status, indent=1)
        except OSError as exc:     # a full disk must not hide the job's own error
            log.error("%s: job state %s not saved (%s)", self.state_dir / "job.json", status["state"], exc)

    # -- running ----------------------------------------------------------------------------------
    def run(self) -> Any:
        """Run in the calling thread; returns the result or raises the job's exception."""
        self.state = JobState.RUNNING
        self._write_status()
        self._emit(ProgressEvent(self.id, EventKind.STARTED, message=self.name))
        try:
            self.result = self.fn(JobContext(self))
        except JobCancelled as exc:
            self.state = JobState.CANCELLED
            self._write_status()
            self._emit(ProgressEvent(self.id, EventKind.CANCELLED, message=str(exc)))
            raise
        except BaseException as exc:
            self.state = JobState.FAILED
            self.error = f"{type(exc).__name__}: {exc}"
            self._write_status()
            self._emit(ProgressEvent(self.id, EventKind.FAILED, message=self.error))
            if self.log_file is not None:
                with open(self.log_file, "a", encoding="utf-8") as fh:
                    fh.write(traceback.format_exc())
            raise
        else:
            self.state = JobState.FINISHED
            self._write_status()
            self._emit(ProgressEvent(self.id, EventKind.FINISHED, message=self.name))
            return self.result
        finally:
            release_cuda_cache()
            self._done.set()

    def start(self) -> "Job":
        """Run in a daemon worker thread; errors are kept in ``state``/``error``, not raised."""
        def target() -> None:
            try:
                self.run()
            except BaseException:
                pass
        self._thread = threading.Thread(target=target, name=f"job-{self.name}", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()


def previous_state(state_dir: str | Path) -> dict | None:
    """The status a job left in ``state_dir`` (for 'resume a cancelled or crashed job')."""
    path = Path(state_dir) / "job.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())
