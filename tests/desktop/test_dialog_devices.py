"""The device list of the job dialogs: GPU names are looked up in a worker (torch.cuda.get_device_name
initialises CUDA, seconds with some drivers), never on the UI thread. CUDA is faked."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


def test_device_entries_name_the_gpus_once_known():
    from desktop.widgets.job_dialogs import device_entries

    assert device_entries(0) == [("Automatic (CPU)", ""), ("CPU", "cpu")]
    assert device_entries(2) == [("Automatic (CUDA)", ""), ("CPU", "cpu"), ("CUDA:0", "cuda:0"), ("CUDA:1", "cuda:1")]
    assert device_entries(1, ["H200"])[2] == ("CUDA:0 H200", "cuda:0")


def test_gpu_names_are_looked_up_off_the_ui_thread(qtbot, monkeypatch):
    import torch

    from desktop.widgets.job_dialogs import FinetuneDialog

    asked_on = []

    def get_device_name(i):
        asked_on.append(threading.current_thread() is threading.main_thread())
        return f"Fake GPU {i}"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", get_device_name)
    dlg = FinetuneDialog(None, None)
    qtbot.addWidget(dlg)
    assert dlg.device.findData("cuda:1") == 3                 # the entries are there at once
    qtbot.waitUntil(lambda: dlg.device.itemText(3) == "CUDA:1 Fake GPU 1", timeout=10000)
    assert dlg.device.itemText(2) == "CUDA:0 Fake GPU 0"
    assert asked_on == [False, False]
