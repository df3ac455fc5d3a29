"""Run a ``core.jobs.Job`` off the UI thread and re-emit its events as Qt signals.

The job runs in its own worker thread (``Job.start``); its listener is called from that thread and only
emits a signal, which Qt delivers queued to the receiver's thread (the UI thread). Views connect to the
signals and never touch the job's thread. The training-jobs panel reuses this adapter.
"""

from __future__ import annotations

import time

from PySide6 import QtCore

from core.jobs import EventKind, Job, JobState, ProgressEvent


class JobRunner(QtCore.QObject):
    """Qt face of one job. Create it in the UI thread, connect, then :meth:`start`."""

    started = QtCore.Signal(str)                       # job name
    progress = QtCore.Signal(int, int, str, dict)      # step, total (-1 = unknown), message, metrics
    phaseChanged = QtCore.Signal(str)                  # what the job does now ("training", "validating", ...)
    epochEnded = QtCore.Signal(int, int, dict)         # epoch (1-based), total epochs (-1 = unknown), metrics
    logged = QtCore.Signal(str)
    finished = QtCore.Signal(object)                   # result
    failed = QtCore.Signal(str)                        # one-line error
    cancelled = QtCore.Signal()
    done = QtCore.Signal()                             # after finished / failed / cancelled
    _event = QtCore.Signal(object)                     # internal: event hop from job thread to UI thread

    #: progress events closer together than this are dropped (a scan reports every file: 10 000
    #: queued events would keep the UI thread busy for nothing; 20 updates a second look the same)
    PROGRESS_INTERVAL_S = 0.05

    def __init__(self, job: Job, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.job = job
        self._last_progress = 0.0
        self._sent_phase = ""          # job thread: the phase of the last forwarded progress event
        self.phase = ""                # UI thread: the phase shown
        self._event.connect(self._on_event, QtCore.Qt.ConnectionType.QueuedConnection)
        self._unsubscribe = job.subscribe(self._listener)

    def _listener(self, event: ProgressEvent) -> None:
        """Runs in the job's thread: forward the event to the UI thread (progress throttled)."""
        if event.kind is EventKind.PROGRESS:
            now = time.monotonic()
            last = event.total is not None and event.step >= event.total
            new_phase = event.phase != self._sent_phase     # a phase change is never dropped
            if not last and not new_phase and now - self._last_progress < self.PROGRESS_INTERVAL_S:
                return
            self._last_progress = now
            self._sent_phase = event.phase
        self._event.emit(event)

    # -- control ----------------------------------------------------------------------------------
    def wait_painting(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the job to end while the window keeps repainting (user input waits,
        so nothing re-enters). True when it ended."""
        deadline = time.monotonic() + timeout_s
        while not self.job.wait(0.03) and time.monotonic() < deadline:
            QtCore.QCoreApplication.processEvents(QtCore.QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents, 30)
        return self.job.done

    def start(self) -> "JobRunner":
        self.job.start()
        return self

    def cancel(self) -> None:
        self.job.cancel()

    @property
    def running(self) -> bool:
        return self.job.state in (JobState.PENDING, JobState.RUNNING) and not self.job.done

    @property
    def name(self) -> str:
        return self.job.name

    # -- events (UI thread) -------------------------------------------------------------------------
    @QtCore.Slot(object)
    def _on_event(self, event: ProgressEvent) -> None:
        kind = event.kind
        if kind is EventKind.STARTED:
            self.started.emit(event.message)
        elif kind is EventKind.PROGRESS:
            if event.phase and event.phase != self.phase:
                self.phase = event.phase
                self.phaseChanged.emit(event.phase)
            self.progress.emit(int(event.step), -1 if event.total is None else int(event.total),
                               event.message, dict(event.metrics))
        elif kind is EventKind.EPOCH_END:
            self.epochEnded.emit(int(event.epoch if event.epoch is not None else event.step),
                                 -1 if event.total is None else int(event.total), dict(event.metrics))
        elif kind is EventKind.LOG:
            self.logged.emit(event.message)
        elif kind is EventKind.FINISHED:
            self._finish()
            self.finished.emit(self.job.result)
            self.done.emit()
        elif kind is EventKind.FAILED:
            self._finish()
            self.failed.emit(event.message or self.job.error or "failed")
            self.done.emit()
        elif kind is EventKind.CANCELLED:
            self._finish()
            self.cancelled.emit()
            self.done.emit()

    def _finish(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


#: the pause between the steps of UI-thread work split across event-loop turns: steps chained by 0 ms timers ran
#: back to back before the window's other timers got a turn (bench/gui.py: the runs browser's five stages were one
#: 170 ms stall)
STEP_PAUSE_MS = 5


class _CallSignals(QtCore.QObject):
    done = QtCore.Signal(object)     # (key, serial, callback, result)
    error = QtCore.Signal(object)    # (key, serial, callback, message)


class AsyncCaller(QtCore.QObject):
    """Short background computations for views (decode an image, an entropy map): ``submit(fn, on_done)``.

    ``fn`` runs in a small thread pool; ``on_done(result)`` / ``on_error(message)`` run in the UI thread.
    A caller that only wants the newest answer passes a ``key``: older pending calls with the same key
    are skipped, and results of calls superseded meanwhile are dropped.
    """

    def __init__(self, workers: int = 2, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="view")
        self._signals = _CallSignals()
        self._signals.done.connect(self._deliver, QtCore.Qt.ConnectionType.QueuedConnection)
        self._signals.error.connect(self._deliver_error, QtCore.Qt.ConnectionType.QueuedConnection)
        self._latest: dict[str, int] = {}
        self._serial = 0
        self.pending = 0

    def submit(self, fn, on_done, on_error=None, key: str | None = None) -> None:
        self._serial += 1
        serial = self._serial
        if key is not None:
            self._latest[key] = serial
        self.pending += 1
        latest = self._latest

        def task() -> None:
            if key is not None and latest.get(key) != serial:   # superseded before it started
                self._signals.done.emit((key, serial, None, None))
                return
            try:
                result = fn()
            except Exception as exc:  # shown to the user by on_error
                msg = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
                self._signals.error.emit((key, serial, on_error, msg))
                return
            self._signals.done.emit((key, serial, on_done, result))

        self._pool.submit(task)

    def _current(self, key, serial) -> bool:
        return key is None or self._latest.get(key) == serial

    @QtCore.Slot(object)
    def _deliver(self, payload) -> None:
        key, serial, callback, result = payload
        self.pending -= 1
        if callback is not None and self._current(key, serial):
            callback(result)

    @QtCore.Slot(object)
    def _deliver_error(self, payload) -> None:
        key, serial, callback, message = payload
        self.pending -= 1
        if callback is not None and self._current(key, serial):
            callback(message)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_IMPORT_LOCK = __import__("threading").Lock()


def import_engine(name: str):
    """Import a torch-backed ``core`` module from a worker thread, one thread at a time.

    Two threads importing torch at once can see a half-initialised module (torch then warns about
    kernels registered twice); serialising the first import avoids that. Cheap once imported.
    """
    import importlib

    with _IMPORT_LOCK:
        return importlib.import_module(name)
