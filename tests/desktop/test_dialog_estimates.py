"""The training dialogs estimate the run's time from speeds measured on this machine and say how; a pretraining
run chosen as initial weights fixes (locks) the backbone."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


def fake_project(store, n_labelled=100, n_unlabelled=20):
    items = [SimpleNamespace(label="a")] * n_labelled + [SimpleNamespace(label=None)] * n_unlabelled
    return SimpleNamespace(store=store, paths=None, items=items)


@pytest.fixture
def store(tmp_path):
    from core.project.store import ProjectStore

    s = ProjectStore(tmp_path / "project.db")
    yield s
    s.close()


def test_finetune_defaults_get_an_estimate_from_an_earlier_run(qtbot, store, tmp_path):
    from core.train.estimate import BACKBONE_GFLOPS
    from desktop.widgets.job_dialogs import FinetuneDialog

    rid = store.add_run("finetune", "quick", {"backbone": "convnext_atto", "image_size": 112, "device": "cpu"},
                        run_dir=tmp_path / "f", state="finished")
    store.update_run(rid, metrics={"n_train": 50, "epochs_run": 4, "train_time_s": 2.0})      # 100 images/s
    dlg = FinetuneDialog(fake_project(store), None)
    qtbot.addWidget(dlg)
    dlg.set_device("cpu")
    qtbot.waitUntil(lambda: "about" in dlg.estimate.text(), timeout=10000)
    n = round(100 * (1 - dlg.val_fraction.value() - dlg.test_fraction.value()))
    text = dlg.estimate.text()
    assert text.startswith(f"{dlg.epochs.value()} epochs of {n} images: about ")
    assert f"measured by run #{rid} quick: convnext_atto at 112 px, 100 images/s on CPU" in text
    assert "scaled by image size² and backbone compute" in text
    ips = 100 / 4 * BACKBONE_GFLOPS["convnext_atto"] / BACKBONE_GFLOPS[dlg.backbone.currentText()]
    assert f"≈ {ips:.3g} images/s" in text
    dlg.backbone.setCurrentText("convnext_atto")
    dlg.image_size.setValue(112)
    assert "≈ 100 images/s" in dlg.estimate.text() and "scaled" not in dlg.estimate.text()
    dlg.backbone.setCurrentText("mystery_net")
    assert "No earlier run measured a comparable setting on CPU: Measure speed" in dlg.estimate.text()


def test_measure_speed_probes_off_the_ui_thread_and_joins_the_estimate(qtbot, store, monkeypatch):
    import threading

    import core.train.estimate as estimate
    from desktop.widgets.job_dialogs import PretrainDialog

    threads = []

    def probe(backbone, *, tiny, image_size, batch_size, device):
        threads.append(threading.current_thread())
        return estimate.Throughput(40.0, "probe", backbone, tiny, image_size, "cpu", "a probe of 3 steps of 8 images")

    monkeypatch.setattr(estimate, "probe_throughput", probe)
    dlg = PretrainDialog(fake_project(store), None)
    qtbot.addWidget(dlg)
    dlg.set_device("cpu")
    qtbot.waitUntil(lambda: "Measure speed to estimate" in dlg.estimate.text(), timeout=10000)
    dlg.measure.click()
    qtbot.waitUntil(lambda: "about" in dlg.estimate.text(), timeout=10000)
    assert threads and threads[0] is not threading.main_thread()
    assert "of 120 images: about" in dlg.estimate.text() and "measured by a probe of 3 steps" in dlg.estimate.text()
    assert dlg.measure.isEnabled()


def test_a_chosen_pretraining_run_locks_the_backbone_it_was_trained_as(qtbot, store, tmp_path):
    from desktop.widgets.job_dialogs import FinetuneDialog

    (tmp_path / "p").mkdir()
    store.add_run("pretrain", "mae", {"backbone": "convnext_femto", "image_size": 128, "method": "mae"},
                  run_dir=tmp_path / "p", state="finished")
    dlg = FinetuneDialog(fake_project(store), None)
    qtbot.addWidget(dlg)
    dlg.init_pretrained.setChecked(True)
    assert dlg.backbone.currentText() == "convnext_femto" and not dlg.backbone.isEnabled()
    assert dlg.image_size.value() == 128 and "Fixed by the pretraining run" in dlg.backbone.toolTip()
    assert dlg.config()["backbone"] == "convnext_femto"
    dlg.init_random.setChecked(True)
    assert dlg.backbone.isEnabled() and "Fixed" not in dlg.backbone.toolTip()
