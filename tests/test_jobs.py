import json
import threading

import pytest

from core.jobs import EventKind, Job, JobCancelled, JobState, previous_state


def counting_job(n, done_file, gate=None, reached=None):
    """Counts to n, one step per item; remembers progress in ctx.state_dir so a rerun resumes."""
    def fn(ctx):
        state = ctx.state_dir / "done.json"
        start = json.loads(state.read_text())["i"] if state.exists() else 0
        for i in range(start, n):
            ctx.check_cancelled()
            if gate is not None and i == 3:
                reached.set()
                gate.wait(5)
            done_file.append(i)
            state.write_text(json.dumps({"i": i + 1}))
            ctx.progress(i + 1, n, loss=1.0 / (i + 1))
        return sum(done_file)
    return fn


def test_run_reports_events_and_result(tmp_path):
    done = []
    job = Job("count", counting_job(5, done), state_dir=tmp_path)
    events = []
    job.subscribe(events.append)
    assert job.run() == sum(range(5))
    kinds = [e.kind for e in events]
    assert kinds[0] is EventKind.STARTED and kinds[-1] is EventKind.FINISHED
    progress = [e for e in events if e.kind is EventKind.PROGRESS]
    assert [e.step for e in progress] == [1, 2, 3, 4, 5]
    assert progress[-1].total == 5 and progress[-1].metrics["loss"] == pytest.approx(0.2)
    assert previous_state(tmp_path)["state"] == "finished"
    assert (tmp_path / "job.log").read_text().count("\n") == len(events)


def test_cancel_then_resume_continues_where_it_stopped(tmp_path):
    done = []
    gate, reached = threading.Event(), threading.Event()
    job = Job("count", counting_job(10, done, gate, reached), state_dir=tmp_path)
    job.start()
    assert reached.wait(5)
    job.cancel()
    gate.set()
    assert job.wait(5)
    assert job.state is JobState.CANCELLED
    assert previous_state(tmp_path)["state"] == "cancelled"
    stopped_at = len(done)
    assert 0 < stopped_at < 10
    resumed = Job("count", counting_job(10, done), state_dir=tmp_path)
    resumed.run()
    assert done == list(range(10)), "resume must neither repeat nor skip items"


def test_failure_is_reported_not_swallowed(tmp_path):
    def boom(ctx):
        raise ValueError("bad input file x.png")
    job = Job("boom", boom, state_dir=tmp_path)
    events = []
    job.subscribe(events.append)
    job.start()
    job.wait(5)
    assert job.state is JobState.FAILED
    assert "bad input file x.png" in job.error
    assert events[-1].kind is EventKind.FAILED
    assert "Traceback" in (tmp_path / "job.log").read_text()
    with pytest.raises(ValueError):
        Job("boom", boom).run()


def test_broken_listener_does_not_kill_the_job():
    job = Job("ok", lambda ctx: ctx.progress(1, 1) or 42)
    job.subscribe(lambda e: 1 / 0)
    assert job.run() == 42


def test_cancelled_job_raises_in_run():
    def fn(ctx):
        ctx.check_cancelled()
    job = Job("c", fn)
    job.cancel()
    with pytest.raises(JobCancelled):
        job.run()


@pytest.mark.parametrize("fn", [lambda ctx: 1, lambda ctx: 1 / 0])
def test_a_job_that_used_cuda_hands_its_cached_memory_back(monkeypatch, fn):
    """After the job (finished or failed), torch.cuda.empty_cache() runs where CUDA was initialised
    (faked here: the same path up to the CUDA call)."""
    import torch

    released = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append(True))
    job = Job("gpu work", fn).start()
    assert job.wait(60)
    assert released == [True]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert Job("cpu work", lambda ctx: 1).start().wait(60) and released == [True]
