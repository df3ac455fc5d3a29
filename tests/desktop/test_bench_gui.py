"""bench/gui.py measures the app, not itself: its own set-up on the UI thread is charged to no phase."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")

import bench.gui as bench  # noqa: E402


class FakeClock:
    """perf_counter and thread_time of a UI thread that computes all the time it runs (busy = wall)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_probe_charges_no_phase_with_what_runs_while_it_is_paused(qapp, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    monkeypatch.setattr(bench.time, "thread_time", clock)
    probe = bench.Probe()
    probe.start()
    probe.set_phase("viewer")
    clock.now += 0.02
    probe._tick()                        # 10 ms late: counted
    with probe.paused():
        assert not probe.timer.isActive()
        clock.now += 0.5                 # the benchmark writes its prediction run
    assert probe.timer.isActive()
    clock.now += 0.01
    probe._tick()
    probe.timer.stop()
    assert probe.phase_max["viewer"] == pytest.approx(0.01)
    assert probe.phase_busy["viewer"] == pytest.approx(0.02)


def test_measure_pages_writes_its_prediction_run_with_the_probe_paused(qapp, monkeypatch):
    """The 2000-row prediction run the Predictions page needs took ~240 ms of UI-thread CPU inside the
    "viewer" phase (the phase then open): the viewer's figure was mostly the benchmark's own set-up."""
    probe = bench.Probe()
    probe.start()
    probe.set_phase("viewer")
    seen = []

    class SetUpDone(Exception):
        pass

    def add_prediction_run(_store):
        seen.append(probe.timer.isActive())
        raise SetUpDone

    monkeypatch.setattr(bench, "add_prediction_run", add_prediction_run)

    class Win:
        class project:
            store = None

    with pytest.raises(SetUpDone):
        bench.measure_pages(Win(), probe, {})
    probe.timer.stop()
    assert seen == [False]
