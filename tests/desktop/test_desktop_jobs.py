"""Jobs from the window (pytest-qt, offscreen): tiny pretraining and fine-tuning launched from the dialogs
on a small demo project, progress reaching the jobs panel, cancel and resume, runs kept in the store
across closing and reopening the project. Tiny models (core.models.backbones.TINY_CONVNEXT), 64 px, 1-3 epochs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


@pytest.fixture
def window(demo_window):
    return demo_window


def tiny_pretrain(win, epochs=1, batch=4, method_label=None):
    from desktop.widgets.job_dialogs import PretrainDialog

    dlg = PretrainDialog(win.project, win.settings, win)
    if method_label:
        dlg.method.setCurrentIndex(dlg.method.findText(method_label))
    dlg.backbone.setCurrentText("convnext_atto")
    dlg.tiny.setChecked(True)
    dlg.image_size.setValue(64)
    dlg.epochs.setValue(epochs)
    dlg.batch.setValue(batch)
    dlg.set_device("cpu")
    dlg._accept()                      # validates and remembers the values, like pressing Start
    return dlg


def wait_state(qtbot, win, rid, states, timeout=120000):
    qtbot.waitUntil(lambda: win.jobs.entries[rid].state in states, timeout=timeout)
    return win.jobs.entries[rid]


def test_dialog_lists_registry_methods_and_remembers_settings(qtbot, window):
    from core.pretrain import list_methods
    from desktop.widgets.job_dialogs import PretrainDialog

    dlg = PretrainDialog(window.project, window.settings, window)
    qtbot.addWidget(dlg)
    names = {dlg.method.itemData(i)[0] for i in range(dlg.method.count())}
    assert names == set(list_methods())
    labels = [dlg.method.itemText(i) for i in range(dlg.method.count())]
    assert "MAE, random masks" in labels and "MAE, entropy-guided masks" in labels
    dlg.method.setCurrentIndex(labels.index("MAE, random masks"))
    assert dlg.mae_box.isVisibleTo(dlg) and dlg.request()[2]["options"]["entropy_mode"] == "random"
    dlg.method.setCurrentIndex(labels.index("SimCLR"))
    assert not dlg.mae_box.isVisibleTo(dlg)
    assert dlg.device.itemData(0) == "" and dlg.device.findData("cpu") >= 0   # device shown and selectable
    tiny_pretrain(window, epochs=3, batch=2, method_label="MAE, entropy-guided masks")
    again = PretrainDialog(window.project, window.settings, window)
    qtbot.addWidget(again)
    assert again.epochs.value() == 3 and again.image_size.value() == 64 and again.tiny.isChecked()
    assert again.device.currentData() == "cpu"


def test_pretrain_then_finetune_from_the_dialogs(qtbot, window):
    from desktop.widgets.job_dialogs import FinetuneDialog

    dlg = tiny_pretrain(window, epochs=2, batch=4)
    rid = window.launch_job("pretrain", dlg)
    assert window.jobs_dock.isVisible()
    panel = window.jobs_panel
    seen = []
    window.jobs.progressed.connect(lambda r: seen.append(window.jobs.entries[r].step))
    e = wait_state(qtbot, window, rid, ("finished", "failed"))
    assert e.state == "finished", e.error
    assert seen and e.step == e.total == 6                 # 12 images / 4 per step * 2 epochs
    assert e.name == "mae" and e.config["method"] == "mae"
    assert len(e.losses) >= 2 and len(e.history) == 2      # live loss per step, one line per epoch
    qtbot.waitUntil(lambda: panel.curves.loss_curve.xData is not None and len(panel.curves.loss_curve.xData) >= 2,
                    timeout=3000)
    assert panel.bar.value() == panel.bar.maximum()
    store = window.project.store
    run = store.get_run(rid)
    assert run.kind == "pretrain" and run.state == "finished" and run.config["method"] == "mae"
    assert {Path(c.path).name for c in store.checkpoints(rid)} >= {"checkpoint-last", "encoder.safetensors"}
    assert "final_loss" in run.metrics

    fd = FinetuneDialog(window.project, window.settings, window)
    qtbot.addWidget(fd)
    assert fd.pretrain_run.currentData() == run.run_dir      # the finished run is offered
    fd.init_pretrained.setChecked(True)
    assert not fd.backbone.isEnabled() and fd.image_size.value() == 64
    fd.epochs.setValue(2)
    fd.batch.setValue(4)
    fd.set_device("cpu")
    assert fd.validate() is None
    cfg = fd.request()[2]
    assert cfg["init"] == "pretrained" and cfg["init_weights"] == run.run_dir and cfg["timm_kwargs"]
    fid = window.launch_job("finetune", fd)
    f = wait_state(qtbot, window, fid, ("finished", "failed"))
    assert f.state == "finished", f.error
    assert any("val_balanced_accuracy" in h for h in f.history)
    qtbot.waitUntil(lambda: "val_balanced_accuracy" in panel.curves.val_curves, timeout=3000)
    frun = store.get_run(fid)
    assert "test_accuracy" in frun.metrics and (Path(frun.run_dir) / "checkpoint-best").is_dir()

    # ensemble of the fine-tuned run, then prediction of the project folder, both from their dialogs
    from desktop.widgets.job_dialogs import EnsembleDialog, PredictDialog

    ed = EnsembleDialog(window.project, window.settings, window)
    qtbot.addWidget(ed)
    assert ed.members.count() == 1 and ed.validate() is None
    # before building: the verdict from the member's cached logits (one member: a tie, so NOT a win)
    qtbot.waitUntil(lambda: "cached logits" in ed.preview.text(), timeout=60000)
    assert "the ensemble does NOT beat its best member" in ed.preview.text()
    ed.set_device("cpu")
    eid = window.launch_job("ensemble", ed)
    ens = wait_state(qtbot, window, eid, ("finished", "failed"))
    assert ens.state == "finished", ens.error
    ens_file = Path(store.get_run(eid).run_dir) / "ensemble.json"
    assert ens_file.is_file() and (ens_file.parent / "report.json").is_file()
    pd = PredictDialog(window.project, window.settings, window)
    qtbot.addWidget(pd)
    assert pd.ensemble_path() == str(ens_file) and pd.validate() is None
    # one member: the ensemble ties it, and a tie is said to be no win, with the images it was measured on
    assert "the ensemble does NOT beat its best member" in pd.verdict.text() and "split (" in pd.verdict.text()
    pd.set_device("cpu")
    assert pd.request()[2]["store"] is True and pd.request()[2]["batch_size"] is None   # auto batch size
    pid = window.launch_job("predict", pd)
    pr = wait_state(qtbot, window, pid, ("finished", "failed"))
    assert pr.state == "finished", pr.error
    n_images = len(window.project.items)
    preds = store.predictions(pid)
    assert len(preds) == n_images
    assert set(preds[0].probs["members"]) == set(store.get_run(eid).config["names"])   # per-member columns
    window.show_page("predictions")                   # a hidden page reads the new run when it is shown
    qtbot.waitUntil(lambda: window.predictions.model.rowCount() == n_images, timeout=10000)
    assert window.predictions.run_combo.currentData() == pid
    # the library rows carry the new predictions (badges, filters) without a rescan of the folder
    qtbot.waitUntil(lambda: all(it.prediction is not None for it in window.project.items), timeout=10000)
    assert window.project.scan_complete

    # runs browser: the two runs side by side, differing config values flagged
    browser = window.show_runs()
    qtbot.addWidget(browser)
    browser.left.combo.setCurrentIndex(browser.left.combo.findData(fid))
    browser.right.combo.setCurrentIndex(browser.right.combo.findData(rid))
    qtbot.waitUntil(lambda: browser.settled, timeout=10000)         # read in a worker, drawn a plot a turn
    assert browser.left.fields["state"] == "finished" and "metric test_accuracy" in browser.left.fields
    assert "config method" in browser.right.fields
    assert browser.left.curves.val_curves and browser.right.curves.loss_curve.xData is not None
    # one per-epoch metric of both runs overlaid: metrics both runs log come first
    assert browser.compare_metric.currentText() == "val_balanced_accuracy"          # only the fine-tuning run has it
    assert list(browser.overlay_series) == [browser.left.label]
    browser.compare_metric.setCurrentIndex(browser.compare_metric.findText("lr"))
    assert set(browser.overlay_series) == {browser.left.label, browser.right.label}
    assert all(len(xs) == 2 for xs, _ in browser.overlay_series.values())   # two epochs each
    assert browser.compare_metric.findText("lr") < browser.compare_metric.findText("val_balanced_accuracy")
    browser.close()


def test_cancel_and_resume_and_reopen(qtbot, window):
    dlg = tiny_pretrain(window, epochs=3, batch=2)          # 18 steps
    rid = window.launch_job("pretrain", dlg)
    qtbot.waitUntil(lambda: len(window.jobs.entries[rid].losses) >= 1, timeout=60000)   # training, not decoding
    assert window.jobs_panel.cancel_btn.isEnabled()
    window.jobs_panel.cancel_btn.click()
    e = wait_state(qtbot, window, rid, ("cancelled", "finished", "failed"))
    assert e.state == "cancelled"
    assert window.project.store.get_run(rid).state == "cancelled"
    stopped_at = e.step
    assert stopped_at < e.total
    assert window.jobs_panel.resume_btn.isEnabled()
    window.jobs_panel.resume_btn.click()
    resumed_steps = []
    e.runner.progress.connect(lambda step, _t, _m, metrics: "loss" in metrics and resumed_steps.append(step))
    e = wait_state(qtbot, window, rid, ("finished", "failed", "cancelled"))
    assert e.state == "finished", e.error
    assert min(resumed_steps) > stopped_at                  # continued, did not start over
    steps = [s for s, _ in e.losses]
    assert steps[0] <= stopped_at and steps == sorted(set(steps))     # the loss before the resume stays
    cfg = json.loads((Path(e.run_dir) / "checkpoint-last" / "config.json").read_text())
    assert "18" in json.dumps(cfg)                          # all 18 steps done
    assert any("resumed" in line for line in e.log)

    # a job interrupted by closing the project is offered for resume when it is opened again
    folder = window.project.paths.folder
    dlg = tiny_pretrain(window, epochs=3, batch=2)
    rid2 = window.launch_job("pretrain", dlg)
    qtbot.waitUntil(lambda: len(window.jobs.entries[rid2].losses) >= 1, timeout=60000)
    window.close_project()
    window.open_path(folder)
    qtbot.waitUntil(lambda: window.project.ready and rid2 in window.jobs.entries, timeout=30000)
    assert window.jobs.entries[rid2].state == "interrupted"
    assert window.jobs.entries[rid].state == "finished" and window.jobs.entries[rid].history
    assert window.jobs.can_resume(rid2)
    window.jobs.resume(rid2)
    e2 = wait_state(qtbot, window, rid2, ("finished", "failed", "cancelled"))
    assert e2.state == "finished", e2.error


def test_window_stays_responsive_while_a_job_runs(qtbot, window):
    from PySide6 import QtCore

    dlg = tiny_pretrain(window, epochs=2, batch=2)
    rid = window.launch_job("pretrain", dlg)
    ticks_while_running = []

    def tick():
        ticks_while_running.append(window.jobs.entries[rid].state == "running")

    timer = QtCore.QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    wait_state(qtbot, window, rid, ("finished", "failed"))
    timer.stop()
    # the UI thread kept processing its own events while the job ran (no wall-clock bound: the machine is shared)
    assert sum(ticks_while_running) >= 2, ticks_while_running[-5:]


def test_epoch_end_events_and_phase_reach_the_panel(qtbot, window, monkeypatch):
    """The per-epoch history comes from typed EPOCH_END events (no message says "epoch"), the phase is shown
    while the job runs, and the recorder in core writes the result to the store."""
    import threading

    from core.jobs import Job
    from core.project import runs

    gate = threading.Event()

    def build(store, run, resume):
        def fn(ctx):
            ctx.progress(0, 3, "getting ready", phase="warming up")
            if not gate.wait(120):
                raise TimeoutError("the test never opened the gate")
            for epoch in (1, 2, 3):
                ctx.progress(epoch, 3, f"step {epoch}", phase="training", loss=1.0 / epoch)
                ctx.epoch_end(epoch, 3, {"val_accuracy": 0.25 * epoch})
            return {"accuracy": 0.75}
        return Job("toy", fn, state_dir=run.folder)

    monkeypatch.setitem(runs.JOB_KINDS, "toy", runs.JobKind("Toy", build))
    epochs = []
    window.jobs.epochEnded.connect(lambda rid, epoch: epochs.append((rid, epoch)))
    try:
        rid = window.jobs.submit("toy", "toy run", {})
        window.jobs_dock.show()
        window.jobs_panel.select_run(rid)
        qtbot.waitUntil(lambda: "warming up" in window.jobs_panel.state_label.text(), timeout=10000)
        assert "RUNNING" in window.jobs_panel.state_label.text()
        assert window.project.store.get_run(rid).state == "running"
    finally:
        gate.set()
    e = wait_state(qtbot, window, rid, ("finished", "failed"))
    assert e.state == "finished", e.error
    assert epochs == [(rid, 1), (rid, 2), (rid, 3)]
    assert [(h["epoch"], h["val_accuracy"]) for h in e.history] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    run = window.project.store.get_run(rid)
    assert run.state == "finished" and run.metrics == {"accuracy": 0.75} and e.metrics == run.metrics
    assert "warming up" not in window.jobs_panel.state_label.text()     # the phase belongs to a running job


def test_cli_finetune_run_shows_in_runs_browser_and_ensemble_dialog(qtbot, window):
    from core.cli import main
    from desktop.widgets.job_dialogs import EnsembleDialog

    db = window.project.paths.store_path
    assert main(["finetune", "--project", str(db), "--name", "from-cli", "--tiny", "--backbone", "convnext_atto",
                 "--init", "random", "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--workers", "0",
                 "--device", "cpu", "--quiet"]) == 0
    run = next(r for r in window.project.store.list_runs() if r.name == "from-cli")
    assert run.state == "finished", run.error

    browser = window.show_runs()
    qtbot.addWidget(browser)
    index = browser.left.combo.findData(run.id)
    assert index >= 0 and "from-cli (finished)" in browser.left.combo.itemText(index)
    browser.left.combo.setCurrentIndex(index)
    qtbot.waitUntil(lambda: browser.settled, timeout=10000)
    assert browser.left.fields["state"] == "finished" and "metric test_accuracy" in browser.left.fields
    assert any(k.startswith("checkpoint checkpoint-best") for k in browser.left.fields)
    assert "val_balanced_accuracy" in browser.left.curves.val_curves     # per-epoch curves from the run folder
    browser.close()

    dlg = EnsembleDialog(window.project, window.settings, window)
    qtbot.addWidget(dlg)
    members = [dlg.members.item(i).text() for i in range(dlg.members.count())]
    assert any(text.startswith(f"#{run.id} from-cli") for text in members)
    assert dlg.validate() is None

    window.jobs.load()                                   # the jobs panel lists it too, as finished
    assert window.jobs.entries[run.id].state == "finished" and len(window.jobs.entries[run.id].history) == 2


def test_a_run_of_another_process_is_shown_running_and_does_not_hold_the_queue(qtbot, window, monkeypatch):
    from core.jobs import Job
    from core.project import runs

    monkeypatch.setitem(runs.JOB_KINDS, "toy", runs.JobKind("Toy", lambda store, run, resume: Job(
        "toy", lambda ctx: {"accuracy": 1.0}, state_dir=run.folder)))
    store = window.project.store
    elsewhere = runs.create_run(store, "toy", "cli", {})
    store.update_run(elsewhere.id, state="running")
    gone = runs.create_run(store, "toy", "crashed", {})
    store.update_run(gone.id, state="running")
    lock = runs.RunLock(elsewhere.run_dir)                  # held as the CLI process running it holds it
    assert lock.acquire()
    try:
        window.jobs.load()
        e = window.jobs.entries[elsewhere.id]
        assert e.state == "running" and e.other_process and not e.cancellable
        assert window.jobs.entries[gone.id].state == "interrupted" and window.jobs.can_resume(gone.id)
        window.jobs_panel.select_run(elsewhere.id)
        assert not window.jobs_panel.cancel_btn.isEnabled() and runs.run_is_alive(store.get_run(elsewhere.id))
        rid = window.jobs.submit("toy", "mine", {})          # the queue is not held by the other process's run
        assert wait_state(qtbot, window, rid, ("finished", "failed")).state == "finished"
        assert store.get_run(elsewhere.id).state == "running"
    finally:
        lock.release()


def test_opening_another_folder_or_quitting_asks_before_stopping_a_job(qtbot, window, questions, tmp_path):
    from PySide6 import QtWidgets

    folder = window.project.paths.folder
    other = tmp_path / "other" / "benign"
    other.mkdir(parents=True)
    import shutil

    shutil.copy(next((folder / "benign").glob("*_0.png")), other / "a.png")
    dlg = tiny_pretrain(window, epochs=30, batch=2)
    rid = window.launch_job("pretrain", dlg)
    qtbot.waitUntil(lambda: len(window.jobs.entries[rid].losses) >= 1, timeout=60000)
    title = window.jobs.entries[rid].title

    questions.answer = QtWidgets.QMessageBox.StandardButton.Cancel
    assert not window.open_path(other.parent)            # the user said no: nothing changes
    assert title in questions[-1]
    assert window.project.paths.folder == folder and window.jobs.entries[rid].state == "running"
    assert not window.close()                              # quitting asks too
    assert window.isVisible() and window.jobs.entries[rid].runner is not None
    n_asked = len(questions)

    questions.answer = QtWidgets.QMessageBox.StandardButton.Yes
    assert window.open_path(other.parent)
    assert len(questions) == n_asked + 1
    qtbot.waitUntil(lambda: window.project.scan_complete, timeout=20000)
    assert window.open_path(folder)                        # no job runs now: no question
    assert len(questions) == n_asked + 1
    qtbot.waitUntil(lambda: window.project.ready and rid in window.jobs.entries, timeout=30000)
    e = window.jobs.entries[rid]
    assert e.state == "interrupted" and window.jobs.can_resume(rid)
    assert "another folder was opened" in e.error and "crash" not in e.error
    window.jobs_panel.select_run(rid)
    assert "another folder was opened" in window.jobs_panel.stats.text()


# -- issue 17, item 8: what the jobs panel plots and reports ---------------------------------------------
def toy_training_kind(monkeypatch):
    """A "toy" kind that trains: steps 1-4 then it is cancelled; resumed, it starts again at its checkpoint
    (step 3) and runs to step 6. Resumed points carry +0.5, so which job reported a step is visible."""
    from core.jobs import Job, JobCancelled
    from core.project import runs
    from desktop.bridge.jobs_bridge import JobRunner

    def build(store, run, resume):
        def fn(ctx):
            for step in (range(3, 7) if resume else range(1, 5)):
                ctx.progress(step, 6, phase="training", loss=10.0 * step + (0.5 if resume else 0.0))
            if not resume:
                raise JobCancelled()
            return {}
        return Job("toy", fn, state_dir=run.folder)

    monkeypatch.setitem(runs.JOB_KINDS, "toy", runs.JobKind("Toy", build, "history.jsonl"))
    monkeypatch.setattr(JobRunner, "PROGRESS_INTERVAL_S", 0.0)     # every point reaches the panel


def test_resume_keeps_the_loss_before_the_resume_and_a_reopened_run_reads_it(qtbot, window, monkeypatch):
    toy_training_kind(monkeypatch)
    rid = window.jobs.submit("toy", "toy", {})
    e = wait_state(qtbot, window, rid, ("cancelled",), timeout=20000)
    assert [s for s, _ in e.losses] == [1, 2, 3, 4]
    assert window.jobs_panel.items[rid].text(2) == "66 %"        # 4 of 6 steps: never rounded up
    window.jobs_panel.select_run(rid)
    window.jobs_panel.resume_btn.click()
    e = wait_state(qtbot, window, rid, ("finished",), timeout=20000)
    expected = [(1, 10.0), (2, 20.0), (3, 30.5), (4, 40.5), (5, 50.5), (6, 60.5)]   # steps 3, 4 redone
    assert e.losses == expected
    window.jobs_panel._flush()
    assert list(window.jobs_panel.curves.loss_curve.xData) == [1, 2, 3, 4, 5, 6]

    window.jobs.load()                       # as after reopening the project: the run folder's job.log
    assert window.jobs.entries[rid].losses == []
    window.jobs_panel.select_run(rid)
    qtbot.waitUntil(lambda: window.jobs.entries[rid].losses == expected, timeout=10000)


def fake_ensemble_run(store, temperatures=(1.3, 20.0)):
    """A finished ensemble run whose report.json says what evaluate_ensemble writes (the second member's
    temperature reached the fit's limit)."""
    from core.project import runs
    from core.atomic import write_json_atomic

    run = runs.create_run(store, "ensemble", "two members", {"members": ["a", "b"]})
    metrics = lambda acc, ece: {"accuracy": acc, "ece": ece, "nll": 0.9}      # noqa: E731
    members = [{"name": n, "checkpoint": n, "weight": 1.0, "temperature": t, "before": metrics(0.7, 0.2),
                "after": metrics(0.7, 0.05), "temperature_at_limit": t == 20.0}
               for n, t in zip(("A-imagenet", "B-mae"), temperatures)]
    write_json_atomic(Path(run.run_dir) / "report.json",
                      {"split": "test", "n": 40, "classes": ["a", "b"], "members": members,
                       "ensemble": {"before": metrics(0.75, 0.15), "after": metrics(0.775, 0.04)}})
    store.update_run(run.id, state="finished", metrics={"ensemble_accuracy": 0.775})
    return run


def test_ensemble_and_prediction_runs_show_their_report_not_empty_training_plots(qtbot, window, monkeypatch):
    toy_training_kind(monkeypatch)
    store = window.project.store
    trained = window.jobs.submit("toy", "toy", {})
    wait_state(qtbot, window, trained, ("cancelled",), timeout=20000)
    ens = fake_ensemble_run(store)
    pred = store.add_run("predict", "predict folder", {"ensemble": ""}, state="finished")
    store.update_run(pred, metrics={"images": 12, "stored": 12})
    window.jobs.load()
    panel = window.jobs_panel
    panel.select_run(trained)
    e = window.jobs.entries[trained]                                   # a training kind: curves, never a report
    assert panel.view.currentWidget() is (panel.curves if e.losses or e.history else panel.view.empty)
    panel.select_run(ens.id)
    assert panel.view.currentWidget() is panel.view.report            # no plots left from the toy run
    rows = panel.view.report.rows
    assert [r[0] for r in rows] == ["A-imagenet", "B-mae", "Ensemble"]
    assert rows[0][2] == "1.30" and rows[1][2] == "20.00 (limit)"
    assert rows[2][3] == "77.5%" and rows[2][4] == "0.150 → 0.040"    # accuracy, ECE before -> after
    caption = panel.view.report.caption.text()
    assert "test split, 40 images" in caption and "(limit)" in caption and "no better than a constant" in caption
    panel.select_run(pred)
    assert panel.view.currentWidget() is panel.view.report
    assert ["images", "12"] in panel.view.report.rows and ["stored", "12"] in panel.view.report.rows
