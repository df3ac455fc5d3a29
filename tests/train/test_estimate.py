"""Time estimates of training runs: measured speeds of earlier runs, scaled by image size² and backbone compute,
never carried across device kinds or from the tests' tiny model; a short probe when nothing was measured."""

from __future__ import annotations

import json

import pytest

from core.train.estimate import (BACKBONE_GFLOPS, Throughput, estimate_time, format_duration, probe_throughput,
                                 project_throughputs)


def measured(ips=100.0, backbone="convnext_atto", size=112, device="cpu", kind="finetune", tiny=False):
    return Throughput(ips, kind, backbone, tiny, size, device, "run #1 a")


def test_scaled_by_image_size_squared_and_backbone_compute():
    est = estimate_time("finetune", backbone="convnext_tiny", tiny=False, image_size=224, epochs=100, n_images=500,
                        device_type="cpu", measured=[measured()])
    ips = 100.0 / 4 * BACKBONE_GFLOPS["convnext_atto"] / BACKBONE_GFLOPS["convnext_tiny"]
    assert est.images_per_s == pytest.approx(ips) and est.seconds == pytest.approx(100 * 500 / ips)
    assert "run #1 a: convnext_atto at 112 px" in est.text() and "image size² and backbone compute" in est.text()
    same = estimate_time("finetune", backbone="convnext_atto", tiny=False, image_size=112, epochs=2, n_images=100,
                         device_type="cpu", measured=[measured()])
    assert same.seconds == pytest.approx(2.0) and "scaled" not in same.basis


def test_no_estimate_across_devices_tiny_models_or_unknown_backbones():
    kw = dict(backbone="convnext_atto", tiny=False, image_size=112, epochs=1, n_images=10)
    assert estimate_time("finetune", device_type="cuda", measured=[measured()], **kw) is None
    assert estimate_time("finetune", device_type="cpu", measured=[measured(tiny=True)], **kw) is None
    assert estimate_time("finetune", device_type="cpu", measured=[measured(backbone="mystery_net")], **kw) is None


def test_the_same_kind_of_run_is_preferred_then_the_newest():
    runs = [measured(50.0, kind="pretrain"), measured(10.0), measured(20.0)]
    est = estimate_time("finetune", backbone="convnext_atto", tiny=False, image_size=112, epochs=1, n_images=10,
                        device_type="cpu", measured=runs)
    assert est.images_per_s == 10.0


def test_speeds_recorded_by_the_project_runs(tmp_path):
    from core.project.store import ProjectStore

    with ProjectStore(tmp_path / "p.db") as store:
        f = store.add_run("finetune", "clf", {"backbone": "convnext_atto", "image_size": 64, "device": "cpu"},
                          run_dir=tmp_path / "f", state="finished")
        store.update_run(f, metrics={"n_train": 40, "epochs_run": 5, "train_time_s": 10.0})
        (tmp_path / "p").mkdir()
        (tmp_path / "p" / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "images_per_s": v}) + "\n"
                                                          for e, v in ((1, 30.0), (2, 50.0), (3, 40.0))))
        store.add_run("pretrain", "mae", {"backbone": "convnext_atto", "image_size": 128}, run_dir=tmp_path / "p",
                      state="finished")
        store.add_run("finetune", "failed early", {"backbone": "convnext_atto", "image_size": 64}, state="failed")
        got = project_throughputs(store, cuda_available=False)
    assert [(t.kind, t.images_per_s, t.device_type) for t in got] == [("pretrain", 40.0, "cpu"),
                                                                        ("finetune", 20.0, "cpu")]
    assert got[1].source == f"run #{f} clf"


@pytest.mark.usefixtures("one_torch_thread")
def test_probe_measures_a_tiny_model():
    t = probe_throughput("convnext_atto", tiny=True, image_size=32, batch_size=64, device="cpu", steps=1)
    assert t.images_per_s > 0 and t.kind == "probe" and t.device_type == "cpu" and "8 images" in t.source


def test_durations_read_plainly():
    assert [format_duration(s) for s in (42, 600, 3 * 3600 + 5 * 60, 3 * 86400)] == ["42 s", "10 min", "3 h 05 min",
                                                                                     "3.0 days"]
    # the jobs panel's live ETA keeps the seconds under an hour; an unknown one reads as a dash
    assert [format_duration(s, with_seconds=True) for s in (42, 247, 3 * 3600 + 5 * 60)] == ["42 s", "4 min 07 s",
                                                                                          "3 h 05 min"]
    assert format_duration(None) == format_duration(float("nan"), with_seconds=True) == "–"
