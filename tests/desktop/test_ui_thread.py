"""Qt objects live on the UI thread: what the window hands to a worker comes back there, and its workers
make no Qt call (issue 17: a failing window test once printed "QBasicTimer::start: Timers cannot be started
from another thread" many times; a worker that touches a widget or a timer is that)."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("PySide6")

from PySide6 import QtCore  # noqa: E402


class QtCallsOffTheUIThread:
    """A profile hook in every thread started meanwhile: records each call of a Qt object's C++ method
    (or a Qt class's static one, e.g. ``QTimer.singleShot``) made outside the main thread."""

    def __init__(self):
        self.calls: list[str] = []

    def _hook(self, _frame, event, fn):
        if event != "c_call" or threading.current_thread() is threading.main_thread():
            return
        owner = getattr(fn, "__self__", None)
        if owner is None:                     # a static method: its class is named by its qualified name
            owner = qt_class(getattr(fn, "__qualname__", "").partition(".")[0])
        if isinstance(owner, QtCore.QObject) or (isinstance(owner, type) and issubclass(owner, QtCore.QObject)):
            self.calls.append(f"{getattr(owner, '__name__', type(owner).__name__)}.{fn.__name__} "
                              f"in {threading.current_thread().name}")

    def __enter__(self):
        threading.setprofile(self._hook)
        return self

    def __exit__(self, *_exc):
        threading.setprofile(None)


def qt_class(name: str):
    from PySide6 import QtGui, QtWidgets

    return next((getattr(m, name) for m in (QtCore, QtGui, QtWidgets) if name and hasattr(m, name)), None)


def in_main_thread() -> bool:
    """Asked in a worker without a Qt call (the probe would count ``QThread.currentThread``)."""
    return threading.current_thread() is threading.main_thread()


def on_ui_thread() -> bool:
    return QtCore.QThread.currentThread() is QtCore.QCoreApplication.instance().thread()


def test_the_probe_sees_a_qt_call_from_a_worker(qapp):
    with QtCallsOffTheUIThread() as probe:
        t = threading.Thread(target=lambda: QtCore.QTimer.singleShot(0, lambda: None), name="bad-worker")
        t.start()
        t.join()
    assert probe.calls == ["QTimer.singleShot in bad-worker"]


def test_async_caller_runs_the_work_off_and_the_callbacks_on_the_ui_thread(qtbot):
    from desktop.bridge.jobs_bridge import AsyncCaller

    where = []
    with QtCallsOffTheUIThread() as probe:
        caller = AsyncCaller(workers=1)
        caller.submit(lambda: where.append(("work", in_main_thread())) or 1,
                      lambda _r: where.append(("done", on_ui_thread())))
        caller.submit(lambda: 1 / 0, None, lambda _m: where.append(("error", on_ui_thread())))
        qtbot.waitUntil(lambda: caller.pending == 0, timeout=10000)
        caller.shutdown()
    assert where == [("work", False), ("done", True), ("error", True)]
    assert probe.calls == []


def test_job_runner_signals_arrive_on_the_ui_thread(qtbot):
    from core.jobs import Job
    from desktop.bridge.jobs_bridge import JobRunner

    where = []
    with QtCallsOffTheUIThread() as probe:
        def fn(ctx):
            where.append(("job", in_main_thread()))
            ctx.progress(1, 2, "half", phase="working")
            ctx.epoch_end(1, 1, {"loss": 1.0})
            ctx.log("a line")
            return 7

        runner = JobRunner(Job("toy", fn))
        for name in ("started", "progress", "phaseChanged", "epochEnded", "logged", "finished", "done"):
            getattr(runner, name).connect(lambda *_a, name=name: where.append((name, on_ui_thread())))
        with qtbot.waitSignal(runner.done, timeout=20000):
            runner.start()
    assert ("job", False) in where
    assert {name for name, ui in where if name != "job" and ui} == {
        "started", "progress", "phaseChanged", "epochEnded", "logged", "finished", "done"}
    assert not [name for name, ui in where if name != "job" and not ui]
    assert probe.calls == []
