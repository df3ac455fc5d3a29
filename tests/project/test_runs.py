"""Run lifecycle without Qt (core.project.runs): a run row per job, state transitions written by the recorder,
checkpoints, metrics and errors, interrupted runs detected on load, the run folder layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.jobs import Job, JobCancelled
from core.project import runs
from core.project.runs import JobKind, Run, RunLock, RunResult
from core.project.store import ProjectStore


@pytest.fixture
def store(tmp_path):
    s = ProjectStore(tmp_path / ".medssl" / "project.db")
    yield s
    s.close()


def toy_job(store, run: Run, resume: bool) -> Job:
    """Two epochs: a history row each, an EPOCH_END event each, a checkpoint file; ``config.fail`` raises."""
    def fn(ctx):
        for epoch in (1, 2):
            ctx.progress(epoch, 2, phase="training", loss=1.0 / epoch)
            with open(run.folder / "history.jsonl", "a") as fh:
                fh.write(json.dumps({"epoch": epoch, "val_accuracy": 0.5 * epoch}) + "\n")
            ctx.epoch_end(epoch, 2, {"val_accuracy": 0.5 * epoch})
        (run.folder / "model.bin").write_bytes(b"weights")
        if run.config.get("fail"):
            raise ValueError("the toy job was told to fail")
        return {"accuracy": 0.75, "val": {"accuracy": 1.0, "note": "x"}, "resumed": resume, "nan": float("nan")}

    return Job("toy", fn, state_dir=run.folder)


@pytest.fixture
def toy_kind(monkeypatch):
    monkeypatch.setitem(runs.JOB_KINDS, "toy", JobKind("Toy", toy_job, "history.jsonl", ("model.bin", "absent")))


def test_start_run_records_the_whole_life(store, toy_kind):
    run, job = runs.start_run(store, "toy", "my run/1", {"lr": 0.1})
    assert run.state == "queued" and run.error == ""
    assert Path(run.run_dir) == store.path.parent / "runs" / f"toy-{run.id}-my-run-1"   # the layout projects have
    states = []
    job.subscribe(lambda ev: states.append(store.get_run(run.id).state))
    job.run()
    done = store.get_run(run.id)
    assert states[0] == "running"                          # the recorder wrote it before later listeners ran
    assert done.state == "finished" and done.finished is not None and done.error == ""
    assert done.metrics == {"accuracy": 0.75, "val_accuracy": 1.0}     # scalars only, nested val flattened
    assert done.config == {"lr": 0.1}
    assert [(Path(c.path).name, c.epoch) for c in store.checkpoints(run.id)] == [("model.bin", None)]
    assert [h["epoch"] for h in runs.read_history("toy", done.run_dir)] == [1, 2]
    assert any("[finished]" in line for line in runs.read_log_tail(done.run_dir))
    assert not runs.run_is_alive(done)                     # the lock went with the job


def test_failed_run_keeps_its_error_and_resumes(store, toy_kind):
    run, job = runs.start_run(store, "toy", "bad", {"fail": True})
    with pytest.raises(ValueError):
        job.run()
    failed = store.get_run(run.id)
    assert failed.state == "failed" and failed.resumable
    assert failed.error == "ValueError: the toy job was told to fail" and "error" not in failed.metrics
    assert [Path(c.path).name for c in store.checkpoints(run.id)] == ["model.bin"]   # recorded on failure too
    again, job = runs.resume_run(store, run.id)
    assert again.state == "queued" and again.error == ""
    with pytest.raises(ValueError):
        job.run()
    assert store.get_run(run.id).state == "failed"        # same config: fails again, truthfully
    assert len(store.checkpoints(run.id)) == 1             # a checkpoint is recorded once


def test_cancelled_run(store, toy_kind):
    run, job = runs.start_run(store, "toy", "c", {})
    job.cancel()
    original = job.fn

    def fn(ctx):
        ctx.check_cancelled()
        return original(ctx)
    job.fn = fn
    with pytest.raises(JobCancelled):
        job.run()
    assert store.get_run(run.id).state == "cancelled" and store.get_run(run.id).resumable


def test_unknown_kind_and_bad_build_are_clear(store):
    with pytest.raises(ValueError, match="unknown job kind 'nope'"):
        runs.create_run(store, "nope", "x", {})
    assert store.list_runs() == []
    run = runs.create_run(store, "ensemble", "e", {})          # no members: the build step says which key
    with pytest.raises(KeyError, match="members"):
        runs.build_job(store, run)


def test_recover_interrupted_tells_dead_from_alive(store, tmp_path, toy_kind):
    dead = runs.create_run(store, "toy", "dead", {})
    store.update_run(dead.id, state="running")
    alive = runs.create_run(store, "toy", "alive", {})
    store.update_run(alive.id, state="running")
    mine = runs.create_run(store, "toy", "mine", {})
    store.update_run(mine.id, state="running")
    done = runs.create_run(store, "toy", "done", {})
    store.update_run(done.id, state="finished", metrics={"accuracy": 1.0})
    other = store.add_run("scan", "not a job kind", state="running")
    lock = RunLock(alive.run_dir)                             # as the process running it holds it
    assert lock.acquire()
    try:
        assert runs.run_is_alive(store.get_run(alive.id))
        after = {r.id: r for r in runs.recover_interrupted(store, ours=[mine.id])}
    finally:
        lock.release()
    assert after[dead.id].state == "interrupted" and after[dead.id].error == runs.INTERRUPTED_NOTE
    assert after[alive.id].state == "running" and after[mine.id].state == "running"
    assert after[done.id].state == "finished" and after[done.id].metrics == {"accuracy": 1.0}
    assert after[other].state == "running"
    lock = RunLock(alive.run_dir)
    assert lock.acquire()
    try:   # resuming a run that another process runs is refused, with the reason
        with pytest.raises(RuntimeError, match=f"run #{alive.id} is running in another process"):
            runs.resume_run(store, alive.id)
        assert store.get_run(alive.id).state == "running"
    finally:
        lock.release()
    again = {r.id: r for r in runs.recover_interrupted(store)}
    assert again[alive.id].state == "interrupted"          # its process is gone now


def test_find_run_by_folder(store, toy_kind, tmp_path):
    a = runs.create_run(store, "toy", "a", {}, run_dir=tmp_path / "out")
    assert runs.find_run(store, "toy", tmp_path / "out").id == a.id
    assert runs.find_run(store, "toy", tmp_path / "other") is None
    assert runs.find_run(store, "finetune", tmp_path / "out") is None


def test_store_keeps_the_error_beside_the_metrics(store):
    rid = store.add_run("finetune", "f", {})
    store.update_run(rid, state="failed", metrics={"val_accuracy": 0.5}, error="boom")
    r = store.get_run(rid)
    assert r.metrics == {"val_accuracy": 0.5} and r.error == "boom"
    store.update_run(rid, metrics={"val_accuracy": 0.6})          # metrics replaced, the error kept
    assert store.get_run(rid).error == "boom" and store.get_run(rid).metrics == {"val_accuracy": 0.6}
    store.update_run(rid, state="queued", error="")
    assert store.get_run(rid).error == "" and store.get_run(rid).metrics == {"val_accuracy": 0.6}
    # projects written before: the error inside the metrics JSON
    old = store.add_run("pretrain", "p", {})
    store.update_run(old, metrics={"error": "interrupted", "final_loss": 0.3})
    r = store.get_run(old)
    assert r.error == "interrupted" and r.metrics == {"final_loss": 0.3}


def test_peek_meta_reads_without_opening(store, tmp_path):
    store.set_meta("root", "/data/images")
    assert ProjectStore.peek_meta(store.path, "root") == "/data/images"
    assert ProjectStore.peek_meta(store.path, "missing", "d") == "d"
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite")
    assert ProjectStore.peek_meta(junk, "root") is None
    assert ProjectStore.peek_meta(tmp_path / "absent.db", "root") is None
    assert not (tmp_path / "absent.db").exists()


def test_run_results_are_typed(tmp_path):
    pre = RunResult.of("pretrain", {"epoch_logs": [{"loss": 0.9}, {"loss": 0.4}], "run_dir": "r", "step_losses": []})
    assert pre.metrics == {"final_loss": 0.4, "run_dir": "r"} and pre.ensemble_file is None
    ens = RunResult.of("ensemble", {"ensemble": {"before": {"accuracy": 0.5}, "after": {"accuracy": 0.7, "ece": 0.1}},
                                    "ensemble_file": "/x/ensemble.json", "n": 10})
    assert ens.ensemble_file == "/x/ensemble.json"
    assert ens.metrics == {"ensemble_accuracy": 0.7, "ensemble_ece": 0.1, "ensemble_file": "/x/ensemble.json",
                           "n": 10}
    assert RunResult.of("predict", None) == RunResult()
    run = Run(1, "ensemble", "e", {}, "finished", 0.0, 1.0, {}, str(tmp_path))
    assert run.ensemble_file == str(tmp_path / "ensemble.json")
    pred = Run(2, "predict", "p", {"ensemble": "/y/e.json"}, "finished", 0.0, 1.0, {}, str(tmp_path))
    assert pred.ensemble_file == "/y/e.json"
    assert Run(3, "finetune", "f", {}, "finished", 0.0, 1.0, {}, None).ensemble_file is None


def test_ensemble_run_records_its_file(store, monkeypatch):
    def build(store_, run, resume):
        return Job("ensemble", lambda ctx: {"ensemble_file": str(run.folder / "ensemble.json"),
                                            "ensemble": {"after": {"accuracy": 0.9}}}, state_dir=run.folder)

    monkeypatch.setitem(runs.JOB_KINDS, "ensemble", JobKind("Ensemble", build, None, ("ensemble.json",)))
    run, job = runs.start_run(store, "ensemble", "ens", {"members": ["a"]})
    job.run()
    done = store.get_run(run.id)
    assert done.config == {"members": ["a"], "ensemble": str(Path(run.run_dir) / "ensemble.json")}
    assert done.ensemble_file == done.config["ensemble"] and done.metrics["ensemble_accuracy"] == 0.9


def test_a_run_started_twice_runs_once(store, toy_kind):
    """Between building a job and running it another process may start the same run: the second job fails at once
    and leaves the run's row to the process that holds the lock."""
    run, job = runs.start_run(store, "toy", "twice", {"lr": 0.1})
    other = RunLock(run.run_dir)
    assert other.acquire()
    try:
        store.update_run(run.id, state="running")
        with pytest.raises(RuntimeError, match=f"run #{run.id} is running in another process"):
            job.run()
        assert store.get_run(run.id).state == "running" and store.get_run(run.id).error == ""
        assert not (Path(run.run_dir) / "model.bin").exists()      # nothing was trained into its folder
    finally:
        other.release()
    run2, job2 = runs.resume_run(store, run.id)
    job2.run()
    assert store.get_run(run.id).state == "finished"


def test_step_losses_of_a_resumed_run_keep_the_first_part_and_replace_the_repeated_steps(tmp_path):
    """What the jobs panel plots after a Resume (issue 17): job.log holds both jobs' progress events; the
    resumed job starts again at its checkpoint's step 3, so its steps 3-4 replace the stopped job's."""
    def job(steps, extra):
        def fn(ctx):
            for s in steps:
                ctx.progress(s, 6, phase="training", loss=10.0 * s + extra)
            ctx.progress(6, 6, phase="validating")          # no loss: not a point
        return Job("toy", fn, state_dir=tmp_path)

    job(range(1, 5), 0.0).run()
    job(range(3, 7), 0.5).run()
    assert runs.read_step_losses(tmp_path) == [(1, 10.0), (2, 20.0), (3, 30.5), (4, 40.5), (5, 50.5), (6, 60.5)]
    assert runs.read_step_losses(tmp_path / "absent") == [] and runs.read_step_losses(None) == []
